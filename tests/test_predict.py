"""Streaming raster prediction: agreement with whole-image inference, georeferencing,
nodata, coverage, bounded memory, band/dtype checks and the optional outputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from conftest import write_geotiff
from liandan.errors import DataError
from liandan.predict_outputs import RasterWriter, open_raster
from liandan.prediction import Predictor, predict
from liandan.runs import save_model_bundle
from liandan.tiling import FLUSH_ROWS

TRANSFORM = from_origin(500000, 4000000, 10.0, 10.0)


def write_raster(
    path: Path, arr: np.ndarray, *, nodata=None, crs="EPSG:32633", transform=TRANSFORM
):
    """Write ``(C, H, W)`` as a GeoTIFF."""
    return write_geotiff(path, arr, crs=crs, transform=transform, nodata=nodata)


def smooth_scene(rng: np.random.Generator, bands: int, height: int, width: int) -> np.ndarray:
    """uint16 bands with blob-like structure, so two classes each cover a large area."""
    small = rng.random((bands, height // 8 + 2, width // 8 + 2))
    big = np.kron(small, np.ones((8, 8)))[:, :height, :width]
    noise = rng.random((bands, height, width)) * 0.2
    return ((big + noise) * 10000).astype(np.uint16)


class ConvNet(torch.nn.Module):
    """A fixed, seeded 2-class network with a 13-pixel receptive field."""

    def __init__(self, bands: int, classes: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(bands, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=3, dilation=3),
            torch.nn.Tanh(),
            torch.nn.Conv2d(8, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def meta(bands: int, *, classes: int = 2, dtype: str = "uint16", **extra) -> dict:
    return {
        "task": "segment",
        "classes": [f"c{i}" for i in range(classes)],
        "values": None,
        "colors": [[i % 256, 0, 0] for i in range(classes)],
        "in_channels": bands,
        "bands": None,
        "dtype": dtype,
        "normalization": {"preset": "dataset", "mean": [5000.0] * bands, "std": [3000.0] * bands},
        "tile_size": 64,
        **extra,
    }


def balanced_predictor(image: np.ndarray, **kwargs) -> Predictor:
    """A ConvNet scaled so its logit margin has std 4 and split at the median on this
    image: two classes about half each, few pixels near the decision boundary."""
    bands = image.shape[0]
    model = ConvNet(bands)
    predictor = Predictor(model, meta(bands), device="cpu", **kwargs)
    x = torch.from_numpy(predictor.prepare(np.moveaxis(image, 0, -1)).transpose(2, 0, 1))[None]
    last = model.body[-1]
    with torch.no_grad():
        margin = (lambda out: out[0, 1] - out[0, 0])(model(x))
        last.weight *= 4 / float(margin.std())
        last.bias *= 4 / float(margin.std())
        margin = (lambda out: out[0, 1] - out[0, 0])(model(x))
        last.bias[1] -= float(margin.median())
    return predictor


def stream_to(predictor: Predictor, src_path: Path, target: Path) -> Predictor:
    with open_raster(src_path) as src:
        writer = RasterWriter(src, predictor, target)
    with writer:
        predictor.predict_raster(src_path, writer)
    return predictor


def test_tiled_prediction_agrees_with_whole_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # uint16, 7 bands, 2.5 x 2 tiles; a stride multiple, so the whole-image pass is not
    # padded past the edges (padding conventions would differ there, not blending)
    image = smooth_scene(rng, 7, 160, 128)
    scene = write_raster(tmp_path / "scene.tif", image)
    tiled = stream_to(balanced_predictor(image, tile=64), scene, tmp_path / "tiled.tif")
    whole = balanced_predictor(image, tile=160)  # one pass over the whole image
    expected = whole.predict_file(scene).labels
    with rasterio.open(tmp_path / "tiled.tif") as out:
        got = out.read(1)
    assert tiled.stats.tiles > 4  # really tiled
    assert min((expected == c).mean() for c in (0, 1)) >= 0.10  # two classes >= 10% each
    assert (got == expected).mean() >= 0.995


def test_output_keeps_georeferencing_nodata_exact_and_covers_every_valid_pixel(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(1)
    image = smooth_scene(rng, 3, 101, 77)
    image[:, :40, :] = 0  # a nodata collar on top: whole tile rows of nodata
    image[:, :, :5] = 0
    image[:, 60:63, 30:33] = 0  # nodata hole inside
    scene = write_raster(tmp_path / "scene.tif", image, nodata=0)
    predictor = stream_to(balanced_predictor(image, tile=32), scene, tmp_path / "out.tif")
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "out.tif") as out:
        assert out.crs == src.crs and out.transform == src.transform
        assert (out.width, out.height) == (77, 101) and out.nodata == 255
        assert out.profile["compress"] == "deflate"
        valid = src.dataset_mask() > 0
        values = out.read(1)
    assert ((values == 255) == ~valid).all()  # nodata exactly where the input has none
    assert set(np.unique(values[valid])) <= {0, 1}
    assert predictor.stats.skipped > 0  # tiles entirely in the collar were not predicted
    assert (tmp_path / "preview" / "out.png").is_file()


def test_mask_band_marks_nodata_with_flip_tta(tmp_path: Path) -> None:
    image = smooth_scene(np.random.default_rng(2), 3, 40, 50)
    scene = write_raster(tmp_path / "scene.tif", image)
    mask = np.full((40, 50), 255, np.uint8)
    mask[10:20, 10:30] = 0
    with rasterio.open(scene, "r+") as dst:
        dst.write_mask(mask)
    stream_to(balanced_predictor(image, tile=32, tta=True), scene, tmp_path / "out.tif")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert ((out.read(1) == 255) == (mask == 0)).all()


def test_the_training_nodata_value_is_nodata_in_prediction_too(tmp_path: Path) -> None:
    image = smooth_scene(np.random.default_rng(4), 3, 40, 50)
    image[:, :, :6] = 0  # an undeclared collar of zeros
    scene = write_raster(tmp_path / "scene.tif", image)  # no nodata tag
    predictor = balanced_predictor(image, tile=32)
    predictor.meta["nodata"] = 0  # as model.json records data.nodata=0
    stream_to(predictor, scene, tmp_path / "out.tif")
    with rasterio.open(tmp_path / "out.tif") as out:
        values = out.read(1)
    assert (values[:, :6] == 255).all() and (values[:, 6:] != 255).all()


def test_an_alpha_band_is_read_as_the_valid_mask_not_as_data(tmp_path: Path) -> None:
    image = smooth_scene(np.random.default_rng(3), 3, 40, 50)
    alpha = np.full((1, 40, 50), 65535, np.uint16)
    alpha[0, :, :8] = 0  # a transparent collar
    scene = write_raster(tmp_path / "rgba.tif", np.concatenate([image, alpha]))
    with rasterio.open(scene, "r+") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    predictor = balanced_predictor(image, tile=32)  # trained on 3 bands
    stream_to(predictor, scene, tmp_path / "out.tif")
    with rasterio.open(tmp_path / "out.tif") as out:
        values = out.read(1)
    assert (values[:, :8] == 255).all() and (values[:, 8:] != 255).all()
    # a fourth band that is not alpha is still refused
    plain = write_raster(tmp_path / "four.tif", np.concatenate([image, image[:1]]))
    with pytest.raises(DataError, match="4 band"):
        stream_to(balanced_predictor(image, tile=32), plain, tmp_path / "out2.tif")
    # a model trained before alpha bands were masks (alpha as a 4th input) still predicts
    old = Predictor(ConvNet(4), meta(4), device="cpu", tile=32)
    with rasterio.open(scene) as src:
        assert old.check_raster(src, scene) == [1, 2, 3, 4]


@pytest.mark.parametrize("height", [300, 1200])
def test_accumulators_hold_tile_plus_one_block_of_rows_whatever_the_height(
    tmp_path: Path, height: int
) -> None:
    image = np.full((1, height, 40), 5000, np.uint16)
    scene = write_raster(tmp_path / "tall.tif", image)
    predictor = Predictor(ConvNet(1), meta(1), device="cpu", tile=32, batch_size=16)
    seen: list[int] = []
    with open_raster(scene) as src:
        writer = RasterWriter(src, predictor, tmp_path / "out.tif")
    original = writer.write

    def spy(top: int, probs: np.ndarray, valid: np.ndarray, left: int = 0) -> None:
        seen.append(probs.shape[1])
        original(top, probs, valid, left)

    writer.write = spy  # type: ignore[method-assign]
    with writer:
        predictor.predict_raster(scene, writer)
    assert predictor.stats.buffer_rows == 32 + FLUSH_ROWS  # not the height
    assert predictor.stats.peak_rows <= 32 + FLUSH_ROWS
    assert max(seen) <= FLUSH_ROWS + 32 and sum(seen) == height  # each row written once


def test_refuses_other_band_counts_and_dtypes_and_warns_on_pixel_size(
    tmp_path: Path, caplog
) -> None:
    predictor = Predictor(ConvNet(7), meta(7, pixel_size=[10.0, 10.0]), device="cpu", tile=32)
    three = write_raster(tmp_path / "three.tif", np.zeros((3, 32, 32), np.uint16))
    with pytest.raises(DataError, match="3 band"):
        stream_to(predictor, three, tmp_path / "a.tif")
    floats = write_raster(tmp_path / "float.tif", np.zeros((7, 32, 32), np.float32))
    with pytest.raises(DataError, match="floating point"):
        stream_to(predictor, floats, tmp_path / "b.tif")
    assert not (tmp_path / "b.tif").exists()
    coarse = write_raster(
        tmp_path / "coarse.tif",
        np.zeros((7, 32, 32), np.int16),  # int16 is the same family as uint16
        transform=from_origin(0, 0, 30.0, 30.0),
    )
    with caplog.at_level(logging.WARNING, logger="liandan"):
        stream_to(predictor, coarse, tmp_path / "c.tif")
    assert "pixel size" in caplog.text and (tmp_path / "c.tif").is_file()


def test_more_than_254_classes_write_uint16_with_nodata_65535(tmp_path: Path) -> None:
    image = smooth_scene(np.random.default_rng(3), 1, 40, 40)
    image[:, :4] = 0
    scene = write_raster(tmp_path / "scene.tif", image, nodata=0)
    predictor = Predictor(ConvNet(1, 300), meta(1, classes=300), device="cpu", tile=32)
    stream_to(predictor, scene, tmp_path / "out.tif")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.dtypes[0] == "uint16" and out.nodata == 65535
        values = out.read(1)
    assert (values[:4] == 65535).all() and (values[4:] < 300).all()


def make_run(run: Path, bands: int) -> Path:
    """A run folder holding a fixed ConvNet-like built-in model (segnet, random weights)."""
    from liandan.config import ModelConfig
    from liandan.models import build_model

    model_cfg = ModelConfig(arch="segnet")
    model = build_model(model_cfg, task="segment", num_classes=2, in_channels=bands)
    info = meta(bands, arch="segnet", encoder="none", model=model_cfg.model_dump(mode="json"))
    save_model_bundle(run, model.state_dict(), info)
    return run


def test_predict_writes_probabilities_polygons_and_cog(tmp_path: Path) -> None:
    image = smooth_scene(np.random.default_rng(4), 3, 70, 90)
    image[:, :, :10] = 0
    scene = write_raster(tmp_path / "scene.tif", image, nodata=0)
    run = make_run(tmp_path / "run", 3)
    out = tmp_path / "maps"
    result = predict(
        run, [scene], out=out, tile=32, probs=True, vector="geojson", cog=True, progress=True
    )
    assert result.predictions[0].output == out / "scene.tif"
    with rasterio.open(out / "scene.tif") as classes, rasterio.open(out / "scene_probs.tif") as p:
        assert classes.transform == TRANSFORM and p.count == 2 and p.dtypes[0] == "uint8"
        probs = p.read().astype(int)
        valid = classes.read(1) != 255
        assert classes.overviews(1) or classes.height < 512  # COG: overviews when large
    assert (probs[:, ~valid] == 255).all()
    assert np.abs(probs[:, valid].sum(0) - 254).max() <= 2  # probabilities sum to 1
    collection = json.loads((out / "scene.geojson").read_text())
    names = {f["properties"]["class"] for f in collection["features"]}
    assert names and names <= {"c0", "c1"}
    area = sum(f["properties"]["area_px"] for f in collection["features"])
    assert area == pytest.approx(valid.sum())  # polygons cover exactly the valid pixels
    big = predict(run, [scene], out=tmp_path / "big", tile=32, vector="geojson", min_area=1e9)
    assert json.loads(big.files[-1].read_text())["features"] == []


def test_a_truncated_raster_is_a_data_error_and_leaves_no_output(tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "scene.tif", np.ones((3, 200, 200), np.uint16))
    data = scene.read_bytes()
    scene.write_bytes(data[: len(data) // 2])
    predictor = Predictor(ConvNet(3), meta(3), device="cpu", tile=32)
    with pytest.raises(DataError, match="cannot read rows"):
        stream_to(predictor, scene, tmp_path / "out.tif")
    assert [p.name for p in tmp_path.iterdir()] == ["scene.tif"]


def test_bf16_prediction_runs_under_autocast_and_agrees_with_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = smooth_scene(rng, 3, 96, 96)
    scene = write_raster(tmp_path / "scene.tif", image)
    fp32 = stream_to(balanced_predictor(image, tile=64), scene, tmp_path / "fp32.tif")
    bf16 = stream_to(
        balanced_predictor(image, tile=64, precision="bf16"), scene, tmp_path / "bf16.tif"
    )
    assert fp32.autocast is None and bf16.autocast is torch.bfloat16
    x = np.moveaxis(image, 0, -1)
    p32, p16 = fp32.predict_array(x), bf16.predict_array(x)
    assert p16.dtype == np.float32  # softmax in float32 whatever the autocast dtype
    # bf16 keeps 8 bits of mantissa: the probabilities move (autocast really ran) ...
    assert 1e-4 < np.abs(p32 - p16).max() < 0.05
    # ... and the maps agree but for pixels at the decision boundary
    with rasterio.open(tmp_path / "fp32.tif") as a, rasterio.open(tmp_path / "bf16.tif") as b:
        assert (a.read(1) == b.read(1)).mean() >= 0.99


def test_precision_auto_is_bf16_or_fp16_on_a_gpu_and_float32_on_the_cpu(monkeypatch) -> None:
    from liandan.errors import ConfigError
    from liandan.prediction import inference_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert inference_dtype("auto", cpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert inference_dtype("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert inference_dtype("auto", cuda) is torch.float16
    assert inference_dtype("32", cuda) is None
    assert inference_dtype("bf16", cpu) is torch.bfloat16
    assert inference_dtype("16", cuda) is torch.float16
    assert inference_dtype("bf16", cuda, exported=True) is None  # exports run as exported
    with pytest.raises(ConfigError, match="needs a GPU"):
        inference_dtype("16", cpu)
    with pytest.raises(ConfigError, match=r"predict\.precision: unknown precision"):
        inference_dtype("fp8", cpu)


def test_the_cli_names_a_damaged_raster_once_without_gdal_noise_or_an_empty_folder(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    scene = write_raster(tmp_path / "scene.tif", np.ones((3, 200, 200), np.uint16))
    data = scene.read_bytes()
    scene.write_bytes(data[: len(data) // 2])
    run = make_run(tmp_path / "run", 3)
    cmd = [sys.executable, "-m", "liandan.cli", "predict", str(run), str(scene)]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr
    assert "data error" in done.stderr and "scene.tif: cannot read rows" in done.stderr
    assert "GDAL signalled" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # no empty output folder left behind
    (tmp_path / "out2").mkdir()  # a folder that was there stays
    debug = subprocess.run(
        [*cmd, "--out", str(tmp_path / "out2"), "--debug"], capture_output=True, text=True
    )
    assert "GDAL signalled" in debug.stderr and "Traceback" in debug.stderr  # all of it
    assert (tmp_path / "out2").is_dir()
