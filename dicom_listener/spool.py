"""The spool: where received instances become durable files.

Layout: ``<spool>/<study folder>/<SOP Instance UID>.dcm``, where the study
folder is a hash of the Study Instance UID (known before any database row
exists, and carrying no identifier). Temp files live in ``<spool>/.incoming``
on the same file system, so moving one into place is atomic: a hard link,
which fails when the instance is already there, then an unlink of the temp
name.

Two orders make a received file durable under its spool name:

- anywhere: fsync the temp file, link it into place, fsync the folder (two
  flushes of the disk's cache, one after the other);
- on ext4 (``names_durable_with_file``): link it into place first, then one
  fsync of the file, which writes its bytes, its inode and, with them, the
  folder's block that holds its new name, then flushes the disk's cache
  once. ext4 does this: without a journal its fsync of a file with a new
  name also writes that name's folder (``ext4_sync_parent``), and with one
  the link is in the journal transaction that the fsync commits; a new
  study folder's own inode and its name in the spool root go down with the
  first file's fsync the same way (the root is also fsynced when the folder
  is made: ``_study_folder``). What that leaves of the folder is its own
  inode, changed only in its times unless the folder has grown by a block
  (every fifty names or so); ``settle_folder`` fsyncs a folder whenever its
  size has changed since its last fsync, so the guarantee does not depend
  on how a kernel writes a grown folder's inode. Before that single flush a crash
  can leave the name on disk without all the bytes; such a file was never
  acknowledged, and so that start-up recovery can tell, the file carries
  its fingerprint (``DIGEST_XATTR``, written with its inode) before it is
  linked: recovery compares it with the bytes.
"""

from __future__ import annotations

import collections
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
# The fingerprint (``fingerprint.py`` label) of a file linked into the spool
# before its fsync, as an extended attribute: it lets recovery tell a file
# cut off by a crash from a stored one.
DIGEST_XATTR = "user.prelim.digest"
# File systems whose fsync of a file also makes its new names durable (above).
_NAMES_WITH_FILE = {"ext4"}
# Study folders a spool remembers (``Spool._folders``), the most recent.
_FOLDERS_KEPT = 4096
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


def fsync_path(path: str | Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_system_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the file system that holds ``path`` (``ext4``, ``xfs``...), None if unknown.

    Looked up in ``/proc/self/mountinfo`` by device number, so a bind mount
    or a symlinked folder is no trap.
    """
    try:
        device = os.stat(path).st_dev
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in lines:
        fields = line.split()
        # ID, parent ID, major:minor, root, mount point, options, [optional...], -, type, ...
        if len(fields) > 7 and fields[2] == wanted and "-" in fields[6:]:
            return fields[fields.index("-", 6) + 1]
    return None


def names_durable_with_file(folder: Path) -> bool:
    """Whether files in ``folder`` can be linked first and fsynced once (module docstring).

    The file system must make a file's new names durable with its fsync, and
    take the fingerprint attribute (tried on a file made and removed here).
    """
    if file_system_type(folder) not in _NAMES_WITH_FILE:
        return False
    probe = folder / f"probe-{os.getpid()}-{threading.get_ident()}.part"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.setxattr(fd, DIGEST_XATTR, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError:
        return False
    return True


def recorded_digest(path: Path) -> str | None:
    """The fingerprint a file was given before it was linked into the spool, if any."""
    try:
        return os.getxattr(path, DIGEST_XATTR).decode("ascii", "replace")
    except OSError:  # none (stored in the other order), or no extended attributes here
        return None


def _link_count(status: os.stat_result) -> int:
    return status.st_nlink


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
        # Link first, then one fsync of the file (module docstring).
        self.names_durable_with_file = names_durable_with_file(self.incoming)
        self._root = str(root)
        # The study folders this process has used, most recent last: one is
        # here once its own name is durable (``_study_folder``), with its
        # (inode, size) at its last fsync here, None when not known
        # (``settle_folder``). ``_making`` is held while a folder is made.
        self._folders: collections.OrderedDict[str, tuple[int, int] | None] = (
            collections.OrderedDict()
        )
        self._folders_lock = threading.Lock()
        self._making = threading.Lock()

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
        way (``IncomingFile.flushed``) instead of starting one. The new name
        is durable once its folder is fsynced (``sync_folder``).
        """
        if flushed is None:
            fsync_path(temp)
        else:
            flushed()
        return self.link(temp, relative)

    def place_durably(
        self,
        temp: Path,
        relative: str,
        flushed: Callable[[], None] | None = None,
        sealed: bool = False,
    ) -> Path | None:
        """Move ``temp`` to ``relative``, its bytes and its name durable; None if a file is there.

        ``sealed``: ``temp`` carries its fingerprint (``DIGEST_XATTR``) and
        ``flushed`` does its fsync, so on a spool where that fsync also makes
        a new name durable it is linked first and fsynced once; otherwise it
        is fsynced (``flushed`` waits for one under way, when given), linked,
        and its folder fsynced (the module docstring's two orders). When a
        step after the link fails, the new name is removed again: the
        OSError means nothing was placed.
        """
        linked_first = sealed and flushed is not None and self.names_durable_with_file
        placed = self.link(temp, relative) if linked_first else self.place(temp, relative, flushed)
        if placed is None:
            return None
        try:
            if linked_first:
                assert flushed is not None
                flushed()  # bytes, inode and new name written, then one flush
                self.settle_folder(relative)
            else:
                self.sync_folder(relative)
        except OSError:
            self.discard(relative)
            raise
        return placed

    def link(self, temp: Path, relative: str, keep_temp: bool = False) -> Path | None:
        """Move ``temp`` to ``relative`` as it is (no fsync); None if a file is already there.

        The move is a hard link and an unlink, which, unlike a rename, never
        replaces a file already in place (the first copy of an instance is
        the one kept). ``keep_temp``: no unlink (``settle.py`` removes the
        temp name once the new one is durable).
        """
        dest = self.root / relative
        self._study_folder(relative)
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
            if keep_temp:
                raise
            os.replace(temp, dest)
            return dest
        if not keep_temp:
            os.unlink(temp)
        return dest

    def _study_folder(self, relative: str) -> None:
        """Make sure the folder of ``relative`` exists and its own name is durable.

        The first time this process uses a study folder it fsyncs the spool
        root (after making the folder, if it is new), under a lock: an
        association that finds the folder another one has just made waits
        for that fsync, so no instance is acknowledged inside a folder whose
        name a crash could still take away.
        """
        folder = self._folder_of(relative)
        if folder in self._folders:
            return
        with self._making:
            if folder in self._folders:
                return
            seen = None  # an existing folder: its size at its last fsync is not known
            if not os.path.isdir(folder):
                os.makedirs(folder, exist_ok=True)
                # A new folder's own inode and first block are written by the
                # fsync of the first file linked into it (``ext4_sync_parent``,
                # the same as its name in the folder): nothing for
                # ``settle_folder`` to do until it grows.
                status = os.stat(folder)
                seen = (status.st_ino, status.st_size)
            fsync_path(self.root, directory=True)
            self._remember(folder, seen)

    def occupied(self, relative: str) -> bool:
        """Whether something, a dangling link included, is at ``relative`` in the spool."""
        # Plain strings, as in ``_folder_of``: once per instance.
        return os.path.lexists(os.path.join(self._root, relative))

    def _folder_of(self, relative: str) -> str:
        # Plain strings: this runs once per instance, and Path objects cost more than the stat.
        return os.path.join(self._root, relative.rpartition("/")[0])

    def _remember(self, folder: str, seen: tuple[int, int] | None) -> None:
        with self._folders_lock:
            self._folders[folder] = seen
            self._folders.move_to_end(folder)
            while len(self._folders) > _FOLDERS_KEPT:
                self._folders.popitem(last=False)

    def sync_folder(self, relative: str) -> None:
        """fsync the folder of ``relative``: the names placed there are durable."""
        fsync_path((self.root / relative).parent, directory=True)

    def settle_folder(self, relative: str) -> bool:
        """After a linked file's fsync: fsync its folder too if it has grown; whether it did.

        A folder whose inode and size are those of its last fsync here (or
        of its making, by this process) has only new times to write, which no
        name depends on. One grown by a block, or one this process has not
        fsynced yet, is fsynced (module docstring). The size is read before
        the fsync, which covers at least that much.
        """
        folder = self._folder_of(relative)
        status = os.stat(folder)
        seen = (status.st_ino, status.st_size)
        with self._folders_lock:
            if self._folders.get(folder) == seen:
                self._folders.move_to_end(folder)
                return False
        fsync_path(folder, directory=True)
        self._remember(folder, seen)
        return True

    def discard(self, relative: str) -> None:
        """Remove a committed file whose indexing failed (it was never acknowledged)."""
        try:
            (self.root / relative).unlink()
        except FileNotFoundError:
            pass

    def remove_orphans(self) -> int:
        """Delete temp files left by a crash or a broken association; how many.

        A temp name that is also a stored file's (the same inode: the power
        went between the link into the spool and the write of the temp folder
        that dropped the name) is kept when its link count says 1. On a file
        system without a journal that count can be one short until a file
        system check (``e2fsck``) mends it, and removing the name would then
        free the stored instance; a count of 2 is right, and the name goes.
        """
        count = 0
        suspects: dict[int, Path] = {}
        for path in self.incoming.iterdir():
            try:
                status = path.lstat()
            except FileNotFoundError:
                continue
            if status.st_size > 0 and _link_count(status) < 2:
                suspects[status.st_ino] = path  # a partial file, or a stored one's name?
                continue
            count += self._remove_orphan(path)
        stored = self._stored_inodes(set(suspects)) if suspects else set()
        for inode, path in suspects.items():
            if inode in stored:
                log.warning(
                    "temp file %s is also the name of a stored instance with a link count"
                    " of 1: kept (check the file system with e2fsck)",
                    path.name,
                )
            else:
                count += self._remove_orphan(path)
        return count

    @staticmethod
    def _remove_orphan(path: Path) -> int:
        try:
            path.unlink()
            return 1
        except OSError as exc:
            log.warning("cannot remove orphan temp file %s: %s", path.name, exc)
            return 0

    def _stored_inodes(self, wanted: set[int]) -> set[int]:
        """Which of the inode numbers ``wanted`` a spool file has (one pass, no stat calls)."""
        found: set[int] = set()
        for folder in os.scandir(self.root):
            if folder.name.startswith(".") or not folder.is_dir(follow_symlinks=False):
                continue
            with os.scandir(folder.path) as entries:
                found.update(entry.inode() for entry in entries if entry.inode() in wanted)
        return found

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
