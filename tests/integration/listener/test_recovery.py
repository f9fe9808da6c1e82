"""Start-up recovery: orphan temp files go, whole spool files the index lacks are indexed,
and a file that is not what it claims (cut off by a crash, or under another name) is set aside."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from db.tables import Instance
from dicom_listener import fingerprint
from dicom_listener.recovery import recover
from dicom_listener.spool import DIGEST_XATTR, QUARANTINE, Spool
from prelim.database import Database
from prelim.synthetic import make_ct_series, write_study


def _spool_file(spool: Spool, source: Path, study_uid: str, sop_uid: str) -> Path:
    """``source`` placed where the listener would have put instance ``sop_uid``."""
    path = spool.root / spool.relative_path(study_uid, sop_uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    return path


def _seal(path: Path, digest: str | None = None) -> None:
    value = digest if digest is not None else fingerprint.of_file(path)
    os.setxattr(path, DIGEST_XATTR, value.encode())


def test_recovery_indexes_whole_files_and_sets_aside_the_others(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    series = make_ct_series(77, slices=6, rows=32, columns=32)
    sources = write_study(series, tmp_path / "sources")
    study = str(series[0].StudyInstanceUID)
    uids = [str(ds.SOPInstanceUID) for ds in series]
    spool = Spool(tmp_path / "spool")
    (spool.incoming / "rx-partial.part").write_bytes(b"cut off")
    files = [
        _spool_file(spool, source, study, uid) for source, uid in zip(sources, uids, strict=True)
    ]
    _seal(files[0])  # linked before its fsync, whole: indexed
    # files[1]: fsynced before its link (no fingerprint): indexed after its checks
    _seal(files[2])  # the crash came before the fsync: its last bytes never reached the disk
    with files[2].open("r+b") as f:
        f.seek(-1000, os.SEEK_END)
        f.write(bytes(1000))
    _seal(files[3], "sha256:" + "0" * 64)  # a fingerprint of a kind this version cannot check
    # Another instance's bytes under this name (an inode reused before the crash, say).
    shutil.copyfile(sources[5], files[4])
    _seal(files[4])
    files[5].unlink()
    with caplog.at_level(logging.INFO, logger="dicom_listener.recovery"):
        result = recover(spool, database)
    assert (result.orphans_removed, result.reindexed, result.quarantined) == (1, 2, 3)
    assert not any(spool.incoming.iterdir())
    with database.sessions() as session:
        indexed = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
    assert set(indexed) == {uids[0], uids[1]}
    for uid, path in ((uids[0], files[0]), (uids[1], files[1])):
        assert indexed[uid].digest == fingerprint.of_file(path)
        assert indexed[uid].path == spool.relative_path(study, uid)
    # Set aside, not lost: each in the quarantine folder, and the log says why.
    assert not any(path.exists() for path in files[2:5])
    assert len(list((spool.root / QUARANTINE).iterdir())) == 3
    text = caplog.text
    assert "does not match its fingerprint (cut off by a crash, never acknowledged)" in text
    assert "carries a fingerprint of another kind (sha256)" in text
    assert "holds another instance than its name says" in text
    # A second start finds nothing more to do.
    again = recover(spool, database)
    assert (again.orphans_removed, again.reindexed, again.quarantined) == (0, 0, 0)


def _record_of(spool: Spool, source: Path) -> Path:
    """``source`` as the listener leaves it in a record file: whole, trailer written, unnamed."""
    from dicom_listener import record
    from dicom_listener.incoming import DiskWriter, IncomingFile, TempFiles

    made = TempFiles(spool.incoming, ahead=1, prepared=True)
    assert made.fill() == 1
    path = made.take()
    assert path is not None
    writer = DiskWriter()
    file = IncomingFile(spool.incoming, writer, made=path, seal=True)
    file.write(source.read_bytes())
    file.finish()
    file.flushed()
    writer.close()
    assert file.record and path.stat().st_size == record.RECORD_BYTES
    return path


def test_records_left_by_a_crash_are_named_indexed_or_removed(
    database: Database, tmp_path: Path
) -> None:
    from dicom_listener import record
    from dicom_listener.incoming import TempFiles, records_possible

    spool = Spool(tmp_path / "spool")
    if not records_possible(spool):
        pytest.skip("records need ext4 with direct I/O")
    series = make_ct_series(78, slices=4, rows=32, columns=32)
    sources = write_study(series, tmp_path / "sources")
    study = str(series[0].StudyInstanceUID)
    uids = [str(ds.SOPInstanceUID) for ds in series]
    # 0: answered, never named (the crash came before the settler).
    unnamed = _record_of(spool, sources[0])
    # 1: named (both names), not yet cut to length.
    linked = _record_of(spool, sources[1])
    assert spool.link(linked, spool.relative_path(study, uids[1]), keep_temp=True)
    # 2: cut off before its trailer was written: never answered.
    cut = _record_of(spool, sources[2])
    with cut.open("r+b") as f:
        end = len(f.read().rstrip(b"\0"))
        f.seek(end - 1)
        f.write(b"\0")  # the trailer's last byte: its checksum fails
    assert record.read(cut, record.nonce_of(cut)) is None
    # 3: a record file made ahead, never used.
    idle = TempFiles(spool.incoming, ahead=1, prepared=True)
    idle.fill()
    result = recover(spool, database)
    assert result.records_settled == 2
    assert result.reindexed == 2
    assert not any(spool.incoming.iterdir())
    with database.sessions() as session:
        indexed = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
    assert set(indexed) == {uids[0], uids[1]}
    for index in (0, 1):
        stored = spool.root / spool.relative_path(study, uids[index])
        assert stored.read_bytes() == sources[index].read_bytes()
        assert indexed[uids[index]].digest == fingerprint.of_file(stored)
        assert os.getxattr(stored, DIGEST_XATTR).decode() == fingerprint.of_file(stored)
    assert not (spool.root / spool.relative_path(study, uids[2])).exists()
    assert not unnamed.exists() and not linked.exists() and not cut.exists()
    assert recover(spool, database).records_settled == 0  # a second start: nothing to do
