"""Export to ONNX / TorchScript, parity with eager PyTorch, predict from the bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from conftest import FAST_CLS, FAST_SEG, make_imagefolder, make_pairs
from liandan.api import train
from liandan.cli import main
from liandan.errors import CheckpointError
from liandan.exporting import TOLERANCE, export
from liandan.prediction import predict


@pytest.fixture(scope="module")
def seg_run(module_tmp: Path) -> Path:
    root = module_tmp / "seg"
    data = make_pairs(root / "data", n=8)
    return train(data, None, [*FAST_SEG, "train.epochs=1"], out=root / "runs").run_dir


@pytest.fixture(scope="module")
def cls_run(module_tmp: Path) -> Path:
    root = module_tmp / "cls"
    data = make_imagefolder(root / "data")
    return train(data, None, [*FAST_CLS, "train.epochs=1"], out=root / "runs").run_dir


def _scene(path: Path) -> Path:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (3, 150, 130), dtype=np.uint8)
    arr[:, :, :12] = 0  # a nodata collar
    profile = dict(driver="GTiff", width=130, height=150, count=3, dtype="uint8",
                   crs="EPSG:32633", transform=from_origin(500000, 4000000, 1, 1), nodata=0)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_segmentation_export_matches_the_run(seg_run: Path, fmt: str, tmp_path: Path) -> None:
    result = export(seg_run, fmt, out=tmp_path / "bundle")
    assert result.model_file.is_file() and len(result.max_abs_diff) == 2
    assert all(d <= TOLERANCE for d in result.max_abs_diff.values())
    meta = json.loads((tmp_path / "bundle" / "model.json").read_text())
    assert meta["export"]["format"] == fmt and meta["classes"] == ["0", "1", "2"]
    assert meta["export"]["input"]["shape"] == ["batch", 3, "height", "width"]
    scene = _scene(tmp_path / "scene.tif")
    a = predict(seg_run, [scene], out=tmp_path / "from_run", tile=64)
    b = predict(tmp_path / "bundle", [scene], out=tmp_path / "from_export", tile=64)
    with rasterio.open(a.files[0]) as ra, rasterio.open(b.files[0]) as rb:
        va, vb = ra.read(1), rb.read(1)
        assert rb.crs == ra.crs and rb.transform == ra.transform and rb.nodata == ra.nodata
    assert (va == vb).mean() >= 0.999
    assert (vb[:, :12] == 255).all()  # nodata kept


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_classification_export_predicts_like_the_run(
    cls_run: Path, fmt: str, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    assert main(["export", str(cls_run), "--format", fmt, "--out", str(bundle)]) == 0
    folder = cls_run.parent.parent / "data" / "cat"
    a = predict(cls_run, [folder], out=tmp_path / "a")
    b = predict(bundle, [folder], out=tmp_path / "b")
    assert len(a.predictions) == 6
    assert [p.labels for p in a.predictions] == [p.labels for p in b.predictions]
    pairs = zip(a.predictions, b.predictions, strict=True)
    assert max(float(np.abs(p.probs - q.probs).max()) for p, q in pairs) <= TOLERANCE


@pytest.mark.slow
def test_predicting_from_an_onnx_export_imports_no_training_stack(
    seg_run: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    export(seg_run, "onnx", out=bundle)
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
        img
    )
    code = (
        "import sys; from liandan.prediction import predict; "
        f"predict({str(bundle)!r}, [{str(img)!r}], out={str(tmp_path / 'out')!r}); "
        "heavy = [m for m in ('lightning', 'timm', 'segmentation_models_pytorch') if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
    assert np.array(Image.open(tmp_path / "out" / "in.png")).shape == (40, 50)


@pytest.mark.slow
def test_an_altered_or_incomplete_bundle_is_refused(seg_run: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    export(seg_run, "onnx", out=bundle)
    meta_path = bundle / "model.json"
    meta = json.loads(meta_path.read_text())
    altered = dict(meta, in_channels=4)
    meta_path.write_text(json.dumps(altered))
    with pytest.raises(CheckpointError, match="input bands"):
        predict(bundle, [bundle / "model.json"], out=tmp_path / "o")
    missing = {k: v for k, v in meta.items() if k != "classes"}
    meta_path.write_text(json.dumps(missing))
    with pytest.raises(CheckpointError, match="classes"):
        predict(bundle, [bundle / "model.json"], out=tmp_path / "o")
    meta_path.write_text(json.dumps(meta))
    (bundle / "model.onnx").unlink()
    with pytest.raises(CheckpointError, match=r"model\.onnx is missing"):
        predict(bundle, [bundle / "model.json"], out=tmp_path / "o")


def test_unknown_format_and_missing_run_are_clear_errors(tmp_path: Path, capsys) -> None:
    assert main(["export", str(tmp_path), "--format", "tflite"]) == 2
    assert main(["export", str(tmp_path / "nope")]) == 1
    assert "run folder not found" in capsys.readouterr().err
