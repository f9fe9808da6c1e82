"""The listener benches' tools: bench.compare (two checkouts, interleaved) and bench.steps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import bench.listener
from bench import compare
from dicom_listener.spool import Spool

ROOT = Path(__file__).resolve().parents[3]


def test_a_checkout_is_required(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a prelim checkout"):
        compare.starter(str(tmp_path))


def test_two_listeners_are_compared_round_by_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench.listener, "OUT", tmp_path)  # the generated set goes here
    code = compare.main(
        [
            str(ROOT),
            f"{ROOT}:PRELIM_MAX_PDU=65536",
            "--count",
            "4",
            "--rounds",
            "2",
            "--work",
            str(tmp_path / "work"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("round ") == 2
    assert "CT x4, 2 rounds: median A" in out and "of 2 rounds above 1" in out
    assert list((tmp_path / "work").iterdir()) == []  # each run's files removed


def test_steps_places_each_step_after_the_last_fragment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import steps

    monkeypatch.setattr(bench.listener, "OUT", tmp_path)
    assert steps.main(["--count", "5", "--work", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    assert "instances/s" in out
    # Every step ran, once per instance on the answering thread; on ext4 the
    # file is linked, then fsynced (its name with it), elsewhere the folder too.
    linked_first = Spool(tmp_path).names_durable_with_file
    ran = ["header check", "index: statements", "link into the spool", "answer sent"]
    ran.append("the file's fsync (waited for, or done)")
    if not linked_first:
        ran.append("folder fsync")
    for step in ran:
        assert f"| {step} | 5 |" in out
    assert ("| folder fsync |" in out) is not linked_first
    assert "w: last write" in out and "the next command, after the answer" in out
    # The listener's functions are themselves again.
    from dicom_listener.receiver import read_header

    assert read_header.__name__ == "read_header"


@pytest.mark.parametrize("direct", [True, False])
def test_the_durable_floor_is_measured_and_leaves_nothing(tmp_path: Path, direct: bool) -> None:
    """bench.listener's "one instance made durable alone", both ways, on a few small files."""
    files = []
    for index in range(3):
        path = tmp_path / f"{index}.dcm"
        path.write_bytes(bytes([index]) * (300_000 + index))
        files.append(path)
    work = tmp_path / "work"
    work.mkdir()
    milliseconds = bench.listener.durable_write_ms(files, work, direct)
    assert 0 < milliseconds < 10_000
    assert list(work.iterdir()) == []


_TRACE = """\
 python-8210 [001] ..... 10.000000: block_rq_issue: 254,0 WS 262144 () 1000 + 512 be,0,4 [python]
 <idle>-0 [001] ..s1. 10.000200: block_rq_complete: 254,0 WS () 1000 + 512 be,0,4 [0]
 python-8210 [001] ..... 10.000600: block_rq_issue: 254,0 WS 262144 () 1512 + 512 be,0,4 [python]
 <idle>-0 [001] ..s1. 10.000800: block_rq_complete: 254,0 WS () 1512 + 512 be,0,4 [0]
 python-8209 [001] ..... 10.001000: block_rq_issue: 254,0 WS 4096 () 2024 + 8 be,0,4 [python]
 <idle>-0 [001] ..s1. 10.001075: block_rq_complete: 254,0 WS () 2024 + 8 be,0,4 [0]
 python-8209 [001] ..... 10.001100: block_rq_issue: 254,0 WSM 4096 () 9000 + 8 be,0,4 [python]
 <idle>-0 [001] ..s1. 10.001150: block_rq_complete: 254,0 WSM () 9000 + 8 be,0,4 [0]
 kworker/1:1H-54 [001] ..... 10.001200: block_rq_issue: 254,0 FF 0 () 0 + 0 none,0,0 [kw]
 <idle>-0 [001] ..s1. 10.001240: block_rq_complete: 254,0 FF () 0 + 0 none,0,0 [0]
 python-8210 [001] ..... 10.002540: block_rq_issue: 254,0 WS 524288 () 3000 + 1024 be,0,4 [python]
 <idle>-0 [001] ..s1. 10.002940: block_rq_complete: 254,0 WS () 3000 + 1024 be,0,4 [0]
 kworker/1:1H-54 [001] ..... 10.003000: block_rq_issue: 254,0 FF 0 () 0 + 0 none,0,0 [kw]
 <idle>-0 [001] ..s1. 10.003040: block_rq_complete: 254,0 FF () 0 + 0 none,0,0 [0]
"""


def test_disktrace_reads_requests_and_cuts_each_cycle() -> None:
    from bench import disktrace

    requests = disktrace.parse(_TRACE)
    assert len(requests) == 14
    assert requests[0] == (10.0, "issue", "WS", 1000, 512, "python")
    assert disktrace.label("FF", 0) == "flush" and disktrace.label("WSM", 8) == "WSM 4K"
    lines = disktrace.summary(requests, instances=2)
    text = "\n".join(lines)
    assert "| WS 256K | 1.00 | 200 |" in text  # two requests for two instances, 200 µs each
    assert "| flush | 1.00 | 40 |" in text
    assert "issued by: other by kw 2, other by python 5" in text
    assert "| WS 4K | 0.50 | 75 |" in text
    # First cycle: the last data write issued at 10.000600, its flush done at
    # 10.001240 (640 µs); the next data write 1300 µs after that flush; the
    # second cycle's chain is 10.002540 -> 10.003040 (500 µs).
    assert "last data write issued -> flush completed: median 570 µs" in text
    assert "flush completed -> next instance's first data write: median 1300 µs" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="the block tracepoints need root")
def test_disktrace_traces_a_real_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import disktrace

    monkeypatch.setattr(bench.listener, "OUT", tmp_path)
    assert disktrace.main(["--count", "5", "--work", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    assert "instances/s" in out and "for 5 instances" in out
    assert "| flush |" in out  # each durable instance ends with a flush of the disk
    assert list((tmp_path / "work").iterdir()) == []


def test_one_association_per_instance_against_dcmtk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import associations

    monkeypatch.setattr(bench.listener, "OUT", tmp_path)
    work = tmp_path / "work"
    code = associations.main(["--count", "3", "--rounds", "2", "--work", str(work)])
    assert code == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| DCMTK") or "| prelim" in line]
    assert len(rows) == 4  # two receivers, two rounds
    assert all(line.endswith("|") and float(line.split("|")[3]) > 0 for line in rows)
    assert "prelim listen: median ratio to DCMTK" in out
    assert list(work.iterdir()) == []  # each run's files removed


def test_the_disk_cost_of_a_write_and_its_flush_is_measured(tmp_path: Path) -> None:
    from bench import disk

    rows = disk.measure(tmp_path, (0, 64, 256), repeats=3)
    assert [kb for kb, _, _ in rows] == [0, 64, 256]
    assert rows[0][1] == 0.0 and all(w > 0 for _, w, _ in rows[1:])
    assert all(flush > 0 for _, _, flush in rows)
    assert list(tmp_path.iterdir()) == []
