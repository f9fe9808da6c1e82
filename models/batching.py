"""How many requests go into one ``generate`` call, and what to do when memory runs out."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from transformers import StoppingCriteria

T = TypeVar("T")
R = TypeVar("R")

# Fraction of the free GPU memory a batch may plan to use; the rest absorbs
# allocator fragmentation and the vision tower's transient activations.
_MEMORY_SHARE = 0.8


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/accelerator out-of-memory errors (any torch spelling of them)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """KV cache plus prefill activations per sequence token, from the text config."""
    text = getattr(config, "text_config", config)
    element = torch.tensor([], dtype=dtype).element_size()
    kv = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * element
    activations = (3 * text.intermediate_size + 4 * text.hidden_size) * element
    return kv + activations


def fitting_batch_size(
    config: Any,
    dtype: torch.dtype,
    device: torch.device,
    tokens_per_request: int,
    max_batch_size: int,
) -> int:
    """The largest batch (1..max) whose cache fits in free GPU memory; ``max`` off the GPU."""
    if device.type != "cuda":
        return max_batch_size
    free, _total = torch.cuda.mem_get_info(device)
    per_request = max(1, tokens_per_request * bytes_per_token(config, dtype))
    return max(1, min(max_batch_size, int(free * _MEMORY_SHARE) // per_request))


def run_halving(
    items: Sequence[T],
    batch_size: int,
    run: Callable[[Sequence[T]], list[R]],
    on_shrink: Callable[[int], None] | None = None,
) -> list[R]:
    """``run`` over ``items`` in batches; an out-of-memory error halves the batch and retries.

    Results keep the order of ``items``. A single item that still runs out of
    memory re-raises: no request is dropped silently.
    """
    results: list[R] = []
    start = 0
    size = max(1, batch_size)
    while start < len(items):
        chunk = items[start : start + size]
        try:
            out = run(chunk)
        except Exception as exc:
            if not is_out_of_memory(exc) or len(chunk) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            size = max(1, len(chunk) // 2)
            if on_shrink is not None:
                on_shrink(size)
            continue
        results.extend(out)
        start += len(chunk)
    return results


class StepClock(StoppingCriteria):
    """A stopping criterion that never stops: it timestamps every decoding step.

    ``generate`` calls it once per new token, so the first call marks the time to
    first token (prefill included) and the rest give the per-token decode time.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.steps: list[float] = []

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        if input_ids.is_cuda:  # generate syncs every step anyway; this makes the stamp exact
            torch.cuda.synchronize(input_ids.device)
        self.steps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    @property
    def first_token_s(self) -> float | None:
        return self.steps[0] - self.started if self.steps else None

    @property
    def decode_ms_per_step(self) -> float | None:
        if len(self.steps) < 2:
            return None
        return 1000.0 * (self.steps[-1] - self.steps[0]) / (len(self.steps) - 1)
