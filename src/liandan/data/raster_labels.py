"""Polygon labels of rasters: read from vector files, put on the image grid, mapped to classes.

``labels/<stem>.geojson`` (or ``.gpkg``/``.shp``, read with fiona) holds polygons whose
``data.label_attribute`` is the class: integer values, or names (classes sorted after a
``background`` class with ``data.unlabelled: background``). :func:`polygons_on_grid`
reprojects them from the layer's CRS to the raster's; polygons are then rasterized onto
each tile's window (:class:`~liandan.data.raster_tiles.RasterTiles`).

A layer's CRS: a GeoJSON's ``crs`` member, or without one WGS84 longitude/latitude
(RFC 7946) when its coordinates are longitudes and latitudes; a GeoPackage's or
shapefile's (``.prj``) spatial reference. A layer with no CRS over a georeferenced
raster, or one that does not overlap its raster, is an error naming both files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liandan.data.layouts import ClassSpec
from liandan.errors import DataError

VECTOR_EXTS = {".geojson", ".json", ".gpkg", ".shp"}
OVERLAP_GRID = 256  # polygons are checked to cover a pixel of this coarse grid of the raster

Polygons = list[tuple[dict[str, Any], Any]]  # (GeoJSON-like geometry, attribute value)


@dataclass
class PolygonLayer:
    """A vector label file: its polygons and CRS (None when it declares none)."""

    path: Path
    polygons: Polygons
    crs: Any = None  # rasterio.crs.CRS
    implied: bool = False  # the CRS is GeoJSON's default (RFC 7946), not declared
    refs: list[str] = field(default_factory=list)  # "feature N" of each polygon, for messages


def read_layer(path: Path, attribute: str, problems: list[str] | None = None) -> PolygonLayer:
    """The polygons and CRS of a GeoJSON, GeoPackage or shapefile.

    A feature without ``attribute`` is an error; with a ``problems`` list, it is
    described there instead (``feature N: ...``, N counting from 1 in the file's order),
    as is a feature without geometry, and reading goes on."""
    from rasterio.crs import CRS

    crs_text: str | None = None
    try:
        if path.suffix.lower() in (".geojson", ".json"):
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            features = data.get("features", [])
            member = data.get("crs") or {}
            crs_text = (member.get("properties") or {}).get("name") or None
        else:
            import fiona

            with fiona.open(path) as src:
                crs_text = src.crs_wkt or None
                features = [
                    {
                        "geometry": dict(f["geometry"]) if f["geometry"] else None,
                        "properties": dict(f["properties"]),
                    }
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
    out, refs = [], []
    for n, f in enumerate(features, start=1):
        props = f.get("properties") or {}
        if attribute not in props:
            if problems is not None:
                problems.append(f"feature {n}: no attribute {attribute!r} (it has {sorted(props)})")
                continue
            raise DataError(
                f"a feature has no attribute {attribute!r} (it has {sorted(props)})",
                where=path,
                hint="set data.label_attribute to the attribute that holds the class",
            )
        if f.get("geometry"):
            out.append((f["geometry"], props[attribute]))
            refs.append(f"feature {n}")
        elif problems is not None:
            problems.append(f"feature {n}: no geometry")
    layer = PolygonLayer(path, out, refs=refs)
    if crs_text:
        try:
            layer.crs = CRS.from_user_input(crs_text)
        except Exception as exc:
            raise DataError(
                f"cannot read the layer's CRS {crs_text[:80]!r} ({exc})",
                where=path,
                hint="write the layer again with a CRS, e.g. ogr2ogr -a_srs EPSG:<code>",
            ) from None
    elif path.suffix.lower() in (".geojson", ".json") and _lonlat(out):
        layer.crs, layer.implied = CRS.from_user_input("OGC:CRS84"), True
    return layer


def read_polygons(path: Path, attribute: str) -> Polygons:
    """``(geometry, attribute value)`` pairs from a GeoJSON, GeoPackage or shapefile."""
    return read_layer(path, attribute).polygons


def _coords(geom: dict[str, Any]) -> Any:
    """Every ``(x, y)`` of a geometry (collections included)."""
    if geom.get("type") == "GeometryCollection":
        for g in geom.get("geometries", []):
            yield from _coords(g)
        return
    stack = [geom.get("coordinates", [])]
    while stack:
        item = stack.pop()
        if item and isinstance(item[0], int | float):
            yield item
        else:
            stack.extend(item)


def _lonlat(polygons: Polygons) -> bool:
    """Every coordinate is a longitude/latitude (so a GeoJSON's RFC 7946 default fits)."""
    points = [p for geom, _ in polygons for p in _coords(geom)]
    return bool(points) and all(-180 <= p[0] <= 180 and -90 <= p[1] <= 90 for p in points)


def polygons_on_grid(layer: PolygonLayer, image: Path, src: Any) -> tuple[Polygons, str | None]:
    """The layer's polygons in the CRS of the raster ``src`` (open, at ``image``).

    Returns the reprojected polygons and a note (or None) for the run's notes.

    Raises:
        DataError: naming both files, when the layer has no CRS over a georeferenced
            raster, a CRS over a raster without one, or no polygon overlaps the raster.
    """
    from rasterio.warp import transform_geom

    path, note = layer.path, None
    if layer.crs is None and src.crs is not None:
        raise DataError(
            f"the polygons have no CRS, their raster {image} is in {_name(src.crs)}",
            where=path,
            hint="declare the layer's CRS (a GeoJSON 'crs' member, a .prj beside the "
            "shapefile), e.g. ogr2ogr -a_srs EPSG:<code> fixed.gpkg " + path.name,
        )
    if layer.crs is not None and src.crs is None:
        if not layer.implied:
            raise DataError(
                f"the polygons are in {_name(layer.crs)} but their raster {image} has no CRS",
                where=path,
                hint="georeference the raster (gdal_edit.py -a_srs / -a_ullr), or give "
                "the polygons in the raster's own coordinates without a CRS",
            )
        layer.crs = None  # a GeoJSON without a crs member over an ungeoreferenced raster
    polygons = layer.polygons
    if layer.crs is not None and layer.crs != src.crs:
        moved = []
        for geom, value in polygons:
            try:
                moved.append((transform_geom(layer.crs, src.crs, geom), value))
            except Exception:  # outside the target CRS's domain: it cannot overlap
                continue
        polygons = moved
        how = " (GeoJSON without a crs member: RFC 7946's WGS84)" if layer.implied else ""
        note = f"{path}: polygons reprojected from {_name(layer.crs)}{how} to {_name(src.crs)}"
    if layer.polygons and not _covers_a_pixel(polygons, src):
        crs = _name(layer.crs) if layer.crs is not None else "no CRS"
        raise DataError(
            f"no polygon overlaps their raster {image} (polygons in {crs}, "
            f"raster bounds {tuple(round(b, 2) for b in src.bounds)} in "
            f"{_name(src.crs) if src.crs is not None else 'pixel coordinates'})",
            where=path,
            hint="check the layer's CRS and that it labels this raster "
            "(its file name pairs it with the image of the same stem)",
        )
    return polygons, note


def _name(crs: Any) -> str:
    epsg = crs.to_epsg() if crs is not None else None
    return f"EPSG:{epsg}" if epsg else str(crs.to_string() or crs)


def _covers_a_pixel(polygons: Polygons, src: Any) -> bool:
    """Some polygon touches a pixel of the raster (on a grid of ``OVERLAP_GRID`` px)."""
    import math

    from rasterio.features import rasterize
    from rasterio.transform import Affine

    if not polygons:
        return False
    f = max(1, math.ceil(max(src.height, src.width) / OVERLAP_GRID))
    shape = (math.ceil(src.height / f), math.ceil(src.width / f))
    grid = rasterize(
        [(g, 1) for g, _ in polygons],
        out_shape=shape,
        transform=src.transform @ Affine.scale(f, f),
        fill=0,
        all_touched=True,
        dtype="uint8",
    )
    return bool(grid.any())


def polygon_classes(polygons: Polygons, unlabelled: str) -> ClassSpec:
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
