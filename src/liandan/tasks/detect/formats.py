"""Read detection labels: YOLO text files, COCO JSON, Pascal VOC XML.

Each reader returns a :class:`~liandan.tasks.detect.boxes.DetectionDataset` in the one
representation of :mod:`liandan.tasks.detect.boxes` (absolute pixel ``x1 y1 x2 y2``,
0-based class indices), and collects what it cannot read as problems instead of
stopping at the first: :func:`~liandan.tasks.detect.boxes.validate` lists them with the
box checks. Only a file the whole dataset hangs on (a COCO JSON that does not parse,
class names that contradict themselves) raises :class:`~liandan.errors.DataError`.

The formats, each in its own module:

- :mod:`~liandan.tasks.detect.yolo`: ``images/`` + ``labels/*.txt`` (``class cx cy w h``,
  fractions of the image size), names from ``data.yaml`` or ``classes.txt``;
- :mod:`~liandan.tasks.detect.coco`: one JSON of ``images``, ``annotations`` (``bbox``
  ``[x, y, w, h]`` in pixels, ``iscrowd``) and ``categories``;
- :mod:`~liandan.tasks.detect.voc`: ``Annotations/*.xml`` (1-based pixel corners) next to
  ``JPEGImages/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from liandan.tasks.detect.boxes import DetectionDataset
from liandan.tasks.detect.coco import read_coco
from liandan.tasks.detect.voc import read_voc
from liandan.tasks.detect.yolo import read_yolo

__all__ = ["read_coco", "read_detection", "read_voc", "read_yolo"]


def read_detection(path: str | Path, class_names: Sequence[str] | None = None) -> DetectionDataset:
    """Read a dataset in whichever format ``path`` is: a ``.json`` file is COCO, a
    folder with ``Annotations/`` is VOC, any other folder YOLO."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_coco(path)
    if (path / "Annotations").is_dir():
        return read_voc(path, class_names)
    return read_yolo(path, class_names)
