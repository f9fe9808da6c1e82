"""The spool: where received instances become durable files.

Layout: ``<spool>/<study folder>/<SOP Instance UID>.dcm``, where the study
folder is a hash of the Study Instance UID (known before any database row
exists, and carrying no identifier). Temp files live in ``<spool>/.incoming``
on the same file system, so moving one into place is an atomic rename.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

INCOMING = ".incoming"
QUARANTINE = ".quarantine"


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

    def relative_path(self, study_instance_uid: str, sop_instance_uid: str) -> str:
        return f"{study_folder(study_instance_uid)}/{_safe_name(sop_instance_uid)}.dcm"

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 1_048_576

    def commit(
        self, temp: Path, relative: str, flushed: Callable[[], None] | None = None
    ) -> Path:
        """fsync ``temp``, rename it to ``relative``, fsync the folder: durable from here.

        ``flushed``, when given, waits for an fsync of ``temp`` already under
        way (``IncomingFile.flushed``) instead of starting one.
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
        os.replace(temp, dest)
        fsync_path(folder, directory=True)
        return dest

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
