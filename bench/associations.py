"""One association per instance: DCMTK ``storescp +B`` against ``prelim listen``, in one run.

Many PACS open an association per study, per series, or even per instance.
Here each of the CT set's first ``--count`` slices goes on an association of
its own (one ``storescu`` run each, TCP_NODELAY=1, same maximum PDU as in
``bench.listener``), one after the other, to each receiver in turn; printed:
instances/s for both and the ratio, and the slowest instance's time (a stall
shows there).

    python -m bench.associations --count 180 --rounds 3
    python -m bench.associations --prelim /tmp/before --prelim .   # two checkouts, interleaved
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.listener import OUT, PDU, ct_set, running, send, start_dcmtk, start_prelim


def measure(files: list[Path], start: Callable[[Path], Any], root: Path) -> dict[str, float]:
    with running(start, root) as (_, port):
        times = [send(port, [path]) for path in files]
    return {"per_s": len(files) / sum(times), "slowest_ms": 1000 * max(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=180, help="CT slices, one association each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=OUT / "work")
    parser.add_argument(
        "--prelim",
        action="append",
        default=[],
        metavar="CHECKOUT",
        help="measure the listener of this checkout (repeatable; default: this one)",
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    files = ct_set(300)[: args.count]
    receivers: list[tuple[str, Callable[[Path], Any]]] = [("DCMTK storescp +B", start_dcmtk)]
    if args.prelim:
        from bench.compare import starter

        receivers += [(f"prelim listen ({spec})", starter(spec)) for spec in args.prelim]
    else:
        receivers.append(("prelim listen", start_prelim))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in receivers}
    for round_ in range(args.rounds):
        # Each receiver goes first in turn, so none gains from the order.
        turn = round_ % len(receivers)
        for name, start in receivers[turn:] + receivers[:turn]:
            results[name].append(measure(files, start, args.work))
            time.sleep(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(
        f"sender: TCP_NODELAY=1 storescu, one association per CT slice, "
        f"{len(files)} slices, max PDU {PDU}"
    )
    print()
    print("| receiver | round | inst/s | slowest instance ms | ratio to DCMTK |")
    print("| --- | --- | --- | --- | --- |")
    peer = results[receivers[0][0]]
    for name, _ in receivers:
        for index, result in enumerate(results[name]):
            ratio = result["per_s"] / peer[index]["per_s"]
            print(
                f"| {name} | {index + 1} | {result['per_s']:.1f} | "
                f"{result['slowest_ms']:.0f} | {ratio:.2f} |"
            )
    print()
    for name, _ in receivers[1:]:
        ratios = [r["per_s"] / p["per_s"] for r, p in zip(results[name], peer, strict=True)]
        print(f"{name}: median ratio to DCMTK {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
