"""Start-up recovery: drop orphan temp files, re-index spool files the index lacks.

A file in the spool but not in the index was moved into place by a process
that died before its index transaction committed, so it was never
acknowledged; it is a complete, checked instance all the same, and indexing it
now loses nothing (the sender will usually send it again, and that copy is then
a duplicate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom import dcmread

from db.engine import transaction
from db.studies import InstanceFields, index_instance, indexed_paths
from dicom_listener import fingerprint
from dicom_listener.header import read_header
from dicom_listener.spool import Spool
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
        try:
            meta = dcmread(path, stop_before_pixels=True).file_meta
            header = read_header(
                path, str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID)
            )
        except Exception as exc:  # InstanceRejected included: nothing readable to index
            log.error("spool file %s is unreadable (%s): quarantined", relative, exc)
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
            digest=fingerprint.of_file(path),
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
