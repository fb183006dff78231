"""Polygon labels of rasters: read from vector files, mapped to classes.

``labels/<stem>.geojson`` (or, with fiona, ``.gpkg``/``.shp``) holds polygons whose
``data.label_attribute`` is the class: integer values, or names (classes sorted after a
``background`` class with ``data.unlabelled: background``). Polygons are rasterized onto
each tile's window (:class:`~liandan.data.raster_tiles.RasterTiles`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from liandan.data.layouts import ClassSpec
from liandan.errors import DataError

VECTOR_EXTS = {".geojson", ".json", ".gpkg", ".shp"}


def read_polygons(path: Path, attribute: str) -> list[tuple[dict[str, Any], Any]]:
    """``(geometry, attribute value)`` pairs from a GeoJSON (or, with fiona, GPKG/SHP)."""
    try:
        if path.suffix.lower() in (".geojson", ".json"):
            data = json.loads(path.read_text(encoding="utf-8"))
            features = data.get("features", [])
        else:
            import fiona

            with fiona.open(path) as src:
                features = [
                    {"geometry": dict(f["geometry"]), "properties": dict(f["properties"])}
                    for f in src
                ]
    except ImportError:
        raise DataError(
            "reading .gpkg/.shp labels needs the fiona package",
            where=path,
            hint="pip install fiona, or convert the labels to GeoJSON",
        ) from None
    except Exception as exc:
        raise DataError(f"cannot read polygons ({exc})", where=path) from None
    out = []
    for f in features:
        props = f.get("properties") or {}
        if attribute not in props:
            raise DataError(
                f"a feature has no attribute {attribute!r} (it has {sorted(props)})",
                where=path,
                hint="set data.label_attribute to the attribute that holds the class",
            )
        out.append((f["geometry"], props[attribute]))
    return out


def polygon_classes(polygons: list[tuple[dict[str, Any], Any]], unlabelled: str) -> ClassSpec:
    """Classes from polygon attributes: integer values, or names after a background class."""
    labels = {v for _, v in polygons}
    if all(isinstance(v, int) for v in labels):
        top = max(labels | {0})
        return ClassSpec([str(i) for i in range(top + 1)])
    names = sorted(str(v) for v in labels)
    if unlabelled == "background" and "background" not in names:
        names = ["background", *names]
    return ClassSpec(names)


def class_index(value: Any, classes: ClassSpec, where: Path) -> int:
    if isinstance(value, str) and value in classes.names:
        return classes.names.index(value)
    raw = classes.raw_values()
    if isinstance(value, int | float) and int(value) in raw:
        return raw.index(int(value))
    raise DataError(
        f"polygon class {value!r} is not one of the classes {classes.names}",
        where=where,
        hint="list it in classes.yaml, or fix the attribute",
    )
