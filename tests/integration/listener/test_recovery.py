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
