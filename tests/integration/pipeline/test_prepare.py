"""prepare_study on spooled files: the right images, de-identified, nothing identifying out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from db.pipeline import InstanceRef, StudyInputs
from db.tables import StudyState
from flows.prepare import prepare_study
from prelim.synthetic import make_ct_series, make_cxr_study, write_study


def _inputs(paths: list[Path], key: str = "k" * 32) -> StudyInputs:
    import pydicom

    refs = []
    for n, path in enumerate(paths):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        refs.append(InstanceRef(f"i{n}", path, str(ds.SOPClassUID), str(ds.Modality)))
    return StudyInputs(key, 1, StudyState.READY, refs)


def test_cxr_study_sends_the_frontal_view_only(tmp_path: Path) -> None:
    paths = write_study(make_cxr_study(seed=5), tmp_path / "spool")
    prepared = prepare_study(_inputs(paths), tmp_path / "images")
    assert prepared.task == "cxr"
    assert prepared.skip_reason is None
    assert len(prepared.images) == 1 and len(prepared.image_files) == 1
    assert any("lateral" in why.lower() for _, why in prepared.skipped)
    png = Image.open(tmp_path / "images" / prepared.image_files[0])
    assert png.mode == "RGB" and max(png.size) <= 896
    assert np.asarray(png).std() > 5  # a real image, not a blank
    assert set(prepared.context) >= {"modality", "sex"}
    for value in prepared.context.values():
        assert value is None or len(str(value)) < 32


def test_ct_series_becomes_ordered_slices(tmp_path: Path) -> None:
    datasets = make_ct_series(seed=3, slices=12, rows=128, columns=128)
    paths = write_study(datasets[::-1], tmp_path / "spool")  # arrival order reversed
    prepared = prepare_study(_inputs(paths), tmp_path / "images")
    assert prepared.task == "ct"
    assert len(prepared.images) == 12
    assert all(im.mode == "RGB" for im in prepared.images)


def test_study_without_usable_images_is_skipped_with_reason(tmp_path: Path) -> None:
    datasets = make_cxr_study(seed=6)
    for ds in datasets:
        ds.BurnedInAnnotation = "YES"
    paths = write_study(datasets, tmp_path / "spool")
    prepared = prepare_study(_inputs(paths), tmp_path / "images")
    assert prepared.images == []
    assert prepared.skip_reason is not None and "burned" in prepared.skip_reason.lower()
