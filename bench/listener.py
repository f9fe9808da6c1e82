"""Receive speed and memory: DCMTK ``storescp +B`` against ``prelim listen``, in one run.

Both receivers get the same files from the same sender, DCMTK ``storescu`` with
TCP_NODELAY=1 over one association, at the same maximum PDU. Ours runs with its
durability on (fsync of file and folder, then the index commit) and DCMTK's
does not fsync. Before each run the page cache is written back (``sync``), so
no receiver pays for the previous one's writeback, and the two take turns at
going first. Run: ``python -m bench.listener`` (data cached in bench/out/).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.uid import UID, CTImageStorage

from prelim.synthetic import make_ct_series, make_cxr_study, make_uid, write_study

OUT = Path(__file__).with_name("out")
PDU = 131072
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"


def cxr_set(count: int) -> list[Path]:
    folder = OUT / f"cxr-{count}"
    if not folder.is_dir() or len(list(folder.glob("*.dcm"))) < count:
        for seed in range(count // 2):
            write_study(make_cxr_study(1000 + seed, rows=2500, columns=2048), folder)
    return sorted(folder.glob("*.dcm"))[:count]


def ct_set(count: int) -> list[Path]:
    folder = OUT / f"ct-{count}"
    if not folder.is_dir() or len(list(folder.glob("*.dcm"))) < count:
        write_study(make_ct_series(2000, slices=count), folder)
    return sorted(folder.glob("*.dcm"))[:count]


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    """``--set``, ``--count`` and ``--work``, for the benches that send one set to one listener."""
    parser.add_argument("--set", choices=["ct", "cxr"], default="ct")
    parser.add_argument("--count", type=int, help="instances (default: 300 CT, 60 CXR)")
    parser.add_argument("--work", type=Path, default=OUT / "work")


def chosen_set(args: argparse.Namespace) -> list[Path]:
    """The files ``add_set_arguments``'s options name."""
    return ct_set(args.count or 300) if args.set == "ct" else cxr_set(args.count or 60)


def huge_instance(megabytes: int = 1024) -> Path:
    """One multi-frame CT instance of about ``megabytes`` MB of pixel data."""
    path = OUT / f"huge-{megabytes}.dcm"
    if path.exists():
        return path
    ds = make_ct_series(3000, slices=1, rows=512, columns=512)[0]
    frames = megabytes * 1_048_576 // (512 * 512 * 2)
    ds.NumberOfFrames = frames
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(make_uid("huge", megabytes))
    ds.PixelData = np.tile(np.frombuffer(ds.PixelData, dtype=np.uint8), frames).tobytes()
    OUT.mkdir(exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the receiver exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            threading.Event().wait(0.05)
    raise RuntimeError("the receiver did not open its port")


def warm(files: list[Path]) -> None:
    """Read ``files`` into the page cache (this machine drops it now and then).

    Otherwise ``storescu`` may read the set from the disk while it is timed,
    and on a disk that serves one request at a time those reads queue with
    the writes of a receiver that writes before it answers (ours), not with
    those of one that leaves its writes in the page cache (DCMTK's).
    """
    buffer = bytearray(1 << 20)
    for path in files:
        with path.open("rb", buffering=0) as file:
            while file.readinto(buffer):
                pass


def send(port: int, files: list[Path]) -> float:
    """Seconds storescu takes to send ``files`` on one association; fails on any failure."""
    warm(files)
    start = time.perf_counter()
    done = subprocess.run(
        [STORESCU, "-v", "--max-pdu", str(PDU), "127.0.0.1", str(port), *map(str, files)],
        env=dict(os.environ, TCP_NODELAY="1"),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    ok = (done.stdout + done.stderr).count("Received Store Response (Success)")
    if ok != len(files):
        raise RuntimeError(f"only {ok} of {len(files)} stored:\n{done.stderr[-2000:]}")
    return seconds


def start_dcmtk(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [STORESCP, "+B", "--max-pdu", str(PDU), "-od", str(folder), str(port)],
        # DCMTK turns Nagle off only when told; without it, 40 ms stalls per small instance.
        env=dict(os.environ, TCP_NODELAY="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, process)
    return process, port


def start_prelim(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(
        os.environ,
        PRELIM_MAX_PDU=str(PDU),
        PRELIM_MIN_FREE_DISK_MB="0",
        PRELIM_STABLE_AGE_S="3600",
        PRELIM_LOG_LEVEL="WARNING",
        PRELIM_CONFIG=str(folder / "absent.toml"),
    )
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prelim.cli",
            "listen",
            "--data-dir",
            str(folder),
            "--listener-host",
            "127.0.0.1",
            "--listener-port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, process)
    return process, port


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def running(start: object, root: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A receiver started by ``start`` in a new folder of ``root``: its process and port.

    Stopped, and its folder removed, at the end.
    """
    folder = Path(tempfile.mkdtemp(dir=root))
    # What an earlier run left in the page cache (DCMTK's 2 GB of CXR, not yet
    # on disk when it answers) is written back now, not during this run.
    os.sync()
    process, port = start(folder)  # type: ignore[operator]
    try:
        yield process, port
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


def measure(name: str, files: list[Path], start: object, root: Path) -> dict[str, float]:
    with running(start, root) as (process, port):
        seconds = send(port, files)
        rss = peak_rss_mb(process.pid)
    size = sum(p.stat().st_size for p in files) / 1e6
    return {"per_s": len(files) / seconds, "mb_s": size / seconds, "rss": rss}


def durable_write_ms(files: list[Path], root: Path, direct: bool) -> float:
    """Median ms to make one instance durable, with nothing else going on.

    The same bytes made durable: the disk's share of each answer, which
    DCMTK's ``storescp`` (no fsync) does not pay. ``direct``: as the
    listener does (``IncomingFile``: direct I/O in aligned chunks, into a
    file made ahead; on ext4 an instance that fits a record file is durable
    after the record's one write, and named later by the settler, not timed
    here; a larger one is sealed, linked, then fsynced once); else created
    and written through the page cache, fsynced, linked, and the folder
    fsynced, as a plain receiver would.
    """
    from dicom_listener.incoming import DiskWriter, IncomingFile, TempFiles, records_possible
    from dicom_listener.settle import Waiting, settle
    from dicom_listener.spool import Spool

    spool = Spool(Path(tempfile.mkdtemp(dir=root)))
    writer = DiskWriter()
    sample = files[:100]
    made = TempFiles(
        spool.incoming,
        ahead=len(sample) if direct else 0,
        prepared=direct and records_possible(spool),
    )
    made.fill()
    times = []
    for index, path in enumerate(sample):
        data = path.read_bytes()
        relative = f"out/{index}.dcm"
        start = time.perf_counter()
        if direct:
            incoming = IncomingFile(
                spool.incoming, writer, made=made.take(), seal=spool.names_durable_with_file
            )
            incoming.write(data)
            incoming.finish()
            if incoming.record:
                incoming.flushed()  # durable; its spool name comes later
                times.append(time.perf_counter() - start)
                waiting = Waiting(incoming.path, relative, incoming.size, incoming.digest())
                settle(spool, [waiting])
                continue
            temp, flushed, sealed = incoming.path, incoming.flushed, incoming.sealed
        else:
            # Fsynced, linked, folder fsynced by place_durably.
            temp, flushed, sealed = spool.incoming / f"{index}.part", None, False
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        spool.place_durably(temp, relative, flushed, sealed)
        times.append(time.perf_counter() - start)
    writer.close()
    made.close()
    shutil.rmtree(spool.root, ignore_errors=True)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cxr", type=int, default=200, help="CXR instances (0: skip the set)")
    parser.add_argument("--ct", type=int, default=300, help="CT slices (0: skip the set)")
    parser.add_argument("--huge-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1, help="measure each set this many times")
    parser.add_argument("--work", type=Path, default=OUT / "work")
    parser.add_argument(
        "--memory-work",
        type=Path,
        default=Path("/dev/shm/prelim-bench"),
        help="a tmpfs folder: prelim is measured there too, where fsync costs nothing ('' to skip)",
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    memory = args.memory_work if str(args.memory_work) not in ("", ".") else None
    if memory is not None:
        memory.mkdir(parents=True, exist_ok=True)
    sets = {}
    if args.cxr:
        sets["CXR 2500x2048"] = cxr_set(args.cxr)
    if args.ct:
        sets["CT 512x512"] = ct_set(args.ct)
    rows = []
    floors = {
        label: (durable_write_ms(files, args.work, True), durable_write_ms(files, args.work, False))
        for label, files in sets.items()
    }
    for round_ in range(args.rounds):
        for label, files in sets.items():
            # Each goes first every other round, so neither gains from the order.
            if round_ % 2:
                ours = measure("prelim", files, start_prelim, args.work)
                dcmtk = measure("dcmtk", files, start_dcmtk, args.work)
            else:
                dcmtk = measure("dcmtk", files, start_dcmtk, args.work)
                ours = measure("prelim", files, start_prelim, args.work)
            in_memory = measure("prelim", files, start_prelim, memory) if memory else None
            rows.append((label, len(files), dcmtk, ours, in_memory))
    huge = huge_instance(args.huge_mb) if args.huge_mb else None
    ours_huge = measure("prelim", [huge], start_prelim, args.work) if huge else None
    subprocess.run(["rm", "-rf", str(args.work)], check=False)
    if memory is not None:
        subprocess.run(["rm", "-rf", str(memory)], check=False)

    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"sender: TCP_NODELAY=1 storescu, one association, max PDU {PDU} both sides",
        "",
        "| set | n | DCMTK storescp +B inst/s | MB/s | prelim listen inst/s | MB/s | ratio "
        "| prelim, spool on tmpfs inst/s | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, n, dcmtk, ours, in_memory in rows:
        tmpfs = (
            f"{in_memory['per_s']:.1f} | {in_memory['per_s'] / dcmtk['per_s']:.2f}"
            if in_memory
            else "- | -"
        )
        lines.append(
            f"| {label} | {n} | {dcmtk['per_s']:.1f} | {dcmtk['mb_s']:.0f} | "
            f"{ours['per_s']:.1f} | {ours['mb_s']:.0f} | {ours['per_s'] / dcmtk['per_s']:.2f} "
            f"| {tmpfs} |"
        )
    if args.rounds > 1:
        lines.append("")
        for label in sets:
            ratios = [o["per_s"] / d["per_s"] for lab, _n, d, o, _m in rows if lab == label]
            lines.append(
                f"{label}: median ratio {statistics.median(ratios):.2f} over {len(ratios)} rounds"
            )
    lines.append("")
    for label in sets:
        dcmtk_rate = statistics.median([d["per_s"] for lab, _n, d, _o, _m in rows if lab == label])
        dcmtk_ms = 1000 / dcmtk_rate
        direct, buffered = floors[label]
        lines.append(
            f"{label}: making one instance durable alone (its bytes and its spool name) "
            f"takes {direct:.2f} ms as prelim does it ({buffered:.2f} ms created, written "
            f"through the page cache, fsynced, linked, folder fsynced); DCMTK takes "
            f"{dcmtk_ms:.2f} ms per instance, so a receiver that adds only that to DCMTK's "
            f"time reaches {dcmtk_ms / (dcmtk_ms + direct):.2f}x"
        )
    if huge and ours_huge:
        lines.append("")
        lines.append(
            f"one {huge.stat().st_size / 1e6:.0f} MB instance: prelim listen peak RSS "
            f"{ours_huge['rss']:.0f} MB, {ours_huge['mb_s']:.0f} MB/s"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
