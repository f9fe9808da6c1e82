"""C-STORE from a pynetdicom SCU: every transfer syntax, bit-preserving, duplicates."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import xxhash
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGLSLossless
from sqlalchemy import select, update

from db.tables import Instance, Study
from dicom_listener.spool import study_folder
from prelim.synthetic import make_ct_series, make_cxr_study, write_study
from tests.integration.listener.conftest import Running, StartListener, associate

# One file per transfer syntax PACS send (pydicom's bundled test files).
FILES = [
    "MR_small_implicit.dcm",  # implicit VR little endian
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated explicit VR little endian
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "JPEG-lossy.dcm",  # JPEG extended
    "JPEG-LL.dcm",  # JPEG lossless SV1
    "SC_rgb_jls_lossy_sample.dcm",  # JPEG-LS near-lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "JPEG2000.dcm",  # JPEG 2000
    "MR_small_RLE.dcm",  # RLE lossless
    "rtplan.dcm",  # a non-image storage class
]
# Files whose pixels no installed decoder reads (12-bit JPEG extended); their bytes are compared.
UNDECODABLE_HERE = {"JPEG-lossy.dcm"}
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def _path(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


def _send_files(listener: Running, paths: list[Path]) -> list[int]:
    datasets = [dcmread(p) for p in paths]
    contexts = [(str(d.SOPClassUID), [str(d.file_meta.TransferSyntaxUID)]) for d in datasets]
    assoc = associate(listener.port, contexts)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        assoc.release()


def _stored(listener: Running, sop_uid: str) -> Path:
    with listener.database.sessions() as session:
        row = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
    assert row is not None
    return listener.spool_dir() / row.path


def test_every_transfer_syntax_is_stored_bit_preserving(listener: Running, tmp_path: Path) -> None:
    # Several bundled files share UIDs: give each copy its own, keeping its encoding.
    paths = []
    for index, name in enumerate(FILES):
        ds = dcmread(_path(name))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = (
            f"1.2.826.0.1.3680043.8.498.{index + 10}"
        )
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or "1.2.826.0.1.3680043.8.498.9"
        ds.save_as(tmp_path / name)
        paths.append(tmp_path / name)
    jls = dcmread(_path("MR_small.dcm"))
    jls.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    jls.compress(JPEGLSLossless)
    jls.save_as(tmp_path / "jls.dcm")
    paths.append(tmp_path / "jls.dcm")

    assert _send_files(listener, paths) == [0x0000] * len(paths)

    for sent in paths:
        original = dcmread(sent)
        stored = _stored(listener, str(original.SOPInstanceUID))
        back = dcmread(stored)
        assert back.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert stored.parent.name == study_folder(str(original.StudyInstanceUID))
        # Bit-preserving: the dataset bytes after the file meta are the sender's.
        sent_bytes = sent.read_bytes()
        stored_bytes = stored.read_bytes()
        sent_offset = _dataset_offset(sent)
        assert stored_bytes[_dataset_offset(stored) :] == sent_bytes[sent_offset:]
        if "PixelData" in original and sent.name not in UNDECODABLE_HERE:
            assert (back.pixel_array == original.pixel_array).all()
    assert not listener.leftovers()


def _dataset_offset(path: Path) -> int:
    with path.open("rb") as f:
        ds = dcmread(f, stop_before_pixels=True)
        del ds
        f.seek(0)
        from pydicom.filereader import _read_file_meta_info, read_preamble

        read_preamble(f, False)
        _read_file_meta_info(f)
        return f.tell()


def test_synthetic_study_and_identifiers_indexed(listener: Running) -> None:
    datasets = make_cxr_study(7, rows=256, columns=256) + make_ct_series(
        7, slices=3, rows=64, columns=64
    )
    assoc = associate(
        listener.port,
        [(str(d.SOPClassUID), [str(d.file_meta.TransferSyntaxUID)]) for d in datasets],
    )
    statuses = [int(assoc.send_c_store(d, priority=1).Status) for d in datasets]
    assoc.release()
    assert statuses == [0] * 5
    with listener.database.sessions() as session:
        studies = session.scalars(select(Study).order_by(Study.id)).all()
    assert [s.instance_count for s in studies] == [2, 3]
    cxr = studies[0]
    assert cxr.patient_id == datasets[0].PatientID
    assert cxr.accession_number == datasets[0].AccessionNumber
    assert cxr.patient_name == str(datasets[0].PatientName)
    assert cxr.modalities == "DX"
    assert cxr.priority == 2  # request priority HIGH
    assert cxr.calling_ae_title == "TESTSCU"
    assert len(cxr.study_key) == 32 and cxr.study_key not in str(datasets[0].StudyInstanceUID)


@pytest.mark.parametrize("differ", [False, True], ids=["identical", "different-bytes"])
def test_duplicate_is_stored_once_first_copy_kept(
    start: StartListener, differ: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicom_listener.receiver")
    listener = start()
    ds = make_ct_series(9, slices=1, rows=32, columns=32)[0]
    first = write_study([ds], tmp_path / "a")[0]
    if differ:
        ds.StudyDescription = "EDITED"
    second = write_study([ds], tmp_path / "b")[0]
    statuses = _send_files(listener, [first]) + _send_files(listener, [second])
    assert statuses == [0, 0]
    stored = _stored(listener, str(ds.SOPInstanceUID))
    assert dcmread(stored).StudyDescription != "EDITED"
    with listener.database.sessions() as session:
        assert session.scalar(select(Study.instance_count)) == 1
        row = session.scalar(select(Instance))
    assert row is not None
    assert row.digest == "xxh128:" + xxhash.xxh3_128(stored.read_bytes()).hexdigest()
    assert not listener.leftovers()
    said = [r.getMessage() for r in caplog.records if "received again" in r.getMessage()]
    assert len(said) == 1
    if differ:
        assert "with different bytes" in said[0] and row.digest[:23] in said[0]
    else:
        assert "identical: stored once" in said[0]


def test_duplicate_of_an_older_fingerprint_is_not_compared(
    start: StartListener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An index made before XXH3-128 keeps BLAKE3 (or SHA-256) digests: a re-send
    # of such an instance is stored once, and the two digests are never compared.
    caplog.set_level(logging.INFO, logger="dicom_listener.receiver")
    listener = start()
    ds = make_ct_series(10, slices=1, rows=32, columns=32)[0]
    path = write_study([ds], tmp_path / "a")[0]
    assert _send_files(listener, [path]) == [0]
    older = "blake3:" + "0" * 64
    with listener.database.sessions() as session, session.begin():
        session.execute(update(Instance).values(digest=older))
    assert _send_files(listener, [path]) == [0]
    said = [r.getMessage() for r in caplog.records if "received again" in r.getMessage()]
    assert said == [
        f"instance {ds.SOPInstanceUID} received again: the first copy is kept "
        "(its digest is blake3, ours xxh128)"
    ]
    with listener.database.sessions() as session:
        assert session.scalar(select(Instance.digest)) == older


def _offered(listener: Running) -> list[tuple[str, list[str], object, object]]:
    return [
        (str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax], cx.scu_role, cx.scp_role)
        for cx in listener.handle.server.contexts
    ]


def test_associations_negotiate_on_the_servers_contexts_and_leave_them_as_they_were(
    listener: Running,
) -> None:
    """Each association gets the server's presentation contexts themselves (no deep
    copy); two negotiating different transfer syntaxes for one SOP class each get
    their own result, and the contexts offered afterwards are unchanged."""
    import copy

    server = listener.handle.server
    before = _offered(listener)
    shared = copy.deepcopy(server.contexts)
    assert all(a is b for a, b in zip(shared, server.contexts, strict=True))
    ct = make_ct_series(61, slices=1, rows=16, columns=16)[0]
    explicit = associate(listener.port, [(CT_CLASS, ["1.2.840.10008.1.2.1"])])
    implicit = associate(listener.port, [(CT_CLASS, ["1.2.840.10008.1.2"])])
    try:
        accepted = [
            [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts]
            for assoc in (explicit, implicit)
        ]
        assert accepted == [["1.2.840.10008.1.2.1"], ["1.2.840.10008.1.2"]]
        assert int(explicit.send_c_store(ct).Status) == 0x0000
    finally:
        explicit.release()
        implicit.release()
    assert _offered(listener) == before
