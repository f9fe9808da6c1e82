"""Start-up recovery: drop orphan temp files, re-index spool files the index lacks.

A file in the spool but not in the index was moved into place by a process
that died before its index transaction committed (or, on SQLite, whose
commit the machine lost with its power: those commits skip the WAL's
fsync). Indexing it now loses nothing: the sender will usually send it
again, and that copy is then a duplicate. Only a file whose bytes are whole
is indexed:

- one linked into the spool before its fsync (ext4, ``spool.py``) carries
  the fingerprint of its bytes (``spool.DIGEST_XATTR``); a crash before
  that fsync can leave the name without all the bytes, or with another
  file's. Such a file was never acknowledged: when its bytes do not match,
  it is set aside (``.quarantine``), not indexed;
- its header must decode and pass the listener's checks, and name the
  instance (and study) its path says: otherwise it is set aside too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom import dcmread

from db.engine import transaction
from db.studies import InstanceFields, index_instance, indexed_paths
from dicom_listener import fingerprint
from dicom_listener.header import InstanceHeader, read_header
from dicom_listener.spool import Spool, recorded_digest
from prelim.database import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovered:
    orphans_removed: int
    reindexed: int
    quarantined: int


def recover(spool: Spool, database: Database) -> Recovered:
    orphans = spool.remove_orphans()
    with database.sessions() as session:
        known = indexed_paths(session)
    reindexed = quarantined = 0
    for relative in spool.files():
        if relative in known:
            continue
        path = spool.root / relative
        digest = fingerprint.of_file(path)
        header = _whole_instance(spool, relative, digest)
        if isinstance(header, str):
            log.error("spool file %s %s: quarantined", relative, header)
            spool.quarantine(relative)
            quarantined += 1
            continue
        fields = InstanceFields(
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            series_instance_uid=header.series_instance_uid,
            modality=header.modality,
            transfer_syntax_uid=header.transfer_syntax_uid,
            path=relative,
            size_bytes=path.stat().st_size,
            digest=digest,
        )
        with transaction(database.sessions) as session:
            index_instance(session, header.study, fields, datetime.now(UTC))
        reindexed += 1
    if orphans or reindexed or quarantined:
        log.info(
            "recovery: %d orphan temp files removed, %d spool files re-indexed, %d quarantined",
            orphans,
            reindexed,
            quarantined,
        )
    return Recovered(orphans, reindexed, quarantined)


def _whole_instance(spool: Spool, relative: str, digest: str) -> InstanceHeader | str:
    """The header of a spool file that is whole and checks out, else what is wrong with it."""
    path = spool.root / relative
    recorded = recorded_digest(path)
    if recorded is not None and recorded != digest:
        if not fingerprint.comparable(recorded, digest):
            return f"carries a fingerprint of another kind ({recorded.partition(':')[0]})"
        return "does not match its fingerprint (cut off by a crash, never acknowledged)"
    try:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        header = read_header(
            path, str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID)
        )
    except Exception as exc:  # InstanceRejected included: nothing readable to index
        return f"is unreadable ({exc})"
    if spool.relative_path(header.study.study_instance_uid, header.sop_instance_uid) != relative:
        return "holds another instance than its name says"
    return header
