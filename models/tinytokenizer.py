"""A small Gemma-style tokenizer and Gemma 3's chat template, built offline.

The real Gemma 3 tokenizer (262k pieces) cannot be downloaded here, so the
tiny test model and the benchmark use one trained locally on a fixed corpus:
the same BPE-with-byte-fallback pipeline as ``GemmaTokenizer``, the same
special tokens, registered the same way (boi/eoi/image tokens).
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import AddedToken, Tokenizer, models, normalizers, trainers
from transformers import GemmaTokenizer

# Gemma's fixed ids for pad/eos/bos are 0/1/2; the rest follow.
SPECIAL_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
_BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))

# Equivalent to Gemma 3's template: a system message is prepended to the first
# user turn, "assistant" is called "model", each image item is <start_of_image>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}{{ raise_exception('Invalid content type') }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

_CORPUS = """\
You are an expert radiologist. Write a draft radiology report with two sections,
FINDINGS and IMPRESSION. Describe only what is visible in the images.
Study context: Modality: CR. View: PA. Body part: CHEST. Patient age: 64 years.
Patient sex: female. Modality: CT. Modality: DX. Modality: MR. View: AP. View: LATERAL.
This is a chest X-ray. You are reviewing 85 CT slices of one series, in order.
Please review the slices provided below carefully. SLICE 1 SLICE 2 SLICE 10 SLICE 85
Based on the visual evidence in the slices provided above.
FINDINGS: The lungs are clear. There is no focal consolidation, pleural effusion or
pneumothorax. The cardiomediastinal silhouette is within normal limits. The osseous
structures are intact. Support devices: none. Low lung volumes with bibasilar atelectasis.
IMPRESSION: No acute cardiopulmonary process. Mild cardiomegaly. Small left pleural effusion.
The liver, spleen, pancreas, kidneys and adrenal glands are unremarkable. No free fluid.
Hypodense lesion in the right hepatic lobe. No lymphadenopathy. Axial images of the abdomen
and pelvis with intravenous contrast. Recommend clinical correlation and follow-up imaging.
0 1 2 3 4 5 6 7 8 9 mm cm . , : ; ( ) - / % +
"""


def _train_pieces(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS + _BYTE_TOKENS),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line]
    trainer_tok.train_from_iterator(lines * 4, trainer=trainer)
    state = json.loads(trainer_tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    return dict(state["vocab"]), [(a, b) for a, b in merges]


def build_tokenizer(vocab_size: int = 768) -> GemmaTokenizer:
    """A deterministic Gemma-style tokenizer with Gemma 3's special tokens and chat template."""
    vocab, merges = _train_pieces(vocab_size)
    pairs: list[Any] = list(merges)  # the backend takes (left, right) pairs as well as strings
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=pairs,
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    # Turn markers must be single tokens (and skipped when decoding), as in Gemma 3.
    turn_markers = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[5:]]
    tokenizer.add_tokens(turn_markers, special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer
