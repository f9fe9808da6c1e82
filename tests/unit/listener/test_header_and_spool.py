"""Header checks, priority mapping, the spool's durable rename, synthetic determinism."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_listener import statuses
from dicom_listener.header import (
    InstanceRejected,
    procedure_priority,
    read_header,
    request_priority,
)
from dicom_listener.spool import (
    DIGEST_XATTR,
    Spool,
    file_system_type,
    names_durable_with_file,
    recorded_digest,
    study_folder,
)
from prelim.synthetic import make_ct_series, make_cxr_study, write_study


def test_priorities() -> None:
    assert [request_priority(p) for p in (0x0002, 0x0000, 0x0001, None)] == [0, 1, 2, 1]
    ds = Dataset()
    assert procedure_priority(ds) == -1
    ds.RequestedProcedurePriority = "STAT"
    assert procedure_priority(ds) == 3


def test_read_header_accepts_a_good_file_and_names_the_failure(tmp_path: Path) -> None:
    ds = make_ct_series(1, slices=1, rows=16, columns=16)[0]
    path = write_study([ds], tmp_path)[0]
    header = read_header(path, ds.SOPClassUID, ds.SOPInstanceUID)
    assert header.study.patient_id == ds.PatientID and header.modality == "CT"
    with pytest.raises(InstanceRejected) as mismatch:
        read_header(path, ds.SOPClassUID, "1.2.3")
    assert mismatch.value.status == statuses.DATASET_MISMATCH
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InstanceRejected) as short:
        read_header(path, ds.SOPClassUID, ds.SOPInstanceUID)
    assert short.value.status in statuses.CANNOT_UNDERSTAND


def test_spool_place_and_orphans(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    temp = spool.incoming / "rx-1.part"
    temp.write_bytes(b"data")
    relative = spool.relative_path("1.2.3", "1.2.3.4")
    assert relative == f"{study_folder('1.2.3')}/1.2.3.4.dcm"
    placed = spool.place(temp, relative)
    assert placed is not None and placed.read_bytes() == b"data" and not temp.exists()
    spool.sync_folder(relative)
    assert list(spool.files()) == [relative]
    # place() never replaces: the first copy of an instance stays.
    again = spool.incoming / "rx-3.part"
    again.write_bytes(b"other")
    assert spool.place(again, relative) is None
    assert (spool.root / relative).read_bytes() == b"data" and again.exists()
    again.unlink()
    (spool.incoming / "rx-2.part").write_bytes(b"partial")
    assert spool.remove_orphans() == 1 and not any(spool.incoming.iterdir())
    assert "/" not in spool.relative_path("1.2", "../../etc/passwd").split("/", 1)[1]


def test_synthetic_is_deterministic_and_sized() -> None:
    a, b = make_cxr_study(5, rows=64, columns=48), make_cxr_study(5, rows=64, columns=48)
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert a[0].PixelData == b[0].PixelData and a[0].pixel_array.shape == (64, 48)
    assert [d.ViewPosition for d in a] == ["PA", "LL"]
    ct = make_ct_series(5, slices=3, rows=32, columns=32)
    assert [float(d.SliceLocation) for d in ct] == [-300.0, -297.5, -295.0]
    assert ct[0].pixel_array.shape == (32, 32) and ct[0].RescaleIntercept == -1024


def _mountinfo(tmp_path: Path, device: str, fstype: str) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(
        "22 1 0:5 / /proc rw,nosuid - proc proc rw\n"
        f"27 1 {device} / / rw,relatime shared:1 - {fstype} /dev/vda rw,discard\n"
    )
    return path


def test_the_file_system_is_found_by_device_number(tmp_path: Path) -> None:
    device = os.stat(tmp_path).st_dev
    own = f"{os.major(device)}:{os.minor(device)}"
    assert file_system_type(tmp_path, _mountinfo(tmp_path, own, "xfs")) == "xfs"
    assert file_system_type(tmp_path, _mountinfo(tmp_path, "999:999", "xfs")) is None
    assert file_system_type(tmp_path, tmp_path / "absent") is None
    assert file_system_type(tmp_path / "absent", _mountinfo(tmp_path, own, "xfs")) is None


def test_only_ext4_links_first_and_its_probe_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.names_durable_with_file == (file_system_type(tmp_path) == "ext4")
    assert not any(spool.incoming.iterdir())
    if Path("/dev/shm").is_dir():
        shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
        try:
            assert file_system_type(shm) == "tmpfs" and not names_durable_with_file(shm)
        finally:
            shutil.rmtree(shm)


def test_link_moves_without_replacing_and_the_fingerprint_is_read_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    temp = spool.incoming / "rx-1.part"
    temp.write_bytes(b"first")
    relative = spool.relative_path("1.2.3", "1.2.3.5")
    assert recorded_digest(temp) is None
    os.setxattr(temp, DIGEST_XATTR, b"xxh128:00ff")
    placed = spool.link(temp, relative)
    assert placed == spool.root / relative and not temp.exists()
    assert recorded_digest(placed) == "xxh128:00ff"
    other = spool.incoming / "rx-2.part"
    other.write_bytes(b"second")
    assert spool.link(other, relative) is None and other.exists()
    assert placed.read_bytes() == b"first"


def test_a_folder_is_fsynced_again_only_once_it_has_grown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``settle_folder``: a folder grown by a block is fsynced; a folder whose size is
    that of its last fsync is not (only its times changed), nor a folder just made (the
    first file's fsync writes it, with the spool root fsynced when it was made)."""
    from dicom_listener import spool as spool_module

    spool = Spool(tmp_path / "spool")
    synced: list[str | Path] = []
    real = spool_module.fsync_path
    monkeypatch.setattr(
        spool_module,
        "fsync_path",
        lambda path, directory=False: synced.append(path) or real(path, directory),
    )
    grew = []
    for index in range(200):
        temp = spool.incoming / f"rx-{index}.part"
        temp.write_bytes(b"d")
        relative = spool.relative_path("1.2.3", f"1.2.826.0.1.3680043.8.498.{index:030d}")
        folder = (spool.root / relative).parent
        before = folder.stat().st_size if folder.exists() else None
        assert spool.link(temp, relative) is not None
        after = folder.stat().st_size
        if before is None:
            assert [Path(path) for path in synced] == [spool.root]  # the new name, at once
        synced.clear()
        settled = spool.settle_folder(relative)
        assert settled == (before is not None and after != before)
        assert [Path(path) for path in synced] == ([folder] if settled else [])
        if settled:
            grew.append(index)
    assert len(grew) >= 2  # each block it grew by
    assert not spool.settle_folder(relative)


def test_a_temp_name_of_a_stored_file_is_kept_while_its_link_count_is_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a power cut on ext4 without a journal, a stored instance can keep its temp
    name too while its inode says one link: removing that name would free the instance."""
    from dicom_listener import spool as spool_module

    spool = Spool(tmp_path / "spool")
    relative = spool.relative_path("1.2.3", "1.2.3.9")
    stored = spool.root / relative
    stored.parent.mkdir()
    stored.write_bytes(b"stored instance")
    second_name = spool.incoming / "rx-linked.part"
    os.link(stored, second_name)
    (spool.incoming / "rx-partial.part").write_bytes(b"partial")
    (spool.incoming / "rx-ahead.part").touch()
    # A right count (2): the temp name goes like any other.
    assert spool.remove_orphans() == 3 and not any(spool.incoming.iterdir())
    assert stored.read_bytes() == b"stored instance"
    # A count one short, as a crash can leave it: the name is kept, the others go.
    os.link(stored, second_name)
    (spool.incoming / "rx-partial.part").write_bytes(b"partial")
    monkeypatch.setattr(spool_module, "_link_count", lambda status: 1)
    assert spool.remove_orphans() == 1
    assert [path.name for path in spool.incoming.iterdir()] == ["rx-linked.part"]


def test_no_one_links_into_a_new_study_folder_before_its_name_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two associations storing into one new study: the one that finds the folder the
    other has just made waits for that folder's name (the spool root's fsync)."""
    from dicom_listener import spool as spool_module

    spool = Spool(tmp_path / "spool")
    entered, release = threading.Event(), threading.Event()
    real = spool_module.fsync_path

    def slow_root(path: str | Path, directory: bool = False) -> None:
        if Path(path) == spool.root:
            entered.set()
            release.wait(5)
        real(path, directory)

    monkeypatch.setattr(spool_module, "fsync_path", slow_root)
    temps = []
    for name in ("a", "b"):
        temp = spool.incoming / f"rx-{name}.part"
        temp.write_bytes(name.encode())
        temps.append(temp)
    first = threading.Thread(
        target=spool.link, args=(temps[0], spool.relative_path("1.9", "1.9.1"))
    )
    first.start()
    assert entered.wait(5)  # the folder is made, its name not yet durable
    second_done = threading.Event()

    def second() -> None:
        spool.link(temps[1], spool.relative_path("1.9", "1.9.2"))
        second_done.set()

    other = threading.Thread(target=second)
    other.start()
    assert not second_done.wait(0.3)  # it waits for the root's fsync
    release.set()
    first.join(5)
    other.join(5)
    assert second_done.is_set()
    assert sorted(path.name for path in (spool.root / study_folder("1.9")).iterdir()) == [
        "1.9.1.dcm",
        "1.9.2.dcm",
    ]


@pytest.mark.parametrize("sealed", [True, False])
def test_a_failure_after_the_link_leaves_no_name_in_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sealed: bool
) -> None:
    """``place_durably``: whichever order the spool uses, an fsync that fails once the
    file is linked takes the new name away again, so the error means nothing is placed."""
    import errno

    spool = Spool(tmp_path / "spool")
    temp = spool.incoming / "rx-1.part"
    temp.write_bytes(b"data")
    relative = spool.relative_path("1.2.3", "1.2.3.7")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    if sealed and spool.names_durable_with_file:
        flushed = broken  # the one fsync, after the link
    else:
        flushed = None
        monkeypatch.setattr(spool, "sync_folder", broken)  # the folder's, after the link
    with pytest.raises(OSError):
        spool.place_durably(temp, relative, flushed, sealed)
    assert not (spool.root / relative).exists()
    assert list(spool.files()) == []
