"""Interleaved A/B of ``prelim listen`` from two checkouts: is a change faster?

This machine's speed drifts by 2x within minutes, so two benchmark runs minutes
apart say little about a change worth 5-10 %. Here the listener of checkout A
and that of checkout B receive the same set, one after the other, round after
round (taking turns at going first), each from a clean page cache as in
``bench.listener``; the figure is the median of the per-round ratios B/A.

    git worktree add /tmp/before HEAD~1
    python -m bench.compare /tmp/before . --set ct --rounds 8

An ``ENV=VALUE`` list after a checkout's path (``.:PRELIM_MAX_PDU=65536``) is
set for that listener only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.listener import OUT, ct_set, cxr_set, measure, start_prelim


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def starter(spec: str) -> Callable[[Path], Any]:
    """A receiver start function for ``PATH[:ENV=VALUE,...]``: that checkout's listener."""
    path, _, assignments = spec.partition(":")
    tree = Path(path).resolve()
    if not (tree / "dicom_listener").is_dir():
        raise SystemExit(f"{tree} is not a prelim checkout")
    values = dict(item.split("=", 1) for item in assignments.split(",") if item)
    values["PYTHONPATH"] = str(tree)

    def start(folder: Path) -> Any:
        # The child imports prelim from its working folder and PYTHONPATH first.
        with _environment(values), contextlib.chdir(tree):
            return start_prelim(folder)

    return start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="checkout A (the reference)")
    parser.add_argument("b", help="checkout B")
    parser.add_argument("--set", choices=["ct", "cxr"], default="ct")
    parser.add_argument("--count", type=int, help="instances (default: 300 CT, 100 CXR)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--work", type=Path, default=OUT / "work")
    args = parser.parse_args(argv)
    files = ct_set(args.count or 300) if args.set == "ct" else cxr_set(args.count or 100)
    args.work.mkdir(parents=True, exist_ok=True)
    receivers = {"A": starter(args.a), "B": starter(args.b)}
    rates: dict[str, list[float]] = {"A": [], "B": []}
    for round_ in range(args.rounds):
        for name in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
            rates[name].append(measure(name, files, receivers[name], args.work)["per_s"])
        print(
            f"round {round_ + 1}: A {rates['A'][-1]:.1f}  B {rates['B'][-1]:.1f} inst/s  "
            f"B/A {rates['B'][-1] / rates['A'][-1]:.2f}",
            flush=True,
        )
    ratios = [b / a for a, b in zip(rates["A"], rates["B"], strict=True)]
    print(
        f"{args.set.upper()} x{len(files)}, {args.rounds} rounds: median A "
        f"{statistics.median(rates['A']):.1f}, B {statistics.median(rates['B']):.1f} inst/s; "
        f"B/A per round: median {statistics.median(ratios):.3f}, "
        f"{sum(r > 1 for r in ratios)} of {len(ratios)} rounds above 1"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
