"""The listener benches' tools: bench.compare (two checkouts, interleaved) and bench.steps."""

from __future__ import annotations

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
