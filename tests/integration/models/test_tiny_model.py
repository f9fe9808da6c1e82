from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from models.testmodel import build_test_model


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_build_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_test_model(tmp_path / "again")
    assert _digests(again) == _digests(tiny_model_dir)
    assert "model.safetensors" in _digests(again)


def test_files_are_readable_by_others(tiny_model_dir: Path) -> None:
    mode = (tiny_model_dir / "model.safetensors").stat().st_mode
    assert mode & stat.S_IROTH


def test_loads_through_the_same_path_as_medgemma(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert type(processor).__name__ == "Gemma3Processor"
    config = model.config
    assert config.text_config.num_hidden_layers == 2 and config.text_config.hidden_size == 64
    assert config.vision_config.num_hidden_layers == 2 and config.vision_config.hidden_size == 32
    assert config.vision_config.image_size == 896
    assert processor.image_seq_length == config.mm_tokens_per_image == 256
    tok = processor.tokenizer
    assert tok.image_token_id == config.image_token_index
    assert tok.convert_tokens_to_ids(tok.boi_token) == config.boi_token_index
    assert tok.convert_tokens_to_ids(tok.eoi_token) == config.eoi_token_index
    for token in ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>"):
        assert len(tok(token, add_special_tokens=False).input_ids) == 1, token
    # The image projection is not the all-zero random init.
    assert model.model.multi_modal_projector.mm_input_projection_weight.abs().sum() > 0
    saved = json.loads((tiny_model_dir / "config.json").read_text())
    assert saved["architectures"] == ["Gemma3ForConditionalGeneration"]


def test_chat_template_prepends_the_system_text(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are an expert radiologist."}]},
        {"role": "user", "content": [{"type": "text", "text": "Describe."}, {"type": "image"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<bos><start_of_turn>user\nYou are an expert radiologist.\n\n"
        "Describe.<start_of_image><end_of_turn>\n<start_of_turn>model\n"
    )
