"""Where an instance's time goes in ``prelim listen``: each step, timed inside the listener.

A listener runs in this process with a timer around each step of a C-STORE
(the command, the header check, the index statements, each write of the
writer thread, the fsyncs, the link, the commit, the answer); DCMTK's
``storescu`` sends a set to it, as in ``bench.listener``. Printed: slices per
second, each step's median duration, and its median start and end relative
to the data set's last fragment, so the chain of waits after the last byte
can be read off.

    python -m bench.steps --set ct        # or --set cxr --count 60
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.listener import PDU, add_set_arguments, chosen_set, send

Event = tuple[str, int, int]  # (step, start ns, end ns)
# Steps not placed after the last fragment: the bounds themselves, and the
# temp file (opened with the command; or, with none made ahead, created after
# the answer for the next data set).
_NOT_PLACED = {"finish", "command", "temp file opened or created"}
# A data set's writes, by the writer thread or submitted with AIO: the first and
# the last are placed apart.
_WRITES = {"w: write", "w: AIO write submitted"}

# (module, attribute path, step name). Steps on the writer thread start with "w:".
STEPS = [
    ("dicom_listener.dimse", "DataPath._on_command", "command"),
    ("dicom_listener.dimse", "DataPath._finish", "finish"),
    ("dicom_listener.receiver", "read_header", "header check"),
    ("db.engine", "DirectTransaction.__init__", "index: connection"),
    ("dicom_listener.receiver", "insert_instance", "index: statements"),
    ("db.engine", "DirectTransaction.commit", "index: commit"),
    ("dicom_listener.incoming", "IncomingFile.flushed", "the file's fsync (waited for, or done)"),
    ("dicom_listener.incoming", "IncomingFile._write_chunks", "w: write"),
    # A record written with native AIO from the receiving thread: the
    # submissions (the disk's time is then in the wait, ``flushed``).
    ("dicom_listener.aio", "Ring.submit", "w: AIO write submitted"),
    ("dicom_listener.incoming", "IncomingFile._start_final", "w: AIO last write submitted"),
    ("dicom_listener.incoming", "IncomingFile._complete", "w: fsync, or the fingerprint"),
    ("dicom_listener.spool", "Spool.place", "link (after the fsync wait)"),
    ("dicom_listener.spool", "Spool.link", "link into the spool"),
    ("dicom_listener.spool", "Spool.sync_folder", "folder fsync"),
    ("dicom_listener.spool", "Spool.settle_folder", "folder fsynced if it grew"),
    ("dicom_listener.dimse", "DataPath._send", "answer sent"),
    ("dicom_listener.incoming", "IncomingFile.__init__", "temp file opened or created"),
]


@contextmanager
def timed(events: list[Event]) -> Iterator[None]:
    """Wrap each step in STEPS with a timer (list.append is atomic under the GIL)."""
    import importlib

    clock = time.perf_counter_ns
    undo: list[tuple[Any, str, Any]] = []

    def wrapper(function: Callable[..., Any], step: str) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                events.append((step, start, clock()))

        return timed_call

    for module_name, path, step in STEPS:
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        original = getattr(owner, name)
        setattr(owner, name, wrapper(original, step))
        undo.append((owner, name, original))
    try:
        yield
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def report(events: list[Event], instances: int, seconds: float) -> list[str]:
    lines = [f"{instances / seconds:.0f} instances/s ({seconds / instances * 1e3:.2f} ms each)"]
    durations: dict[str, list[float]] = collections.defaultdict(list)
    for step, start, end in events:
        durations[step].append((end - start) / 1e3)
    lines.append("")
    lines.append("| step | calls | median µs |")
    lines.append("| --- | ---: | ---: |")
    for step, values in sorted(durations.items()):
        lines.append(f"| {step} | {len(values)} | {statistics.median(values):.0f} |")
    # Each step's place after the last fragment (the start of DataPath._finish):
    # the answering thread's steps inside _finish; the writer's from the data
    # set's command on, the first and the last write apart.
    finishes = sorted((start, end) for step, start, end in events if step == "finish")
    command_starts = sorted(start for step, start, _ in events if step == "command")
    ordered = sorted(events, key=lambda event: event[1])
    placed: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for finish_start, finish_end in finishes:
        writes = []
        before = [start for start in command_starts if start < finish_start]
        its_command = before[-1] if before else finish_start - 1_000_000
        for step, start, end in ordered:
            earliest = its_command if step.startswith("w:") else finish_start
            if step in _NOT_PLACED or start < earliest or start > finish_end:
                continue
            span = ((start - finish_start) / 1e3, (end - finish_start) / 1e3)
            if step in _WRITES:
                writes.append(span)
            else:
                placed[step].append(span)
        if writes:
            placed["w: first write"].append(writes[0])
            placed["w: last write"].append(writes[-1])
    lines.append("")
    lines.append("| from the last fragment | median start µs | median end µs |")
    lines.append("| --- | ---: | ---: |")
    for step, spans in sorted(
        placed.items(), key=lambda kv: statistics.median(s for s, _ in kv[1])
    ):
        starts = statistics.median(s for s, _ in spans)
        ends = statistics.median(e for _, e in spans)
        lines.append(f"| {step} | {starts:.0f} | {ends:.0f} |")
    commands = sorted((start, end) for step, start, end in events if step == "command")
    arriving = [
        (f_start - c_end) / 1e3
        for (f_start, _), (_, c_end) in zip(finishes, commands, strict=False)
        if c_end <= f_start
    ]
    if arriving:
        lines.insert(
            lines.index("| from the last fragment | median start µs | median end µs |") + 2,
            f"| the data set arriving, from its command | {-statistics.median(arriving):.0f} | 0 |",
        )
    gaps = [(c - f_end) / 1e3 for (_, f_end), (c, _) in zip(finishes, commands[1:], strict=False)]
    if gaps:
        lines.append(f"| the next command, after the answer | | {statistics.median(gaps):.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from dicom_listener.service import start_listener
    from prelim.database import open_database
    from prelim.settings import load_settings

    files = chosen_set(args)
    args.work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=args.work))
    os.environ["PRELIM_CONFIG"] = str(folder / "absent.toml")  # no local prelim.toml
    settings = load_settings(
        data_dir=folder,
        listener_host="127.0.0.1",
        listener_port=0,
        max_pdu=PDU,
        min_free_disk_mb=0,
        stable_age_s=3600,
    )
    events: list[Event] = []
    database = open_database(settings)
    try:
        with timed(events):
            handle = start_listener(settings, database)
            try:
                os.sync()
                events.clear()
                seconds = send(handle.port, files)
                time.sleep(0.2)  # the last answer's own steps end just after it is sent
            finally:
                handle.stop()
    finally:
        database.dispose()
        shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(report(list(events), len(files), seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
