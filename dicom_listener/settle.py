"""Settling records: the spool names of instances stored as records, in batches (``record.py``).

A record (an instance in a record file in ``.incoming``, durable, indexed
and answered) gets its spool name here, off the answer's path, for a batch
of records at a time: when the listener has been quiet for ``quiet_s``,
when ``batch`` records wait, or when the oldest has waited ``max_wait_s``.
Each step is made durable before the next one depends on it, so a crash at
any point leaves what start-up recovery finishes (``recovery.py``):

1. each record is hard-linked to its spool name (the ``.rec`` name stays);
2. the folders of the new names are fsynced: the names are durable;
3. each file is cut to its length (dropping the trailer and the zeros after
   it) and given its fingerprint attribute (``spool.DIGEST_XATTR``);
4. one ``syncfs`` (or an fsync per file where it is missing) makes those
   durable;
5. only then is each ``.rec`` name removed.

Until its ``.rec`` name is gone a record can always be found and finished:
before step 3 it is a whole record, after step 4 a whole spool file. A
record whose step fails (a full disk, say) waits for the next batch, at
least ``_RETRY_S`` later.

Nothing may read a record's spool file before it is settled (it may not
exist yet, or still end in its trailer). Only the pipeline reads spool
files, once a study is ready: before each of its polls the study assembly
settles every record that has waited half the stable age (``drain``), so
every record of a study quiet for the stable age is named before the study
is marked ready, and a burst still arriving is not slowed by settling.
``close`` settles the rest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_listener.spool import DIGEST_XATTR, Spool, fsync_path

log = logging.getLogger(__name__)

_QUIET_S = 0.05
_BATCH = 4096
_MAX_WAIT_S = 5.0
# After a batch that left records unsettled (a full disk, say), the wait
# before they are tried again.
_RETRY_S = 1.0


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_syncfs = _load_syncfs()


def sync_file_system(path: Path, files: list[Path]) -> None:
    """Make every change to the file system that holds ``path`` durable (``syncfs``).

    Where ``syncfs`` is missing, each of ``files`` is fsynced instead.
    """
    if _syncfs is None:
        for file in files:
            fsync_path(file)
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Waiting:
    temp: Path
    relative: str
    size: int
    digest: str
    added: float = field(default_factory=time.monotonic)


class Settler:
    """Gives records their spool names, in batches, on a thread of its own."""

    def __init__(
        self,
        spool: Spool,
        quiet_s: float = _QUIET_S,
        batch: int = _BATCH,
        max_wait_s: float = _MAX_WAIT_S,
    ) -> None:
        self.spool = spool
        self._quiet_s = quiet_s
        self._batch = batch
        self._max_wait_s = max_wait_s
        self._waiting: list[Waiting] = []
        self._relatives: set[str] = set()
        self._lock = threading.Lock()
        self._settling = threading.Lock()  # one batch at a time, thread or drain
        self._wanted = threading.Event()
        self._halt = threading.Event()  # cuts the thread's waits short at close
        self._last_added = 0.0
        self._failed_at = 0.0  # when a batch last left records unsettled
        self._stopped = False
        self._thread: threading.Thread | None = None

    def add(self, temp: Path, relative: str, size: int, digest: str) -> None:
        """A stored record, answered: give it its spool name soon."""
        with self._lock:
            self._waiting.append(Waiting(temp, relative, size, digest))
            self._relatives.add(relative)
            self._last_added = time.monotonic()
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="prelim-settle", daemon=True)
                self._thread.start()
        self._wanted.set()

    def waiting(self, relative: str) -> bool:
        """Whether a record for ``relative`` waits for its name."""
        with self._lock:
            return relative in self._relatives

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)

    def drain(self, older_than_s: float = 0.0) -> None:
        """Settle the records that have waited ``older_than_s`` or more, on this thread.

        A batch under way is finished first.
        """
        self._settle_waiting(older_than_s)

    def close(self) -> None:
        """Settle what waits and stop the thread."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._halt.set()
        self._wanted.set()
        if thread is not None:
            thread.join(30)
        self._settle_waiting()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            with self._lock:
                if self._stopped:
                    return
                count = len(self._waiting)
                if not count:
                    self._wanted.clear()
                    continue
                now = time.monotonic()
                quiet_for = now - self._last_added
                waited = now - self._waiting[0].added
                since_failure = now - self._failed_at
            if since_failure < _RETRY_S:
                self._halt.wait(_RETRY_S - since_failure)  # a failed batch: not at once again
                continue
            if count >= self._batch or quiet_for >= self._quiet_s or waited >= self._max_wait_s:
                try:
                    self._settle_waiting()
                except Exception:  # the records stay in .incoming, for recovery
                    log.exception("settling records failed")
                continue
            self._halt.wait(min(self._quiet_s - quiet_for, self._max_wait_s - waited))

    def _settle_waiting(self, older_than_s: float = 0.0) -> None:
        with self._settling:
            with self._lock:
                if older_than_s > 0:
                    since = time.monotonic() - older_than_s
                    batch = [item for item in self._waiting if item.added <= since]
                    self._waiting = [item for item in self._waiting if item.added > since]
                else:
                    batch, self._waiting = self._waiting, []
            if not batch:
                return
            left: list[Waiting] = []
            try:
                settle(self.spool, batch, left)
            finally:
                with self._lock:
                    for item in batch:
                        if item not in left:
                            self._relatives.discard(item.relative)
                    # Tried again with the next batch, oldest first.
                    self._waiting[:0] = left
                    self._failed_at = time.monotonic() if left else 0.0


def settle(spool: Spool, batch: list[Waiting], left: list[Waiting] | None = None) -> int:
    """The module docstring's five steps for ``batch``; how many were settled.

    A record whose step fails stays in ``.incoming`` (logged) and is added to
    ``left``, to be tried again (start-up recovery finishes it otherwise);
    the others go on.
    """
    failed = left if left is not None else []
    linked: list[tuple[Waiting, Path]] = []
    for item in batch:
        dest = spool.root / item.relative
        try:
            placed = spool.link(item.temp, item.relative, keep_temp=True)
            if placed is None and not os.path.samefile(item.temp, dest):
                # Another file took the name first: it stays, this copy goes.
                log.warning("spool file %s already there: the record is dropped", item.relative)
                item.temp.unlink()
                continue
        except OSError as exc:
            log.error("record for %s left in .incoming: %s", item.relative, exc)
            failed.append(item)
            continue
        linked.append((item, dest))
    if not linked:
        return 0
    try:
        for folder in sorted({dest.parent for _, dest in linked}):
            fsync_path(folder, directory=True)
        for item, dest in linked:
            os.setxattr(dest, DIGEST_XATTR, item.digest.encode("ascii"))
            os.truncate(dest, item.size)
        sync_file_system(spool.root, [dest for _, dest in linked])
    except OSError as exc:
        log.error("%d records left in .incoming: %s", len(linked), exc)
        failed.extend(item for item, _ in linked)
        return 0
    for item, _ in linked:
        try:
            item.temp.unlink()
        except OSError as exc:  # a durable spool file; recovery removes the name
            log.warning("cannot remove the record name %s: %s", item.temp.name, exc)
    return len(linked)
