"""What the disk does for each instance ``prelim listen`` stores: a block-layer trace.

A listener (``bench.listener``'s, same settings) receives a set from
``storescu`` while the kernel's ``block_rq_issue`` and ``block_rq_complete``
tracepoints record every request sent to the disk. Printed: the requests per
instance by kind (data, the last bytes through the page cache, metadata,
flush) with their median time on the device, the gaps between consecutive
requests, and each instance's cycle cut in two: from the last data write's
issue to the flush's completion (the durable chain after the bytes), and from
that completion to the next instance's first data write (our answer, then the
sender's turn).

Needs root and tracefs (``/sys/kernel/tracing``; mounted here if it is not).

    python -m bench.disktrace --set ct
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.listener import add_set_arguments, chosen_set, send, start_prelim

TRACING = Path("/sys/kernel/tracing")
EVENTS = ("block/block_rq_issue", "block/block_rq_complete")
# "... 123.456789: block_rq_issue: 254,0 WS 262144 () 67953664 + 512 ..."
_LINE = re.compile(
    r"\s(\d+\.\d+): block_rq_(issue|complete): \S+ (\S+) (?:\d+ )?\(\S*\) (\d+) \+ (\d+)"
    r"(?:.*\[(.*)\])?"
)

# (seconds, issue|complete, rwbs, sector, sectors, the task that issued it)
Request = tuple[float, str, str, int, int, str]


def _write(name: str, value: str) -> None:
    (TRACING / name).write_text(value)


def _mount_tracefs() -> None:
    if not (TRACING / "trace").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACING)], check=True)


def parse(text: str) -> list[Request]:
    found = []
    for line in text.splitlines():
        match = _LINE.search(line)
        if match:
            seconds, kind, rwbs, sector, sectors, task = match.groups()
            found.append((float(seconds), kind, rwbs, int(sector), int(sectors), task or ""))
    return found


def label(rwbs: str, sectors: int) -> str:
    """``flush``, or the request's flags and size, e.g. ``WS 256K``."""
    if rwbs.startswith("F") and sectors == 0:
        return "flush"
    return f"{rwbs} {sectors * 512 // 1024}K"


def summary(requests: list[Request], instances: int, data_kb: int = 128) -> list[str]:
    """The report's lines; data writes are writes of at least ``data_kb`` KB."""
    pending: dict[tuple[int, int] | str, tuple[float, str]] = {}
    device: dict[str, list[float]] = collections.defaultdict(list)
    issues = []
    tasks: collections.Counter[str] = collections.Counter()
    for seconds, kind, rwbs, sector, sectors, task in requests:
        name = label(rwbs, sectors)
        key: tuple[int, int] | str = "flush" if name == "flush" else (sector, sectors)
        if kind == "issue":
            pending[key] = (seconds, name)
            issues.append((seconds, name))
            tasks[f"{'read' if rwbs.startswith('R') else 'other'} by {task}"] += 1
        elif key in pending:
            start, issued = pending.pop(key)
            device[issued].append((seconds - start) * 1e6)
    lines = [
        f"{len(issues)} requests for {instances} instances",
        "",
        "| request | per instance | median µs on the device |",
        "| --- | ---: | ---: |",
    ]
    for name, values in sorted(device.items(), key=lambda kv: -len(kv[1])):
        if len(values) >= instances // 10:
            lines.append(
                f"| {name} | {len(values) / instances:.2f} | {statistics.median(values):.0f} |"
            )
    lines.append("")
    lines.append(
        "issued by: "
        + ", ".join(f"{name} {count}" for name, count in sorted(tasks.items()) if count)
    )
    gaps: dict[str, list[float]] = collections.defaultdict(list)
    for (before, first), (after, second) in zip(issues, issues[1:], strict=False):
        gaps[f"{first} -> {second}"].append((after - before) * 1e6)
    lines += ["", "| one issue to the next | count | median µs |", "| --- | ---: | ---: |"]
    for name, values in sorted(gaps.items(), key=lambda kv: -len(kv[1]))[:8]:
        lines.append(f"| {name} | {len(values)} | {statistics.median(values):.0f} |")

    def is_data(rwbs: str, sectors: int) -> bool:
        return "W" in rwbs and sectors * 512 >= data_kb * 1024

    chain, turn = [], []
    last_data: float | None = None
    flushed: float | None = None
    for seconds, kind, rwbs, _, sectors, _task in requests:
        if kind == "issue" and is_data(rwbs, sectors):
            if flushed is not None:
                turn.append((seconds - flushed) * 1e6)
                flushed = None
            last_data = seconds
        elif kind == "complete" and label(rwbs, sectors) == "flush":
            if last_data is not None:
                chain.append((seconds - last_data) * 1e6)
                last_data = None
            flushed = seconds
    if chain and turn:
        lines += [
            "",
            f"last data write issued -> flush completed: median {statistics.median(chain):.0f} µs",
            f"flush completed -> next instance's first data write: median "
            f"{statistics.median(turn):.0f} µs",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_arguments(parser)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the block tracepoints need root")
    _mount_tracefs()
    files = chosen_set(args)
    args.work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=args.work))
    os.sync()
    process, port = start_prelim(folder)
    try:
        time.sleep(1)  # the files made ahead are made before the port opens; settle
        _write("buffer_size_kb", "32768")
        _write("trace", "")
        for event in EVENTS:
            _write(f"events/{event}/enable", "1")
        _write("tracing_on", "1")
        try:
            seconds = send(port, files)
        finally:
            _write("tracing_on", "0")
            for event in EVENTS:
                _write(f"events/{event}/enable", "0")
        text = (TRACING / "trace").read_text()
        _write("trace", "")
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{len(files) / seconds:.0f} instances/s ({seconds / len(files) * 1e3:.2f} ms each)")
    print("\n".join(summary(parse(text), len(files))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
