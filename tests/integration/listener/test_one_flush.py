"""What linking before the fsync relies on, checked on this machine's own disk: on ext4,
an fsync of a file just linked into a folder also writes the folder's block that holds
the new name, so the folder's own fsync then has one block less to write (at most its
inode's new times are left, and none when that inode shares a block with the file's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_listener.spool import Spool, fsync_path


def _device_writes(path: Path) -> int | None:
    """Write requests the disk holding ``path`` completed, not counting cache flushes."""
    device = os.stat(path).st_dev
    stat = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/stat")
    try:
        fields = [int(value) for value in stat.read_text().split()]
    except (OSError, ValueError):
        return None
    if len(fields) < 17:
        return None  # a kernel that does not count flushes apart
    return fields[4] - fields[15]


def _folder_writes_after(spool: Spool, index: int, linked_first: bool) -> int:
    """Writes of the folder's fsync once a new file is durable, in one order or the other."""
    temp = spool.incoming / f"rx-{index}.part"
    temp.write_bytes(os.urandom(20_000))
    os.sync()
    folder = spool.root / "study"
    dest = folder / f"{index}.dcm"
    if linked_first:
        os.link(temp, dest)
        os.unlink(temp)
        fsync_path(dest)
    else:
        fsync_path(temp)
        os.link(temp, dest)
        os.unlink(temp)
    before = _device_writes(folder)
    fsync_path(folder, directory=True)
    after = _device_writes(folder)
    assert before is not None and after is not None
    return after - before


def test_a_files_fsync_after_its_link_writes_its_new_name(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    if not spool.names_durable_with_file:
        pytest.skip("the spool is not on ext4: the listener fsyncs the folder itself")
    if _device_writes(tmp_path) is None:
        pytest.skip("no per-device write counts here")
    (spool.root / "study").mkdir()
    fsync_path(spool.root, directory=True)
    fsync_path(spool.root / "study", directory=True)
    # Other processes write to the same disk: the fewest writes over a few tries.
    linked_first = min(_folder_writes_after(spool, i, True) for i in range(8))
    fsynced_first = min(_folder_writes_after(spool, 100 + i, False) for i in range(8))
    # The control: fsynced before its link, the folder's fsync writes the name's block.
    assert fsynced_first >= 1
    assert linked_first < fsynced_first  # linked first, that block went down with the file
