"""Draft generation: the model card's way against our engine, side by side in one run.

The model card's way is one ``pipeline("image-text-to-text")`` call per image.
Ours is ``models.ReportDrafter``: batched, greedy, left-padded. Both run the
same random-weight model with a fixed number of new tokens (EOS suppressed),
so random weights cost what real ones do.

    python bench/generate.py --requests 64 --out /tmp/bench-out   # full size, CUDA
    python -m bench.generate --tiny --requests 4 --new-tokens 8    # CI smoke, CPU

Full size is a MedGemma-4B-shaped Gemma 3 (4.3 B parameters) built with random
weights directly on the GPU; the processor is the tiny test model's (a small
tokenizer, the real 896 px image processor and 256 tokens per image).
Needs only torch and transformers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    SiglipVisionConfig,
    StoppingCriteriaList,
    pipeline,
)

from models import DraftRequest, ReportDrafter, StudyContext
from models.batching import StepClock
from models.loading import LoadedModel
from models.testmodel import build_processor, randomize_projector, special_token_ids, tiny_config

# HBM bandwidth in bytes/s by GPU name; H100 SXM unless the name says otherwise.
_BANDWIDTH = [
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("L4", 0.3e12),
]
_DEFAULT_BANDWIDTH = ("H100 SXM (assumed)", 3.35e12)
SYSTEM = "You are an expert radiologist."
ASK = "Describe this X-ray"


def medgemma_4b_config(processor: Any) -> Gemma3Config:
    """Gemma 3 4B's shape (MedGemma 4B's), with the processor's special-token ids."""
    ids = special_token_ids(processor)
    text = Gemma3TextConfig(
        vocab_size=262_208,
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=1024,
        # Every 6th layer attends globally, with linearly scaled RoPE.
        layer_types=[
            "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(34)
        ],
        max_position_embeddings=131_072,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        },
        pad_token_id=ids["pad_token_id"],
        eos_token_id=[ids["eos_token_id"], ids["end_of_turn_id"]],
        bos_token_id=ids["bos_token_id"],
    )
    vision = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=896,
        patch_size=14,
        vision_use_head=False,
    )
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=256,
        boi_token_index=ids["boi_token_index"],
        eoi_token_index=ids["eoi_token_index"],
        image_token_index=ids["image_token_index"],
    )


def build_random_model(config: Gemma3Config, device: torch.device, dtype: torch.dtype) -> Any:
    """Random weights created on ``device`` in ``dtype``: no slow CPU init, no copy."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = Gemma3ForConditionalGeneration(config)
            randomize_projector(model, torch.Generator(device=device).manual_seed(0))
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype).eval()  # type: ignore[call-arg]


def decoder_bytes(model: Any) -> int:
    """Bytes read per decode step: every language-model weight (the vision tower idles)."""
    language = model.model.language_model
    total = sum(p.numel() * p.element_size() for p in language.parameters())
    head = model.lm_head.weight
    if head.data_ptr() != language.embed_tokens.weight.data_ptr():
        total += head.numel() * head.element_size()
    return total


def bandwidth(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, value in _BANDWIDTH:
        if key.lower() in name.lower():
            return name, value
    return f"{name}; {_DEFAULT_BANDWIDTH[0]}", _DEFAULT_BANDWIDTH[1]


def xray_images(count: int, size: int) -> list[Image.Image]:
    """Chest-X-ray-sized noise images (a few distinct ones, reused)."""
    rng = np.random.default_rng(0)
    distinct = [
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).convert("RGB")
        for _ in range(min(count, 4))
    ]
    return [distinct[i % len(distinct)] for i in range(count)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run_card_way(
    model: Any,
    processor: Any,
    images: list[Image.Image],
    new_tokens: int,
    device: torch.device,
    budget_s: float,
) -> dict[str, Any]:
    """One pipeline call per image, as on the model card."""
    pipe = pipeline("image-text-to-text", model=model, processor=processor)

    def call(image: Image.Image, tokens: int, clock: StepClock | None = None) -> Any:
        messages = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": ASK}, {"type": "image", "image": image}],
            },
        ]
        kwargs: dict[str, Any] = {
            "do_sample": False,
            "max_new_tokens": tokens,
            "min_new_tokens": tokens,  # EOS ignored: every call pays for the same length
        }
        if clock is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([clock])
        return pipe(text=messages, generate_kwargs=kwargs)  # type: ignore[arg-type]

    call(images[0], 2)  # warm-up: kernels, allocator
    _reset_peak(device)
    ttfts: list[float] = []
    steps: list[float] = []
    _sync(device)
    started = time.perf_counter()
    for image in images:
        clock = StepClock()
        call(image, new_tokens, clock)
        ttfts.append(clock.first_token_s or 0.0)
        steps.append(clock.decode_ms_per_step or 0.0)
        # Calls run one by one at a steady rate: a few suffice when time is short.
        if len(ttfts) >= 2 and time.perf_counter() - started > budget_s:
            break
    _sync(device)
    wall = time.perf_counter() - started
    mean_step = float(np.mean(steps))
    return _summary(len(ttfts), new_tokens, wall, ttfts, mean_step, _peak_gib(device))


def run_engine(
    drafter: ReportDrafter, images: list[Image.Image], new_tokens: int, device: torch.device
) -> dict[str, Any]:
    """All requests in one ``draft`` call: the engine batches them."""
    requests = [
        DraftRequest(f"bench-{i}", "cxr", [image], StudyContext("CR", "PA", "CHEST"))
        for i, image in enumerate(images)
    ]
    drafter.draft(requests[:1])  # warm-up
    _reset_peak(device)
    _sync(device)
    started = time.perf_counter()
    reports = drafter.draft(requests)
    _sync(device)
    wall = time.perf_counter() - started
    tokens = [r.provenance["output_tokens"] for r in reports]
    assert all(t == new_tokens for t in tokens), f"expected {new_tokens} tokens each: {tokens}"
    t = [r.provenance["timings"] for r in reports]
    ttfts = [x["queue_s"] + x["preprocess_s"] + (x["first_token_s"] or 0.0) for x in t]
    steps = [x["decode_ms_per_step"] or 0.0 for x in t]
    mean_step = float(np.mean(steps))
    summary = _summary(len(images), new_tokens, wall, ttfts, mean_step, _peak_gib(device))
    summary["batch_sizes"] = sorted({r.provenance["batch_size"] for r in reports})
    return summary


def batch1_decode_ms(drafter: ReportDrafter, image: Image.Image) -> float | None:
    (report,) = drafter.draft([DraftRequest("bench-b1", "cxr", [image], StudyContext("CR"))])
    return report.provenance["timings"]["decode_ms_per_step"]


def _summary(
    n: int, new_tokens: int, wall: float, ttfts: list[float], step_ms: float, peak: float | None
) -> dict[str, Any]:
    return {
        "requests": n,
        "wall_s": round(wall, 3),
        "reports_per_hour": round(n / wall * 3600, 1),
        "ms_per_output_token": round(1000 * wall / (n * new_tokens), 3),
        "decode_ms_per_step": round(step_ms, 3),
        "time_to_first_token_s": round(float(np.mean(ttfts)), 4),
        "peak_gpu_memory_gib": None if peak is None else round(peak, 2),
    }


def _markdown(result: dict[str, Any]) -> str:
    card, ours = result["model_card_way"], result["engine"]
    rows = [
        ("reports per hour", "reports_per_hour"),
        ("ms per output token (wall / tokens)", "ms_per_output_token"),
        ("decode step, ms", "decode_ms_per_step"),
        ("time to first token, s (mean)", "time_to_first_token_s"),
        ("peak GPU memory, GiB", "peak_gpu_memory_gib"),
    ]
    lines = [
        f"model: {result['model']} ({result['parameters_m']} M parameters, {result['dtype']}), "
        f"device: {result['device']}",
        f"requests: {ours['requests']} (model card way timed on {card['requests']}), "
        f"new tokens each: {result['new_tokens']}, image {result['image_size']} px",
        "",
        "| | model card way (pipeline per image) | our engine | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for label, key in rows:
        a, b = card.get(key), ours.get(key)
        numbers = isinstance(a, float | int) and isinstance(b, float | int) and a
        ratio = f"{b / a:.2f}x" if numbers else "n/a"
        lines.append(f"| {label} | {_show(a)} | {_show(b)} | {ratio} |")
    floor = result["bandwidth_floor"]
    lines += [
        "",
        f"engine speed-up in reports per hour: {result['speedup_reports_per_hour']}x",
        f"batch sizes used: {ours.get('batch_sizes')}",
        f"our batch-1 decode step: {_show(floor['engine_batch1_ms'])} ms",
    ]
    if floor["floor_ms"] is None:
        lines.append("memory-bandwidth floor: n/a on CPU")
    else:
        lines.append(
            f"memory-bandwidth floor per decode step: {floor['floor_ms']} ms "
            f"({floor['decoder_gb']} GB of decoder weights / {floor['bandwidth_tb_s']} TB/s, "
            f"{floor['gpu']}); batch-1 step = {floor['ratio_to_floor']}x the floor"
        )
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny test model (CPU smoke run)")
    parser.add_argument("--requests", type=int, default=64, help="requests for our engine")
    parser.add_argument(
        "--card-requests",
        type=int,
        default=8,
        help="pipeline calls to time at most (they run one by one; the rate is per call)",
    )
    parser.add_argument(
        "--card-budget-s", type=float, default=120.0, help="stop timing pipeline calls after this"
    )
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=2048, help="input image side, px")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="folder for results.json and results.md")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    device = _resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    processor = build_processor()
    config = tiny_config(processor) if args.tiny else medgemma_4b_config(processor)
    name = "tiny Gemma 3 (random)" if args.tiny else "MedGemma-4B-shaped Gemma 3 (random)"
    model = build_random_model(config, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    built = time.perf_counter() - started
    print(
        f"{name}: {params / 1e6:.1f} M parameters on {device}, built in {built:.1f} s", flush=True
    )

    images = xray_images(args.requests, args.image_size)
    card_images = images[: min(args.card_requests, args.requests)]
    card = run_card_way(
        model, processor, card_images, args.new_tokens, device, budget_s=args.card_budget_s
    )
    print(f"model card way: {card}", flush=True)

    loaded = LoadedModel(model, processor, name, None, None, device, dtype)
    drafter = ReportDrafter(loaded, max_new_tokens=args.new_tokens, max_batch_size=args.max_batch)
    drafter.generation_config.min_new_tokens = args.new_tokens  # EOS ignored: fixed length
    ours = run_engine(drafter, images, args.new_tokens, device)
    print(f"our engine: {ours}", flush=True)

    gpu, bw = bandwidth(device)
    weights = decoder_bytes(model)
    b1 = batch1_decode_ms(drafter, images[0])
    floor_ms = None if bw is None else 1000 * weights / bw
    result = {
        "model": name,
        "parameters_m": round(params / 1e6, 1),
        "dtype": str(dtype).removeprefix("torch."),
        "device": gpu if device.type == "cuda" else f"cpu ({platform.machine()})",
        "new_tokens": args.new_tokens,
        "image_size": args.image_size,
        "model_card_way": card,
        "engine": ours,
        "speedup_reports_per_hour": round(ours["reports_per_hour"] / card["reports_per_hour"], 2),
        "bandwidth_floor": {
            "gpu": gpu,
            "decoder_gb": round(weights / 1e9, 3),
            "bandwidth_tb_s": None if bw is None else bw / 1e12,
            "floor_ms": None if floor_ms is None else round(floor_ms, 3),
            "engine_batch1_ms": None if b1 is None else round(b1, 3),
            "ratio_to_floor": None if floor_ms is None or b1 is None else round(b1 / floor_ms, 2),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "total_s": round(time.perf_counter() - started, 1),
    }
    table = _markdown(result)
    print(table, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "results.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
