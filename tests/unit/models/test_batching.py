from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from models.batching import StepClock, bytes_per_token, is_out_of_memory, run_halving


def test_out_of_memory_halves_the_batch_and_loses_nothing() -> None:
    calls: list[int] = []
    shrinks: list[int] = []

    def run(chunk: Sequence[int]) -> list[int]:
        calls.append(len(chunk))
        if len(chunk) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 10 for x in chunk]

    out = run_halving(list(range(7)), 8, run, on_shrink=shrinks.append)
    assert out == [x * 10 for x in range(7)]
    assert calls == [7, 3] + [1] * 7
    assert shrinks == [3, 1]


def test_cuda_spelling_of_the_error_is_recognised() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_a_single_request_that_does_not_fit_is_reported() -> None:
    def run(chunk: Sequence[int]) -> list[int]:
        raise torch.OutOfMemoryError("still too big")

    with pytest.raises(torch.OutOfMemoryError):
        run_halving([1, 2, 3, 4], 4, run)


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def run(chunk: Sequence[int]) -> list[int]:
        calls.append(len(chunk))
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        run_halving([1, 2, 3, 4], 4, run)
    assert calls == [4]


def test_memory_estimate_matches_the_4b_shape() -> None:
    class Text:
        num_hidden_layers = 34
        num_key_value_heads = 4
        head_dim = 256
        intermediate_size = 10240
        hidden_size = 2560

    per_token = bytes_per_token(Text(), torch.bfloat16)
    kv = 2 * 34 * 4 * 256 * 2
    assert per_token > kv
    assert per_token < kv * 2


def test_step_clock_stamps_each_step() -> None:
    clock = StepClock()
    ids = torch.zeros((2, 3), dtype=torch.long)
    for _ in range(3):
        assert not clock(ids, torch.zeros(2, 5)).any()
    assert clock.first_token_s is not None and clock.first_token_s >= 0
    assert clock.decode_ms_per_step is not None
