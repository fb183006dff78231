"""`liandan scan`'s stray files: what the layout reads is not a stray, anything else is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from liandan.scan_report import scan


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _strays(root: Path) -> list[str]:
    report = scan(root, use_cache=False)
    assert report.fingerprint.task == "detect"
    return sorted(Path(p.file).relative_to(root).as_posix() for p in report.problems
                  if p.kind == "not-an-image")  # fmt: skip


def test_yolo_names_file_is_not_a_stray(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    for split in ("train", "val"):
        _image(root / "images" / split / "a.png")
        label = root / "labels" / split / "a.txt"
        label.parent.mkdir(parents=True)
        label.write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "data.yaml").write_text("names: [car, ship]\n")
    (root / "notes.bin").write_bytes(b"\x00\x01")
    assert _strays(root) == ["notes.bin"]
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("car\nship\n")
    assert _strays(root) == ["notes.bin"]


def test_coco_annotation_files_are_not_strays(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    for split in ("train", "val"):
        _image(root / "images" / f"{split}.png")
        coco = {
            "images": [{"id": 1, "file_name": f"{split}.png", "width": 32, "height": 32}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 8, 8], "iscrowd": 0}
            ],
            "categories": [{"id": 1, "name": "car"}],
        }
        path = root / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(coco))
    (root / "notes.json").write_text("{}")  # not COCO: not read
    assert _strays(root) == ["notes.json"]
