"""Turn a received temp file into a durable, indexed instance, and say which status.

Order, so that 0x0000 always means "on disk and indexed": check free space,
parse and check the header (while the file's fsync runs), then in one
transaction run the index statements (the instance row's unique key is the
duplicate check), wait for the file's fsync, move the file into the spool
with a hard link (which fails when a copy is already there), fsync its
folder, and commit. On ext4 a sealed file (one that carries its
fingerprint, ``incoming.py``) is linked first and then fsynced, which makes
its bytes and its new name durable with one flush of the disk (``spool.py``).
A failed commit removes the file again: nothing unacknowledged stays indexed
or spooled (a crash between the link and the commit leaves a file that
start-up recovery indexes if it is complete, and sets aside if not).

A record (``record.py``: an instance written into a record file made ahead,
on ext4) is durable once its one write returns: the index statements, that
wait, and the commit, then the answer; its spool name comes later from the
settler (``settle.py``), and a crash before that leaves the record in
``.incoming``, where start-up recovery names it.

Duplicates: the same SOP Instance UID received again is stored once. When its
bytes are identical the copy is dropped. When they differ (a re-send in another
transfer syntax, or edited attributes under the same UID, which the standard
does not allow) the first copy is kept, the new bytes are dropped, the study is
not re-opened, and a warning with the UID and both digests is logged. Either
way the answer is 0x0000: the instance is stored, and a sender retrying it
must not be told otherwise forever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from sqlalchemy.exc import SQLAlchemyError

from db.engine import direct_transaction, is_sqlite, make_engine
from db.studies import Indexed, InstanceFields, insert_instance
from dicom_listener import fingerprint, statuses
from dicom_listener.header import InstanceRejected, read_header, request_priority
from dicom_listener.incoming import TempFiles
from dicom_listener.settle import Settler
from dicom_listener.spool import Spool
from prelim.database import Database

log = logging.getLogger(__name__)

_LOCK_STRIPES = 64


class Outcome(NamedTuple):
    """The C-STORE status, and for a failure what to tell the sender (Error Comment)."""

    status: int
    comment: str | None = None


@dataclass(frozen=True)
class StoreRequest:
    sop_class_uid: str
    sop_instance_uid: str
    priority: int | None  # the C-STORE request's Priority (0000,0700)
    calling_ae_title: str | None


class Receiver:
    def __init__(
        self,
        database: Database,
        spool: Spool,
        min_free_disk_mb: int,
        temp_files: TempFiles | None = None,
    ) -> None:
        self.database = database
        # The index's commits on SQLite skip the WAL fsync: the spool file is
        # durable (fsync of file and folder) before the commit, and a commit
        # lost with the machine leaves a spooled file that start-up recovery
        # indexes, so no acknowledged instance is lost. One fsync fewer per
        # instance. PostgreSQL commits as its server is configured.
        if is_sqlite(database.engine):
            url = database.engine.url.render_as_string(hide_password=False)
            self.index = make_engine(url, sqlite_synchronous="NORMAL")
        else:
            self.index = database.engine
        self.spool = spool
        self.min_free_disk_mb = min_free_disk_mb
        # Two associations sending the same instance at once must not both
        # place a file at the same path and race for the index.
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        # Temp files made ahead for the data sets to come (none unless given).
        self.temp_files = temp_files if temp_files is not None else TempFiles(spool.incoming, 0)
        # Gives instances stored as records their spool names (``settle.py``).
        self.settler = Settler(spool)

    def store(
        self,
        temp: Path,
        request: StoreRequest,
        digest: str | Callable[[], str] | None = None,
        *,
        head: bytes | None = None,
        size: int | None = None,
        flushed: Callable[[], None] | None = None,
        ready: Callable[[], None] | None = None,
        sealed: bool = False,
        record: bool = False,
        keep: Callable[[], None] | None = None,
        progress: Callable[[], None] | None = None,
    ) -> Outcome:
        """Store the instance in ``temp`` (consumed or left for the caller to delete).

        ``head`` is a prefix of the file already in memory and ``size`` its
        length, when the caller has them (the header check then reads less);
        ``flushed`` waits for an fsync of ``temp`` the caller already started,
        and ``ready`` for the file to hold every byte (before it is read).
        ``digest`` is the file's fingerprint (``fingerprint.py``), or a function
        that waits for it (called after the header check, which it overlaps).
        ``sealed``: ``temp`` carries its fingerprint (``spool.DIGEST_XATTR``)
        and ``flushed`` does its fsync, so on a spool where that fsync also
        makes a new name durable it is linked first and fsynced once.
        ``record``: ``temp`` is a record file (``record.py``) and ``flushed``
        waits for its one durable write; once indexed it is handed to the
        settler for its spool name, and ``keep`` is called (the temp name is
        no longer the caller's to remove). ``progress`` is called after the header
        check, before the index statements: the caller's writes may move on
        (and wait for the disk) there.
        """
        uid = request.sop_instance_uid
        if self.spool.free_mb() < self.min_free_disk_mb:
            log.error("instance %s refused: less than %d MB free", uid, self.min_free_disk_mb)
            return Outcome(statuses.OUT_OF_RESOURCES, "out of disk space")
        size = temp.stat().st_size if size is None else size
        try:
            header = read_header(
                temp, request.sop_class_uid, uid, head=head, size=size, ready=ready
            )
        except InstanceRejected as exc:
            log.warning("instance %s refused (0x%04X): %s", uid, exc.status, exc)
            return Outcome(exc.status, str(exc))
        if progress is not None:
            progress()
        study = replace(
            header.study,
            priority=max(header.study.priority, request_priority(request.priority)),
            calling_ae_title=request.calling_ae_title,
        )
        relative = self.spool.relative_path(study.study_instance_uid, uid)
        if callable(digest):
            digest = digest()
        elif digest is None:
            digest = fingerprint.of_file(temp)
        fields = InstanceFields(
            sop_instance_uid=uid,
            sop_class_uid=header.sop_class_uid,
            series_instance_uid=header.series_instance_uid,
            modality=header.modality,
            transfer_syntax_uid=header.transfer_syntax_uid,
            path=relative,
            size_bytes=size,
            digest=digest,
        )
        lock = self._locks[hash(uid) % _LOCK_STRIPES]
        placed: Path | None = None
        with lock:
            # The index statements run first, while the file's fsync (started
            # by the caller) is still under way; then the file is put in place
            # (a hard link, so a copy already there stays), its folder is
            # fsynced, and only then does the index commit: an index row never
            # points to a name that a crash could take away (a record's name
            # is made later, from a record that a crash cannot take away). The index's write
            # lock is held across the fsync's end, about a millisecond with
            # direct writes. Compiled statements in a DBAPI transaction: the
            # ORM's unit of work, and SQLAlchemy's connection and transaction
            # objects, cost more than the SQL.
            try:
                with direct_transaction(self.index) as txn:
                    result = insert_instance(txn, study, fields, datetime.now(UTC))
                    if result.outcome is Indexed.DUPLICATE:
                        txn.rollback()  # undo the study row's count: nothing changes
                        self._log_duplicate(uid, result.digest, digest)
                        return Outcome(statuses.SUCCESS)
                    try:
                        if record:
                            placed = self._durable_record(relative, flushed)
                        else:
                            placed = self.spool.place_durably(temp, relative, flushed, sealed)
                    except OSError as exc:
                        txn.rollback()
                        log.error(
                            "instance %s refused: cannot write the spool (%s)", uid, exc.strerror
                        )
                        return Outcome(statuses.OUT_OF_RESOURCES, "cannot write the spool")
                    if placed is None:
                        # In the spool but not indexed (a crash between the two;
                        # start-up recovery indexes it): that first copy stays.
                        txn.rollback()
                        self._log_duplicate(uid, None, digest)
                        return Outcome(statuses.SUCCESS)
            except SQLAlchemyError as exc:
                if placed is not None and not record:
                    self.spool.discard(relative)
                log.error("instance %s refused: database unavailable (%s)", uid, type(exc).__name__)
                return Outcome(statuses.OUT_OF_RESOURCES, "database unavailable")
            if record:
                # Indexed, its record durable: answered as stored; named later.
                self.settler.add(temp, relative, size, digest)
                if keep is not None:
                    keep()
        if result.reopened:
            log.info("study %s re-opened by instance %s", result.study_key, uid)
        return Outcome(statuses.SUCCESS)

    def _durable_record(self, relative: str, flushed: Callable[[], None] | None) -> Path | None:
        """Wait for a record's durable write; its future spool path, or None if a file is there."""
        assert flushed is not None
        # Looked up while the record's write may still be under way.
        if self.spool.occupied(relative) or self.settler.waiting(relative):
            # In the spool but not indexed (a crash before its commit; start-up
            # recovery indexes it): that first copy stays.
            return None
        flushed()
        return self.spool.root / relative

    def close(self) -> None:
        """Name the stored records, remove the temp files made ahead, release the index."""
        self.settler.close()
        self.temp_files.close()
        if self.index is not self.database.engine:
            self.index.dispose()

    @staticmethod
    def _log_duplicate(uid: str, kept: str | None, received: str) -> None:
        if kept is None:
            log.info("instance %s received again: the first copy is kept", uid)
        elif kept == received:
            log.info("instance %s received again, identical: stored once", uid)
        elif not fingerprint.comparable(kept, received):
            log.info(
                "instance %s received again: the first copy is kept (its digest is %s, ours %s)",
                uid,
                kept.partition(":")[0],
                received.partition(":")[0],
            )
        else:
            log.warning(
                "instance %s received again with different bytes (kept %s, dropped %s)",
                uid,
                kept[:23],
                received[:23],
            )
