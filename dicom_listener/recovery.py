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

First, records (``record.py``) still in ``.incoming`` are finished: a whole
one (its trailer names its file and matches its bytes) may have been
acknowledged, so it gets its spool name as the settler would have given it
(``settle.py``), unless another copy of the instance is there already; one
that is not whole never was acknowledged and is removed.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom import dcmread

from db.engine import transaction
from db.studies import InstanceFields, index_instance, indexed_paths
from dicom_listener import fingerprint, record
from dicom_listener.header import InstanceHeader, read_header
from dicom_listener.settle import Waiting, settle
from dicom_listener.spool import Spool, recorded_digest
from prelim.database import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovered:
    orphans_removed: int
    reindexed: int
    quarantined: int
    records_settled: int = 0


def recover(spool: Spool, database: Database) -> Recovered:
    records = settle_records(spool)
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
    if orphans or reindexed or quarantined or records:
        log.info(
            "recovery: %d records settled, %d orphan temp files removed,"
            " %d spool files re-indexed, %d quarantined",
            records,
            orphans,
            reindexed,
            quarantined,
        )
    return Recovered(orphans, reindexed, quarantined, records)


def settle_records(spool: Spool) -> int:
    """Give each whole record left in ``.incoming`` its spool name; remove the others.

    A record file of any other length is no record (one used as a plain temp
    file, or one already cut to length by the settler, whose spool name was
    durable before that): it is left to ``Spool.remove_orphans``.
    """
    waiting = []
    for path in sorted(spool.incoming.glob("*" + record.SUFFIX)):
        try:
            if path.stat().st_size != record.RECORD_BYTES:
                continue
        except FileNotFoundError:
            continue
        found = record.read_data(path, record.nonce_of(path))
        if found is None:
            path.unlink(missing_ok=True)  # made ahead and never filled, or cut off
            continue
        size, digest, data = found
        relative = _record_path(spool, data)
        if relative is None:
            log.error("record %s holds no readable instance: removed", path.name)
            path.unlink(missing_ok=True)  # its header check refused it: never acknowledged
            continue
        waiting.append(Waiting(path, relative, size, digest))
    return settle(spool, waiting) if waiting else 0


def _record_path(spool: Spool, data: bytes) -> str | None:
    """The spool path of the instance whose bytes a record holds (from its header), or None."""
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
        study, instance = str(ds.StudyInstanceUID), str(ds.file_meta.MediaStorageSOPInstanceUID)
    except Exception:
        return None
    if not study or not instance:
        return None
    return spool.relative_path(study, instance)


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
