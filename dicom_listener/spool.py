"""The spool: where received instances become durable files.

Layout: ``<spool>/<study folder>/<SOP Instance UID>.dcm``, where the study
folder is a hash of the Study Instance UID (known before any database row
exists, and carrying no identifier). Temp files live in ``<spool>/.incoming``
on the same file system, so moving one into place is atomic: a hard link,
which fails when the instance is already there, then an unlink of the temp
name.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

INCOMING = ".incoming"
# errno values of a file system that cannot make hard links.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV}
QUARANTINE = ".quarantine"
# How long a look at the free disk space is trusted.
FREE_SPACE_AGE_S = 0.05


_helpers: ThreadPoolExecutor | None = None
_helpers_lock = threading.Lock()


def in_background(function: Callable[..., T], *args: Any) -> Future[T]:
    """Run a blocking file-system call (fsync, create) on a shared helper thread."""
    global _helpers
    with _helpers_lock:
        if _helpers is None:
            # Enough for every association to have its fsync under way at once.
            _helpers = ThreadPoolExecutor(max_workers=32, thread_name_prefix="prelim-fsync")
    return _helpers.submit(function, *args)


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def study_folder(study_instance_uid: str) -> str:
    return hashlib.sha256(study_instance_uid.encode()).hexdigest()[:32]


def _safe_name(sop_instance_uid: str) -> str:
    # A UID is digits and dots; anything else must not become a path.
    if not sop_instance_uid or not all(c.isdigit() or c == "." for c in sop_instance_uid):
        return "x" + hashlib.sha256(sop_instance_uid.encode()).hexdigest()
    return sop_instance_uid


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / INCOMING
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._free: tuple[float, float] | None = None  # (when, MB)

    def relative_path(self, study_instance_uid: str, sop_instance_uid: str) -> str:
        return f"{study_folder(study_instance_uid)}/{_safe_name(sop_instance_uid)}.dcm"

    def free_mb(self) -> float:
        """Free space on the spool's file system, looked up at most every FREE_SPACE_AGE_S.

        A CT series arrives at hundreds of instances a second; one look per
        instance cost more than the index statements. A disk that fills up
        in between still refuses the write itself (0xA700).
        """
        now = time.monotonic()
        cached = self._free
        if cached is not None and now - cached[0] < FREE_SPACE_AGE_S:
            return cached[1]
        free = shutil.disk_usage(self.root).free / 1_048_576
        self._free = (now, free)
        return free

    def place(
        self,
        temp: Path,
        relative: str,
        flushed: Callable[[], None] | None = None,
    ) -> Path | None:
        """fsync ``temp`` and move it to ``relative``; None if a file is already there.

        ``flushed``, when given, waits for an fsync of ``temp`` already under
        way (``IncomingFile.flushed``) instead of starting one. The move is a
        hard link and an unlink, which, unlike a rename, never replaces a file
        already in place (the first copy of an instance is the one kept). The
        new name is durable once its folder is fsynced (``sync_folder``).
        """
        dest = self.root / relative
        if flushed is None:
            fsync_path(temp)
        else:
            flushed()
        folder = dest.parent
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            fsync_path(self.root, directory=True)
        try:
            os.link(temp, dest)
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            # A file system without hard links: one listener process per
            # spool (the supported layout) holds the UID's lock here.
            if dest.exists():
                return None
            os.replace(temp, dest)
            return dest
        os.unlink(temp)
        return dest

    def sync_folder(self, relative: str) -> None:
        """fsync the folder of ``relative``: the names placed there are durable."""
        fsync_path((self.root / relative).parent, directory=True)

    def discard(self, relative: str) -> None:
        """Remove a committed file whose indexing failed (it was never acknowledged)."""
        try:
            (self.root / relative).unlink()
        except FileNotFoundError:
            pass

    def remove_orphans(self) -> int:
        """Delete temp files left by a crash or a broken association; how many."""
        count = 0
        for path in self.incoming.iterdir():
            try:
                path.unlink()
                count += 1
            except OSError as exc:
                log.warning("cannot remove orphan temp file %s: %s", path.name, exc)
        return count

    def files(self) -> Iterator[str]:
        """Relative paths of every spooled instance."""
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            for path in folder.glob("*.dcm"):
                yield f"{folder.name}/{path.name}"

    def quarantine(self, relative: str) -> None:
        """Move an unreadable spool file aside, keeping it for a person to look at."""
        target = self.root / QUARANTINE / relative.replace("/", "_")
        target.parent.mkdir(exist_ok=True)
        os.replace(self.root / relative, target)
