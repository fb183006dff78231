"""Export to ONNX / TorchScript, parity with eager PyTorch, predict from the bundle."""

from __future__ import annotations

import json
import shutil
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
from liandan.exporting import DEFAULT_OPSET, TOLERANCE, export
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


@pytest.fixture(scope="module")
def seg_onnx(seg_run: Path, module_tmp: Path) -> Path:
    """One ONNX bundle of the segmentation run, shared (the exporter takes tens of seconds)."""
    return export(seg_run, "onnx", out=module_tmp / "seg-onnx").out_dir


def _bundle(seg_run: Path, seg_onnx: Path, fmt: str, tmp_path: Path) -> Path:
    if fmt == "onnx":
        return Path(shutil.copytree(seg_onnx, tmp_path / "bundle"))
    return export(seg_run, fmt, out=tmp_path / "bundle").out_dir


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
def test_segmentation_export_matches_the_run(
    seg_run: Path, seg_onnx: Path, fmt: str, tmp_path: Path
) -> None:
    bundle = _bundle(seg_run, seg_onnx, fmt, tmp_path)
    meta = json.loads((bundle / "model.json").read_text())
    assert (bundle / meta["export"]["file"]).is_file()
    assert len(meta["export"]["max_abs_diff"]) == 2
    assert all(d <= TOLERANCE for d in meta["export"]["max_abs_diff"].values())
    assert meta["export"]["format"] == fmt and meta["classes"] == ["0", "1", "2"]
    assert meta["export"]["input"]["shape"] == ["batch", 3, "height", "width"]
    if fmt == "onnx":  # the supported exporter, one self-contained file
        assert meta["export"]["exporter"] == "torch.export"
        assert meta["export"]["opset"] == DEFAULT_OPSET
        assert sorted(p.name for p in bundle.iterdir() if p.suffix != ".json") == ["model.onnx"]
    scene = _scene(tmp_path / "scene.tif")
    a = predict(seg_run, [scene], out=tmp_path / "from_run", tile=64)
    b = predict(bundle, [scene], out=tmp_path / "from_export", tile=64)
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
    seg_run: Path, seg_onnx: Path, tmp_path: Path
) -> None:
    bundle = _bundle(seg_run, seg_onnx, "onnx", tmp_path)
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
def test_an_altered_or_incomplete_bundle_is_refused(
    seg_run: Path, seg_onnx: Path, tmp_path: Path
) -> None:
    bundle = _bundle(seg_run, seg_onnx, "onnx", tmp_path)
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


@pytest.mark.slow
def test_an_opset_the_exporter_cannot_reach_is_recorded_as_written(
    cls_run: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog
) -> None:
    """LeNet at opset 17: the conversion from 18 fails, so the file keeps 18 and says so.

    The exporter's own lines about it stay off the console unless asked for (--debug).
    """
    quiet = export(cls_run, "onnx", out=tmp_path / "quiet", opset=17)
    assert "operator set version" not in capfd.readouterr().err
    meta = json.loads((quiet.out_dir / "model.json").read_text())
    assert meta["export"]["opset"] == 18 and meta["export"]["exporter"] == "torch.export"
    assert "ONNX opset 17 was asked" in caplog.text and "opset 18" in caplog.text
    export(cls_run, "onnx", out=tmp_path / "verbose", opset=17, verbose=True)
    assert "operator set version" in capfd.readouterr().err


@pytest.mark.slow
def test_the_deprecated_exporter_is_only_a_fallback_and_says_so(
    seg_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import torch

    original = torch.onnx.export

    def no_torch_export(*args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("dynamo"):
            raise RuntimeError("unsupported operator aten::made_up")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_torch_export)
    result = export(seg_run, "onnx", out=tmp_path / "bundle")
    assert all(d <= TOLERANCE for d in result.max_abs_diff.values())
    meta = json.loads((tmp_path / "bundle" / "model.json").read_text())
    assert meta["export"]["exporter"] == "torchscript"
    assert "deprecated TorchScript-based" in caplog.text and "aten::made_up" in caplog.text


def test_onnx_export_without_its_packages_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 1
    err = capsys.readouterr().err
    assert "ONNX export needs the onnx, onnxruntime and onnxscript packages" in err
    assert "hint: pip install 'liandan[export]'" in err  # the brackets printed as they are
