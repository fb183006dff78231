"""Detection labels: the YOLO, COCO and VOC readers, the checks naming every bad file
and line, and the box statistics. Each dataset is a few tiny files written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liandan.errors import DataError
from liandan.tasks.detect.boxes import ImageBoxes, box_stats, validate
from liandan.tasks.detect.formats import read_coco, read_detection, read_voc, read_yolo


def image(path: Path, width: int = 100, height: int = 80, orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.new("RGB", (width, height), (90, 120, 40)).save(path, exif=exif)
    return path


def text(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def found(problems, kind: str, file: Path | str) -> list[str]:
    """The reasons of the problems of one kind about one file."""
    return [p.reason for p in problems if p.kind == kind and Path(p.file) == Path(file)]


# ------------------------------------------------------------------ YOLO
def test_yolo_clean_dataset_with_background_images(tmp_path):
    image(tmp_path / "images/train/a.jpg", 64, 48)
    text(tmp_path / "labels/train/a.txt", "0 0.5 0.5 0.25 0.5\n1 0.25 0.25 0.5 0.5\n")
    image(tmp_path / "images/train/no_label.jpg")
    image(tmp_path / "images/val/empty.jpg")
    text(tmp_path / "labels/val/empty.txt", "\n")
    text(tmp_path / "data.yaml", "names:\n  0: cat\n  1: dog\n")
    ds = read_yolo(tmp_path)
    assert ds.class_names == ["cat", "dog"]
    by_name = {r.path.name: r for r in ds.images}
    a = by_name["a.jpg"]
    np.testing.assert_allclose(a.boxes, [[24, 12, 40, 36], [0, 0, 32, 24]])
    assert a.classes.tolist() == [0, 1] and a.refs == ["line 1", "line 2"]
    assert (a.width, a.height, a.split) == (64, 48, "train")
    assert len(by_name["no_label.jpg"].boxes) == 0 and len(by_name["empty.jpg"].boxes) == 0
    assert by_name["empty.jpg"].split == "val"
    assert validate(ds) == []  # background images are not problems


def test_yolo_every_bad_file_and_line_is_named(tmp_path):
    lbl = tmp_path / "labels"
    text(tmp_path / "classes.txt", "cat\ndog\n")
    cases = {
        "outside": "0 0.95 0.5 0.2 0.2\n",  # 100 px wide: right edge at 105
        "tolerated": "0 0.9 0.5 0.21 0.2\n",  # right edge at 100.5: within 1 px
        "empty": "0 0.5 0.5 0 0.1\n",
        "unknown": "1 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n",
        "unparseable": "0 0.5 abc 0.1 0.1\n0 0.5 0.5 0.1\n1.5 0.5 0.5 0.1 0.1\n0 0.5 0.5 inf 0.1\n",
        "duplicate": "1 0.5 0.5 0.2 0.2\n0 0.2 0.2 0.1 0.1\n1 0.5 0.5 0.2 0.2\n",
        "pixels": "0 50 40 20 20\n",
        "unreadable": b"\xff\xfe\x00\x81 not text",
    }
    for name, content in cases.items():
        image(tmp_path / f"images/{name}.png")
        text(lbl / f"{name}.txt", content)
    text(lbl / "ghost.txt", "0 0.5 0.5 0.1 0.1\n")
    text(tmp_path / "images/broken.jpg", b"not an image at all")
    ds = read_yolo(tmp_path)
    problems = validate(ds)

    outside = found(problems, "box-outside", lbl / "outside.txt")
    assert len(outside) == 1 and "line 1" in outside[0] and "right by 5 px" in outside[0]
    assert not [p for p in problems if Path(p.file) == lbl / "tolerated.txt"]
    assert "line 1" in found(problems, "empty-box", lbl / "empty.txt")[0]
    unknown = found(problems, "unknown-class", lbl / "unknown.txt")
    assert len(unknown) == 1 and "line 2: class id 7 (known: 0..1)" in unknown[0]
    bad = found(problems, "bad-label", lbl / "unparseable.txt")
    assert [r.split(":")[0] for r in bad] == ["line 1", "line 2", "line 3", "line 4"]
    assert "'abc' is not a number" in bad[0] and "4 values" in bad[1]
    assert "not an integer" in bad[2] and "not a finite number" in bad[3]
    assert found(problems, "duplicate-box", lbl / "duplicate.txt") == [
        "line 3 repeats line 1 (same class and box)"
    ]
    assert "not pixels" in found(problems, "box-outside", lbl / "pixels.txt")[0]
    assert found(problems, "unreadable", lbl / "unreadable.txt")
    assert "image left out" in found(problems, "unreadable", tmp_path / "images/broken.jpg")[0]
    assert "without an image" in found(problems, "unpaired", lbl / "ghost.txt")[0]
    # the image of an unreadable label file is left out, not taken for background
    assert "unreadable.png" not in {r.path.name for r in ds.images}
    severity = {p.kind: p.severity for p in problems}
    assert severity["duplicate-box"] == severity["unpaired"] == "warning"
    assert severity["box-outside"] == severity["bad-label"] == severity["unknown-class"] == "error"


def test_yolo_polygon_lines_become_their_bounding_box(tmp_path):
    image(tmp_path / "images/a.png", 100, 50)
    text(tmp_path / "labels/a.txt", "0 0.1 0.2 0.5 0.2 0.5 0.8 0.3 0.9\n")
    (rec,) = read_yolo(tmp_path).images
    np.testing.assert_allclose(rec.boxes, [[10, 10, 50, 45]])


def test_yolo_split_folders_holding_images_and_labels(tmp_path):
    # the Roboflow export: train/images + train/labels, valid/images + valid/labels
    image(tmp_path / "train/images/a.jpg")
    text(tmp_path / "train/labels/a.txt", "0 0.5 0.5 0.1 0.1\n")
    image(tmp_path / "valid/images/b.jpg")
    text(tmp_path / "valid/labels/b.txt", "2 0.5 0.5 0.1 0.1\n")
    ds = read_yolo(tmp_path)
    assert {r.path.name: r.split for r in ds.images} == {"a.jpg": "train", "b.jpg": "val"}
    assert ds.class_names == ["0", "1", "2"]  # no names given: numbered up to the largest id
    assert [len(r.boxes) for r in ds.images] == [1, 1]


def test_yolo_image_size_follows_exif_rotation(tmp_path):
    # a phone photo stored 100x80 and shown rotated: labels are fractions of 80x100
    image(tmp_path / "images/a.jpg", 100, 80, orientation=6)
    text(tmp_path / "labels/a.txt", "0 0.5 0.5 1.0 1.0\n")
    ds = read_yolo(tmp_path)
    (rec,) = ds.images
    assert (rec.width, rec.height) == (80, 100)
    np.testing.assert_allclose(rec.boxes, [[0, 0, 80, 100]])
    assert validate(ds) == []


def test_yolo_names_that_contradict_themselves_are_an_error(tmp_path):
    image(tmp_path / "images/a.jpg")
    text(tmp_path / "data.yaml", "nc: 3\nnames: [cat, dog]\n")
    with pytest.raises(DataError, match="'nc' is 3 but 'names' lists 2"):
        read_yolo(tmp_path)
    text(tmp_path / "data.yaml", "names: {0: cat, 2: dog}\n")
    with pytest.raises(DataError, match=r"class ids 0\.\.1"):
        read_yolo(tmp_path)


def test_yolo_without_images_folder_is_an_error(tmp_path):
    image(tmp_path / "pictures/a.jpg")
    with pytest.raises(DataError, match="no images found under an 'images' folder"):
        read_yolo(tmp_path)


# ------------------------------------------------------------------ COCO
def coco(tmp_path: Path, annotations: list, images: list | None = None) -> Path:
    if images is None:
        images = [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80},
        ]
        for entry in images:
            image(tmp_path / entry["file_name"])
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 5, "name": "dog"}, {"id": 1, "name": "cat"}],
    }
    return text(tmp_path / "instances.json", json.dumps(data))


def test_coco_clean_file(tmp_path):
    anns = [
        {"id": 10, "image_id": 1, "category_id": 5, "bbox": [10, 20, 30, 40], "iscrowd": 0},
        {
            "id": 11,
            "image_id": 1,
            "category_id": 1,
            "bbox": [0, 0, 100, 80],
            "iscrowd": 1,
            "area": 900,
        },
    ]
    ds = read_coco(coco(tmp_path, anns))
    assert ds.class_names == ["cat", "dog"]  # category ids 1, 5 -> indices 0, 1
    a, b = ds.images
    np.testing.assert_allclose(a.boxes, [[10, 20, 40, 60], [0, 0, 100, 80]])
    assert a.classes.tolist() == [1, 0] and a.iscrowd.tolist() == [False, True]
    assert a.areas is not None and a.areas.tolist() == [1200, 900]  # given area kept
    assert a.refs[0] == "annotation id 10 (image id 1)"
    assert len(b.boxes) == 0  # no annotation: background
    assert validate(ds) == []


def test_coco_every_bad_annotation_and_image_is_named(tmp_path):
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "missing.jpg", "width": 100, "height": 80},
        {"id": 3, "file_name": "wrong_size.jpg", "width": 640, "height": 480},
    ]
    image(tmp_path / "a.jpg")
    image(tmp_path / "wrong_size.jpg")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 9, "bbox": [10, 10, 5, 5]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 5]},
        {"id": 3, "image_id": 42, "category_id": 1, "bbox": [10, 10, 5, 5]},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [10, 10, -5, 5]},
        {"id": 5, "image_id": 1, "category_id": 5, "bbox": [90, 10, 20, 5]},
        {"id": 6, "image_id": 1, "category_id": 5, "bbox": [50, 50, 5, 5]},
        {"id": 7, "image_id": 1, "category_id": 5, "bbox": [50, 50, 5, 5]},
    ]
    path = coco(tmp_path, anns, images)
    problems = validate(read_coco(path))
    assert "annotation id 1 (image id 1): category_id 9 is not in 'categories' (1, 5)" in found(
        problems, "unknown-class", path
    )
    bad = found(problems, "bad-label", path)
    assert any(r.startswith("annotation id 2") and "not [x, y, w, h]" in r for r in bad)
    assert any(r.startswith("annotation id 3") and "image_id 42" in r for r in bad)
    assert found(problems, "empty-box", path)[0].startswith("annotation id 4 (image id 1)")
    assert "right by 10 px" in found(problems, "box-outside", path)[0]
    assert found(problems, "duplicate-box", path)[0].startswith(
        "annotation id 7 (image id 1) repeats annotation id 6"
    )
    assert found(problems, "missing-image", tmp_path / "missing.jpg")
    assert (
        "says 640x480, the file is 100x80"
        in found(problems, "size-mismatch", tmp_path / "wrong_size.jpg")[0]
    )


def test_coco_without_image_files_when_not_checked(tmp_path):
    images = [{"id": 1, "file_name": "elsewhere.jpg", "width": 320, "height": 240}]
    path = coco(
        tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}], images
    )
    ds = read_coco(path, check_images=False)
    assert (ds.images[0].width, ds.images[0].height) == (320, 240) and not ds.problems
    assert found(read_coco(path).problems, "missing-image", tmp_path / "elsewhere.jpg")


def test_coco_files_that_cannot_be_used_at_all(tmp_path):
    with pytest.raises(DataError, match="cannot read COCO JSON"):
        read_coco(text(tmp_path / "bad.json", "{not json"))
    with pytest.raises(DataError, match="no 'categories' list"):
        read_coco(text(tmp_path / "nocat.json", json.dumps({"images": [], "annotations": []})))
    cats = [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]
    with pytest.raises(DataError, match="bad categories") as err:
        read_coco(text(tmp_path / "twice.json", json.dumps({"images": [], "categories": cats})))
    assert "category id 1 given twice" in str(err.value)


# ------------------------------------------------------------------ VOC
def voc_xml(filename: str, objects: list[tuple[str, tuple, int]], size=(100, 80)) -> str:
    objs = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
        + "".join(
            f"<{tag}>{v}</{tag}>"
            for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
        )
        + "</bndbox></object>"
        for name, box, difficult in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>"
    )


def test_voc_clean_dataset(tmp_path):
    image(tmp_path / "JPEGImages/a.jpg")
    image(tmp_path / "JPEGImages/background.jpg")
    text(
        tmp_path / "Annotations/a.xml",
        voc_xml("a.jpg", [("dog", (1, 1, 100, 80), 0), ("cat", (11, 21, 40, 60), 1)]),
    )
    text(tmp_path / "ImageSets/Main/val.txt", "a\n")
    ds = read_voc(tmp_path)
    assert ds.class_names == ["cat", "dog"]  # every name used, sorted
    a, bg = ds.images
    # 1-based pixel indices: the whole image is [0, 0, W, H]
    np.testing.assert_allclose(a.boxes, [[0, 0, 100, 80], [10, 20, 40, 60]])
    assert a.classes.tolist() == [1, 0] and a.difficult.tolist() == [False, True]
    assert a.split == "val" and a.refs == ["object 1", "object 2"]
    assert bg.path.name == "background.jpg" and len(bg.boxes) == 0
    assert validate(ds) == []


def test_voc_every_bad_file_is_named(tmp_path):
    ann = tmp_path / "Annotations"
    for name in ("a", "b", "c"):
        image(tmp_path / f"JPEGImages/{name}.jpg")
    text(
        ann / "a.xml", voc_xml("a.jpg", [("cat", (1, 1, 10, 10), 0), ("horse", (1, 1, 10, 10), 0)])
    )
    text(ann / "b.xml", voc_xml("b.jpg", [("cat", (1, 1, "ten", 10), 0)], size=(640, 480)))
    text(ann / "c.xml", "<annotation><filename>c.jpg</filename>")
    text(ann / "ghost.xml", voc_xml("ghost.jpg", [("cat", (1, 1, 10, 10), 0)]))
    problems = validate(read_voc(tmp_path, class_names=["cat", "dog"]))
    assert found(problems, "unknown-class", ann / "a.xml") == [
        "object 2: class 'horse' is not one of ['cat', 'dog']"
    ]
    assert found(problems, "bad-label", ann / "b.xml") == [
        "object 1 ('cat'): <xmax> is 'ten', not a number"
    ]
    assert "<size> says 640x480, the image b.jpg is 100x80" in found(
        problems, "size-mismatch", ann / "b.xml"
    )
    assert "not readable XML" in found(problems, "unreadable", ann / "c.xml")[0]
    assert "without an image" in found(problems, "unpaired", ann / "ghost.xml")[0]


def test_read_detection_tells_the_format(tmp_path):
    image(tmp_path / "voc/JPEGImages/a.jpg")
    text(tmp_path / "voc/Annotations/a.xml", voc_xml("a.jpg", [("cat", (1, 1, 10, 10), 0)]))
    image(tmp_path / "yolo/images/a.jpg")
    path = coco(tmp_path / "coco", [])
    assert [read_detection(p).format for p in (tmp_path / "voc", tmp_path / "yolo", path)] == [
        "voc",
        "yolo",
        "coco",
    ]


# ------------------------------------------------------------------ records and statistics
def test_image_boxes_refuse_mismatched_arrays():
    with pytest.raises(ValueError, match="2 boxes but 1 class ids"):
        ImageBoxes(Path("a.jpg"), 10, 10, np.zeros((2, 4)), np.zeros(1))
    with pytest.raises(ValueError, match="iscrowd/difficult"):
        ImageBoxes(Path("a.jpg"), 10, 10, np.zeros((2, 4)), np.zeros(2), iscrowd=np.zeros(3))


def test_box_stats_counts_and_sizes():
    recs = [
        ImageBoxes(
            Path("a.jpg"),
            200,
            200,
            np.array([[0, 0, 10, 10], [0, 0, 40, 40], [0, 0, 100, 100]]),
            np.array([0, 0, 1]),
        ),
        ImageBoxes(
            Path("b.jpg"),
            200,
            200,
            np.array([[0, 0, 20, 5]]),
            np.array([0]),
            iscrowd=np.array([True]),
        ),
        ImageBoxes(Path("c.jpg"), 200, 200),
    ]
    stats = box_stats(recs, ["cat", "dog"])
    assert (stats["images"], stats["background_images"], stats["boxes"], stats["crowd_boxes"]) == (
        3,
        1,
        4,
        1,
    )
    assert stats["class_boxes"] == {"cat": 3, "dog": 1}
    assert stats["class_images"] == {"cat": 2, "dog": 1}
    assert stats["boxes_per_image"]["max"] == 3 and stats["boxes_per_image"]["median"] == 1
    # sqrt(area): 10, 40, 100, 10 -> small, medium, large, small
    assert stats["size_shares"] == {"small": 0.5, "medium": 0.25, "large": 0.25}
    assert stats["box_size"]["median"] == 25.0 and stats["box_size"]["max"] == 100.0
    assert stats["relative_size"]["max"] == 0.5
    assert stats["aspect_ratio"]["max"] == 4.0
    json.dumps(stats)  # plain values only
