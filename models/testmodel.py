"""The tiny test model: a randomly initialised Gemma 3 with a real processor.

Built offline and deterministically (same bytes on every run), it loads through
the same ``from_pretrained`` path as MedGemma 4B. Its text is meaningless;
everything around it (chat template, image tokens, batching) is real.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    SiglipVisionConfig,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from models.tinytokenizer import CHAT_TEMPLATE, build_tokenizer

IMAGE_SIZE = 896
TOKENS_PER_IMAGE = 256
SEED = 20250301


def build_processor(image_size: int = IMAGE_SIZE, tokens_per_image: int = TOKENS_PER_IMAGE):
    """A real ``Gemma3Processor``: the tiny tokenizer plus Gemma 3's image processor settings."""
    # The PIL image processor: there is no torchvision here, and it is what
    # AutoProcessor picks without it.
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=2,  # bilinear, as in Gemma 3's preprocessor_config.json
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        chat_template=CHAT_TEMPLATE,
        image_seq_length=tokens_per_image,
    )
    return processor


def special_token_ids(processor) -> dict[str, int]:
    """The ids the model config must agree on with the processor's tokenizer."""
    tok = processor.tokenizer
    return {
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        "boi_token_index": tok.convert_tokens_to_ids(tok.boi_token),
        "eoi_token_index": tok.convert_tokens_to_ids(tok.eoi_token),
        "image_token_index": tok.image_token_id,
        "end_of_turn_id": tok.convert_tokens_to_ids("<end_of_turn>"),
    }


def tiny_config(processor) -> Gemma3Config:
    """2 text layers (hidden 64) and 2 SigLIP layers (hidden 32) at the real 896 px input."""
    ids = special_token_ids(processor)
    vocab_size = -(-len(processor.tokenizer) // 64) * 64
    text = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=32768,
        # Untied, wide random weights: tied random embeddings make greedy decoding
        # repeat one token forever, which would hide batching bugs in tests.
        tie_word_embeddings=False,
        initializer_range=0.4,
        pad_token_id=ids["pad_token_id"],
        eos_token_id=[ids["eos_token_id"], ids["end_of_turn_id"]],
        bos_token_id=ids["bos_token_id"],
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=14,
        vision_use_head=False,
    )
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=ids["boi_token_index"],
        eoi_token_index=ids["eoi_token_index"],
        image_token_index=ids["image_token_index"],
        tie_word_embeddings=False,
        initializer_range=0.4,
    )


def randomize_projector(model: Gemma3ForConditionalGeneration, generator: torch.Generator) -> None:
    """Random init leaves the image projection at zero, which makes every image look alike."""
    weight = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)


def build_test_model(directory: Path) -> Path:
    """Write the tiny model and its processor to ``directory``; returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    config = tiny_config(processor)
    torch.manual_seed(SEED)
    model = Gemma3ForConditionalGeneration(config).float().eval()
    generator = torch.Generator().manual_seed(SEED)
    randomize_projector(model, generator)
    model.generation_config.do_sample = False
    ids = special_token_ids(processor)
    model.generation_config.eos_token_id = [ids["eos_token_id"], ids["end_of_turn_id"]]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    # save_pretrained writes the weights owner-only; other users (a service account,
    # a container) must be able to read the folder.
    for path in directory.iterdir():
        if path.is_file():
            os.chmod(path, 0o644)
    return directory
