"""What the disk charges for durability: a direct write of N KB, then a flush, alone.

Each row writes N KB with direct I/O into blocks already on disk (as a record
file is written, ``dicom_listener/record.py``), then one 4 KB ``RWF_DSYNC``
write, which is that write and a flush of the disk's cache. On a virtual
disk whose host caches writes, the flush is where the host writes the bytes
out, so its cost grows with the bytes written since the last flush: that is
the floor under every instance a receiver makes durable before answering,
and DCMTK's ``storescp`` (no fsync) never pays it.

    python -m bench.disk            # in bench/out/work, on the spool's file system
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.listener import OUT

SIZES_KB = (0, 64, 128, 256, 512, 1024, 2048, 4096)


def measure(
    folder: Path, sizes_kb: tuple[int, ...], repeats: int
) -> list[tuple[int, float, float]]:
    """(KB, median ms of the write, median ms of the 4 KB write and flush after it) per size."""
    largest = max(sizes_kb) << 10
    region = 2 * largest + 4096
    buffer = mmap.mmap(-1, max(largest, 4096))
    buffer.write(os.urandom(len(buffer)))
    path = Path(tempfile.mkdtemp(dir=folder)) / "disk.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    rows = []
    try:
        with mmap.mmap(-1, region) as zeros:  # page-aligned, as direct I/O needs
            os.pwrite(fd, zeros, 0)  # the blocks exist before they are timed
        os.fsync(fd)
        page = memoryview(buffer)[:4096]
        for kb in sizes_kb:
            writes, flushes = [], []
            for index in range(repeats):
                if kb:
                    start = time.perf_counter()
                    os.pwrite(fd, memoryview(buffer)[: kb << 10], (index % 2) * largest)
                    writes.append(time.perf_counter() - start)
                start = time.perf_counter()
                os.pwritev(fd, [page], region - 4096, os.RWF_DSYNC)
                flushes.append(time.perf_counter() - start)
            write_ms = 1000 * statistics.median(writes) if writes else 0.0
            rows.append((kb, write_ms, 1000 * statistics.median(flushes)))
    finally:
        os.close(fd)
        path.unlink()
        path.parent.rmdir()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=OUT / "work")
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"folder: {args.work}, {args.repeats} repeats, medians")
    print()
    print("| written, KB | direct write, ms | then 4 KB and a flush, ms | write + flush, ms/MB |")
    print("| --- | --- | --- | --- |")
    for kb, write_ms, flush_ms in measure(args.work, SIZES_KB, args.repeats):
        per_mb = f"{(write_ms + flush_ms) / (kb / 1024):.2f}" if kb else "-"
        print(f"| {kb} | {write_ms:.3f} | {flush_ms:.3f} | {per_mb} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
