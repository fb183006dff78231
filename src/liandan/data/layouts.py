"""Find the samples of a dataset in each supported folder layout.

A layout turns a folder into a :class:`DatasetIndex`: the task, the classes, and a list
of samples (image path, label or mask path, split). :func:`find_samples` detects the
layout from the folder names (:mod:`liandan.data.folders`; an ambiguous folder is an
error listing the readings) and runs its finder (:mod:`liandan.data.finders`, a
registry). Problems a user can fix (missing folder, image without mask, empty class)
are :class:`DataError`s that list every offending file, not just the first.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liandan.data.folders import detect
from liandan.errors import ConfigError, DataError
from liandan.tasks import get_task

# Distinct colours for previews when classes.yaml gives none (tab10-like, then grey ramp).
DEFAULT_COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def default_colors(n: int) -> list[tuple[int, int, int]]:
    colors = list(DEFAULT_COLORS[:n])
    for i in range(len(colors), n):
        v = int(40 + (i * 97) % 200)
        colors.append((v, (v * 7) % 256, (v * 13) % 256))
    return colors


@dataclass
class ClassSpec:
    """The classes of a dataset and how they are stored in mask files.

    Attributes:
        names: class names, in class-index order.
        values: raw mask value of each class (e.g. ``[0, 255]``); None means the mask
            values are the class indices themselves.
        colors: RGB colour of each class, for previews and colour masks.
        ignore_index: raw mask value excluded from loss and metrics, or for colour
            masks an ``(r, g, b)`` colour; None: nothing ignored.
        color_masks: masks are RGB images mapped through ``colors``.
        by_color: classes.yaml gives ``colors`` and no ``values``: the masks mark
            classes by colour, so palette PNGs are read by their colours, not by their
            palette indices (whose order differs from file to file).
        snap_lossy: lossy mask files (JPEG, lossy WebP) are snapped to the nearest
            class value or colour (``data.lossy_masks: nearest``).
        source: the name of the file that declared the classes (``classes.yaml``, or a
            class list JSON), for messages.
    """

    names: list[str]
    values: list[int] | None = None
    colors: list[tuple[int, int, int]] = field(default_factory=list)
    ignore_index: int | tuple[int, int, int] | None = None
    color_masks: bool = False
    by_color: bool = False
    snap_lossy: bool = False
    source: str = "classes.yaml"  # the file that declared the classes, for messages

    def __post_init__(self) -> None:
        if not self.colors:
            self.colors = default_colors(len(self.names))
        if isinstance(self.ignore_index, list):  # a colour, as model.json stores it
            self.ignore_index = tuple(int(c) for c in self.ignore_index)  # type: ignore[assignment]

    @property
    def ignore_color(self) -> tuple[int, int, int] | None:
        """The ignored colour of colour masks, or None."""
        return self.ignore_index if isinstance(self.ignore_index, tuple) else None

    @property
    def palette_colors(self) -> bool:
        """Palette PNG masks are read by their colours (else by their palette indices)."""
        return self.color_masks or self.by_color

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def raw_values(self) -> list[int]:
        """The value written to mask files for each class index."""
        return list(self.values) if self.values is not None else list(range(len(self.names)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "values": self.values,
            "colors": [list(c) for c in self.colors],
            "ignore_index": list(c) if (c := self.ignore_color) else self.ignore_index,
            "color_masks": self.color_masks,
            "by_color": self.by_color,
        }


@dataclass(frozen=True)
class Sample:
    """One item: an image and its class index (classify), its mask file (segment), or
    the position of its boxes in ``index.source.images`` (detect). ``window``
    (``col_off, row_off, width, height``) makes the item one window of the image (a
    large raster cut into detection windows): its pixels are that window's."""

    image: Path
    target: int | Path
    split: str | None = None
    window: tuple[int, int, int, int] | None = None


@dataclass
class DatasetIndex:
    """Everything found in a dataset folder."""

    root: Path
    task: str
    layout: str
    classes: ClassSpec
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)  # things the user should be told
    skipped: list[str] = field(default_factory=list)  # files left out (on_error: skip)
    # (kind, file, reason) found while indexing with strict=False (for `liandan scan`)
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    # what a task's own reader found beyond the samples, checked when the data is loaded
    # (detection: the DetectionDataset, whose problems name each file and line)
    source: Any = None

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    @property
    def has_splits(self) -> bool:
        return any(s.split is not None for s in self.samples)


# ------------------------------------------------------------------ classes.yaml
def read_classes_yaml(root: Path) -> dict[str, Any] | None:
    """The dataset's classes.yaml (in DATA or its parent), checked, or None.

    Every key of the wrong type is an error naming it
    (:func:`~liandan.data.classes_yaml.check_classes_yaml`).
    """
    import yaml

    from liandan.data.classes_yaml import check_classes_yaml

    for folder in (root, root.parent):
        path = folder / "classes.yaml"
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
            except yaml.YAMLError as exc:
                raise DataError(f"not valid YAML: {exc}", where=path) from None
            data = check_classes_yaml(data, path)
            data["_path"] = path
            return data
    return read_class_list_json(root) if root.is_dir() else None


HEX_DIGITS = set("0123456789abcdefABCDEF")


def read_class_list_json(root: Path) -> dict[str, Any] | None:
    """Classes by colour from a JSON file in DATA laid out as Supervisely's ``meta.json``
    (``{"classes": [{"title": "Water", "color": "#50E3C2", ...}, ...]}``; published
    datasets ship it as ``meta.json`` or ``classes.json``), as classes.yaml's mapping
    (``names``, ``colors``, ``_path``), or None when there is no such file.

    Read only without a classes.yaml. Its colours are checked against the masks like
    those of a classes.yaml: a colour of the masks that is no listed class, or a listed
    class whose colour occurs in no mask, is named before training starts.
    """
    import json

    from liandan.data.classes_yaml import check_classes_yaml

    for path in sorted(root.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError):
            continue
        entries = data.get("classes") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            continue
        names, colors = [], []
        for entry in entries:
            title = entry.get("title") if isinstance(entry, dict) else None
            color = entry.get("color") if isinstance(entry, dict) else None
            hexa = color.removeprefix("#") if isinstance(color, str) else ""
            if not isinstance(title, str) or len(hexa) != 6 or not set(hexa) <= HEX_DIGITS:
                break
            names.append(title)
            colors.append([int(hexa[:2], 16), int(hexa[2:4], 16), int(hexa[4:], 16)])
        else:
            checked = check_classes_yaml({"names": names, "colors": colors}, path)
            return {**checked, "_path": path}
    return None


def class_spec_from_yaml(data: dict[str, Any], ignore_index: int | None) -> ClassSpec:
    """The classes a checked classes.yaml declares; ``ignore_index`` (config) wins."""
    values = data.get("values")
    colors = data.get("colors")
    return ClassSpec(
        names=list(data["names"]),
        values=[int(v) for v in values] if values is not None else None,
        colors=list(colors) if colors else [],
        ignore_index=data.get("ignore_index") if ignore_index is None else ignore_index,
        # colours without values: the masks mark classes by colour (palette PNGs too)
        by_color=bool(colors) and values is None,
        source=data["_path"].name if "_path" in data else "classes.yaml",
    )


# ------------------------------------------------------------------ finding
def _require_dir(path: Path) -> None:
    if not path.exists():
        raise DataError("folder not found", where=path, hint="check the DATA path")
    if not path.is_dir():
        raise DataError("not a folder", where=path, hint="DATA must be a dataset folder")


def detect_layout(root: Path, task: str | None = None) -> str:
    """The layout of a dataset folder; an ambiguous folder is an error listing the readings.

    The answer is a layout name, or ``pairs:IMAGES/MASKS`` for image and mask folders
    whose names liandan does not know but whose files pair up by name.
    """
    _require_dir(root)
    return detect(root, task)


def _parse_layout(layout: str) -> tuple[str, tuple[str, str] | None]:
    """``pairs:imgs/gt`` -> ("pairs", ("imgs", "gt")); a plain name -> (name, None)."""
    from liandan.data.finders import LAYOUTS  # finders import this module

    name, _, folders = layout.partition(":")
    if name == "pairs" and folders:
        images, _, masks = folders.partition("/")
        if images and masks and "/" not in masks:
            return name, (images, masks)
    if folders or name not in LAYOUTS:
        raise ConfigError(
            f"unknown layout {layout!r}",
            where="data.layout",
            hint=f"one of: auto, {', '.join(LAYOUTS)}, or pairs:IMAGES/MASKS to name the "
            "image and mask folders (e.g. pairs:imgs/annotations)",
        )
    return name, None


def classes_from_yaml(index: DatasetIndex, root: Path, ignore_index: int | None) -> None:
    """Mask classes: from ``classes.yaml``, else inferred from the masks later.

    ``classes.yaml`` always wins, also over a layout's own classes (VOC's 21); without
    one, VOC keeps its own and other layouts' classes are read from the masks.
    """
    yaml_data = read_classes_yaml(root)
    if yaml_data is not None:
        layout_ignore = index.classes.ignore_index if ignore_index is None else ignore_index
        index.classes = class_spec_from_yaml(yaml_data, ignore_index)
        if index.classes.ignore_index is None:  # neither config nor yaml: the layout's
            index.classes.ignore_index = layout_ignore
        index.notes.append(f"classes from {yaml_data['_path']}")
    elif index.layout != "voc":
        index.classes = ClassSpec([], ignore_index=ignore_index)  # inferred from masks


def find_samples(
    root: str | Path,
    layout: str = "auto",
    task: str | None = None,
    ignore_index: int | None = None,
    strict: bool = True,
    data: Any = None,
) -> DatasetIndex:
    """Index a dataset folder.

    Args:
        root: the dataset folder.
        layout: a layout name, ``pairs:IMAGES/MASKS``, or ``auto`` to detect it.
        task: expected task; an explicit mismatch with the layout is an error.
        ignore_index: raw mask value to ignore (overrides classes.yaml).
        strict: False collects unpaired images/masks and empty class folders into
            ``index.problems`` instead of raising (``liandan scan`` and training list
            them with every other problem).
        data: the config's ``data`` section (a ``DataConfig``), for layouts that read
            more of it (``vector-boxes``: the label attribute, point boxes, windows and
            the split); None: its defaults.

    >>> index = find_samples("data/")  # doctest: +SKIP
    >>> index.task, index.layout, len(index.samples)  # doctest: +SKIP
    ('segment', 'pairs', 120)
    """
    root = Path(root)
    _require_dir(root)
    from liandan.data.finders import LAYOUTS, find_pairs

    name, folders = _parse_layout(detect_layout(root, task) if layout == "auto" else layout)
    find, layout_task = LAYOUTS[name]
    if task is not None and task != layout_task:
        raise ConfigError(
            f"task is {task!r} but {root} has the {name} layout, which is for {layout_task}",
            where="task",
            hint=f"set task={layout_task}, or arrange the data in a {task} layout",
        )
    if name == "pairs":
        find = functools.partial(find_pairs, strict=strict, folders=folders)
    elif not strict and name == "imagefolder":
        find = functools.partial(find, strict=False)  # type: ignore[call-arg]
    elif name == "vector-boxes":
        find = functools.partial(find, data=data)  # type: ignore[call-arg]
    index = find(root, ignore_index)
    if folders is not None:  # as the config says it, so plan.yaml and runs read it again
        index.layout = f"pairs:{folders[0]}/{folders[1]}"
    # the task settles the classes (segmentation: classes.yaml beside the data)
    get_task(index.task).prepare_classes(index, root, ignore_index)
    return index
