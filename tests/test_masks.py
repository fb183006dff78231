"""Masks as users have them: lossy files, colour and palette masks, classes.yaml types.

Every mask problem is a :class:`DataError` naming the file (or classes.yaml key) with a
hint, in ``liandan scan`` and in training alike; nothing is silently mapped wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_pairs, write_geotiff
from liandan.scan_report import scan


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANDAN_CACHE_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------ scan never crashes
def test_scan_lists_problems_when_no_mask_pairs_with_an_image(tmp_path: Path) -> None:
    """Every image unpaired: no mask to infer the classes from (was a StopIteration)."""
    root = make_pairs(tmp_path / "data", n=3)
    for mask in sorted((root / "masks").glob("*.png")):
        mask.rename(mask.with_name(f"other_{mask.name}"))
    report = scan(root)
    assert not report.ok
    kinds = {(p.kind, Path(p.file).name) for p in report.problems}
    assert ("unpaired", "img00.png") in kinds and ("unpaired", "other_img00.png") in kinds


def test_scan_of_images_and_label_pngs_does_not_crash(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "data", n=3)
    (root / "masks").rename(root / "labels")
    report = scan(root)  # paired or named as unpaired, never a traceback
    assert report.ok or report.problems


def test_scan_of_rasters_labelled_by_polygons(tmp_path: Path) -> None:
    """The documented polygon layout: images/<stem>.tif + labels/<stem>.geojson."""
    from rasterio.transform import from_origin

    root = tmp_path / "data"
    transform = from_origin(500_000, 4_000_000, 10.0, 10.0)
    image = np.random.default_rng(0).integers(0, 200, (3, 40, 40)).astype(np.uint8)
    write_geotiff(root / "images" / "scene.tif", image, transform=transform)
    x0, y0 = transform.c, transform.f

    def box(r0: int, r1: int, c0: int, c1: int) -> dict:
        ring = [(x0 + c * 10, y0 - r * 10) for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0))]
        return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}

    features = [
        {"type": "Feature", "geometry": box(5, 20, 5, 20), "properties": {"class": "field"}},
        {"type": "Feature", "geometry": box(25, 35, 5, 30), "properties": {"class": "water"}},
    ]
    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    (root / "labels").mkdir()
    (root / "labels" / "scene.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "crs": crs, "features": features})
    )
    report = scan(root)
    assert report.ok, report.problems
    assert not [p for p in report.problems if "scene.geojson" in p.file]
    assert report.fingerprint.classes == ["background", "field", "water"]
    assert report.fingerprint.class_images == {"field": 1, "water": 1}
