"""Every predict key takes effect: from the run's config.yaml, overridden by arguments and
flags, and each doing what docs/rasters.md says (tta, blend, overlap, batch size)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from typer.testing import CliRunner

from liandan.config import Config
from liandan.errors import ConfigError
from liandan.predict_settings import predict_settings
from liandan.prediction import Predictor, predict
from liandan.runs import save_model_bundle
from liandan.tiling import blend_weights
from test_predict import ConvNet, meta, smooth_scene, stream_to, write_raster

CUSTOM = {"tile": 32, "overlap": 0.5, "blend": "hann", "tta": True, "batch_size": 2}


def make_run(run: Path, bands: int) -> Path:
    """A run folder whose segnet has random weights that keep the signal's variance
    through its 16 layers (so the class probabilities vary from pixel to pixel)."""
    from liandan.config import ModelConfig
    from liandan.models import build_model

    torch.manual_seed(0)
    model_cfg = ModelConfig(arch="segnet")
    model = build_model(model_cfg, task="segment", num_classes=2, in_channels=bands)
    for conv in model.modules():
        if isinstance(conv, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    with torch.no_grad():
        model.classifier.weight *= 10  # logit margins of a few units
    info = meta(bands, arch="segnet", encoder="none", model=model_cfg.model_dump(mode="json"))
    save_model_bundle(run, model.state_dict(), info)
    return run


def save_config(run: Path, **predict_keys: object) -> None:
    Config.load(None, [f"predict.{k}={v}" for k, v in predict_keys.items()]).save(
        run / "config.yaml"
    )


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "scene.tif", smooth_scene(np.random.default_rng(5), 3, 48, 80))


class Recorder:
    """Wraps ``Predictor.forward_batch``: the settings each forward ran with, and batch sizes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict] = []
        forward = Predictor.forward_batch

        def recorded(predictor: Predictor, batch: np.ndarray) -> np.ndarray:
            self.calls.append(
                {
                    "tile": predictor.tile,
                    "overlap": predictor.overlap,
                    "blend": predictor.blend,
                    "tta": predictor.tta,
                    "autocast": predictor.autocast,
                    "batch": batch.shape[0],
                }
            )
            return forward(predictor, batch)

        monkeypatch.setattr(Predictor, "forward_batch", recorded)

    def settings(self) -> dict:
        keys = ("tile", "overlap", "blend", "tta", "autocast")
        seen = {tuple(c[k] for k in keys) for c in self.calls}
        assert len(seen) == 1, seen
        return dict(zip(keys, seen.pop(), strict=True))


def probs_of(run: Path, scene: Path, out: Path, **kwargs: object) -> np.ndarray:
    predict(run, [scene], out=out, probs=True, **kwargs)
    with rasterio.open(out / "scene_probs.tif") as src:
        return src.read()


def test_the_runs_predict_section_is_the_default_and_arguments_win(
    tmp_path: Path, scene: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(tmp_path / "run", 3)
    default = probs_of(run, scene, tmp_path / "default")  # no config.yaml: built-in defaults
    explicit = probs_of(run, scene, tmp_path / "explicit", **CUSTOM)
    assert not np.array_equal(default, explicit)

    save_config(run, **CUSTOM, precision="bf16")
    recorder = Recorder(monkeypatch)
    from_config = probs_of(run, scene, tmp_path / "config", precision="32")
    np.testing.assert_array_equal(from_config, explicit)
    settings = recorder.settings()
    assert settings == {"tile": 32, "overlap": 0.5, "blend": "hann", "tta": True, "autocast": None}
    assert max(c["batch"] for c in recorder.calls) == 2  # predict.batch_size

    recorder.calls.clear()
    predict(run, [scene], out=tmp_path / "bf16")  # predict.precision=bf16 of the config
    assert recorder.settings()["autocast"] is torch.bfloat16

    back = {"tile": 64, "overlap": 0.25, "blend": "gaussian", "tta": False, "precision": "32"}
    np.testing.assert_array_equal(probs_of(run, scene, tmp_path / "args", **back), default)


def test_cli_flags_win_over_the_runs_config(tmp_path: Path, scene: Path) -> None:
    from liandan.cli import app

    run = make_run(tmp_path / "run", 3)
    explicit = probs_of(run, scene, tmp_path / "explicit", **CUSTOM)
    default = probs_of(run, scene, tmp_path / "default")
    save_config(run, **CUSTOM)

    def cli(out: str, *flags: str) -> np.ndarray:
        args = ["predict", str(run), str(scene), "--out", str(tmp_path / out), "--probs", *flags]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        with rasterio.open(tmp_path / out / "scene_probs.tif") as src:
            return src.read()

    np.testing.assert_array_equal(cli("a"), explicit)
    flags = ["--tile", "64", "--overlap", "0.25", "--blend", "gaussian", "--no-tta"]
    np.testing.assert_array_equal(cli("b", *flags, "--batch-size", "8"), default)


def test_a_bad_value_names_its_key_and_source(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", 3)
    save_config(run, overlap=0.5)
    with pytest.raises(ConfigError, match=r"predict\.overlap") as info:
        predict_settings(run, overlap=1.5)
    assert "argument" in info.value.render()
    assert predict_settings(run)["overlap"] == 0.5
    assert predict_settings(run / "model")["overlap"] == 0.5  # the model folder finds it too
    assert predict_settings(tmp_path / "elsewhere")["tile"] is None  # model.json's tile


def image_predictor(**kwargs: object) -> Predictor:
    return Predictor(ConvNet(3), meta(3), device="cpu", **kwargs)


def test_tta_averages_the_flipped_predictions_flipped_back() -> None:
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    plain = image_predictor().forward_batch
    expected = (
        plain(x)
        + np.flip(plain(np.flip(x, 3).copy()), 3)  # horizontal flip, flipped back
        + np.flip(plain(np.flip(x, 2).copy()), 2)  # vertical flip
    ) / 3
    got = image_predictor(tta=True).forward_batch(x)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.abs(got - plain(x)).max() > 1e-3  # the flips changed the prediction


def test_tta_of_a_model_trained_upright_leaves_out_the_upside_down_view() -> None:
    """A model trained without vertical flips (the plan's rule for photos with an up
    direction) never saw an image upside down: TTA averaged that view in anyway."""
    from liandan.api import tta_flips

    assert tta_flips(0.5, 0.0) == [[3]] and tta_flips(0.5, 0.5) == [[3], [2]]
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    plain = image_predictor().forward_batch
    upright = Predictor(ConvNet(3), {**meta(3), "tta_flips": tta_flips(0.5, 0.0)}, tta=True)
    expected = (plain(x) + np.flip(plain(np.flip(x, 3).copy()), 3)) / 2
    np.testing.assert_allclose(upright.forward_batch(x), expected, atol=1e-6)
    unflipped = Predictor(ConvNet(3), {**meta(3), "tta_flips": []}, tta=True)
    np.testing.assert_allclose(unflipped.forward_batch(x), plain(x), atol=1e-6)


def test_blend_weights_overlapping_tiles_as_documented() -> None:
    """Two 32-px tiles over 48 columns (overlap 0.5): columns 16-31 are blended."""
    image = np.moveaxis(smooth_scene(np.random.default_rng(1), 3, 32, 48), 0, -1)
    base = image_predictor(tile=32)
    x = base.prepare(image)
    left = base.forward_batch(x[None, :, :32].transpose(0, 3, 1, 2))[0]
    right = base.forward_batch(x[None, :, 16:].transpose(0, 3, 1, 2))[0]
    outputs = {}
    for mode in ("none", "hann", "gaussian"):
        got = image_predictor(tile=32, overlap=0.5, blend=mode).predict_array(image)
        w = blend_weights(32, mode)
        wl, wr = w[:, 16:], w[:, :16]  # each tile's weight over columns 16-31
        mixed = (wl * left[:, :, 16:] + wr * right[:, :, :16]) / (wl + wr)
        np.testing.assert_allclose(got[:, :, 16:32], mixed, atol=1e-5)
        np.testing.assert_allclose(got[:, :, :16], left[:, :, :16], atol=1e-5)  # one tile
        outputs[mode] = got
    # none is the plain mean of the two tiles; the windows favour each tile's centre
    np.testing.assert_allclose(
        outputs["none"][:, :, 16:32], (left[:, :, 16:] + right[:, :, :16]) / 2, atol=1e-5
    )
    assert np.abs(outputs["gaussian"] - outputs["none"]).max() > 1e-3
    assert np.abs(outputs["hann"] - outputs["gaussian"]).max() > 1e-4


def test_overlap_sets_the_step_between_tiles(tmp_path: Path) -> None:
    image = np.moveaxis(smooth_scene(np.random.default_rng(2), 3, 32, 96), 0, -1)
    seams = image_predictor(tile=32, overlap=0.0)
    out = seams.predict_array(image)
    assert seams.stats.tiles == 3  # 96 / 32, no overlap
    x = seams.prepare(image)
    for c in (0, 32, 64):  # without overlap each tile is predicted on its own
        alone = seams.forward_batch(x[None, :, c : c + 32].transpose(0, 3, 1, 2))[0]
        np.testing.assert_allclose(out[:, :, c : c + 32], alone, atol=1e-5)
    half = image_predictor(tile=32, overlap=0.5)
    blended = half.predict_array(image)
    assert half.stats.tiles == 5  # a step of 16: starts 0, 16, 32, 48, 64
    assert np.abs(blended - out).max() > 1e-3


def test_a_raster_without_crs_for_a_georeferenced_model_warns_and_has_no_crs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = smooth_scene(np.random.default_rng(3), 3, 40, 40)
    plain = write_raster(
        tmp_path / "plain.tif", image, crs=None, transform=from_origin(0, 40, 1, 1)
    )
    georeferenced = Predictor(ConvNet(3), meta(3, pixel_size=[10.0, 10.0]), device="cpu")
    with caplog.at_level(logging.WARNING, logger="liandan"):
        stream_to(georeferenced, plain, tmp_path / "out.tif")
    assert "plain.tif has no CRS" in caplog.text and "no CRS either" in caplog.text
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.crs is None
    caplog.clear()
    ungeoreferenced = Predictor(ConvNet(3), meta(3), device="cpu")
    with caplog.at_level(logging.WARNING, logger="liandan"):
        stream_to(ungeoreferenced, plain, tmp_path / "out2.tif")
    assert "CRS" not in caplog.text  # a model that never saw a CRS expects none


@pytest.mark.parametrize("command", ["evaluate", "report"])
def test_evaluate_and_report_predict_with_every_key_of_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """tta, blend and batch_size of the run's config reach evaluate's and the report's
    predictor too (they took only tile, overlap and precision)."""
    run = make_run(tmp_path / "run", 3)
    keys = ["predict.tta=true", "predict.blend=hann", "predict.batch_size=3"]
    keys += ["predict.overlap=0.5", f"data.root={tmp_path}"]
    Config.load(None, keys).save(run / "config.yaml")
    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def from_run(cls, path, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(Predictor, "from_run", classmethod(from_run))
    with pytest.raises(Stop):
        if command == "evaluate":
            from liandan.evaluation import evaluate

            evaluate(run)
        else:
            import liandan.reporting.build as build
            from liandan.reporting import write_report

            monkeypatch.setattr(build, "rebuild_splits", lambda cfg, classes: (None, {}))
            write_report(run, {"task": "segment", "classes": ["a", "b"], "overall": {}})
    assert seen["tta"] is True and seen["blend"] == "hann"
    assert seen["batch_size"] == 3 and seen["overlap"] == 0.5


def test_evaluate_takes_predict_keys_over_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``liandan evaluate RUN predict.tta=true``: the key reaches the predictor (it was
    refused, the one command without key=value)."""
    from liandan.cli import main

    run = make_run(tmp_path / "run", 3)
    Config.load(None, [f"data.root={tmp_path}", "predict.batch_size=2"]).save(run / "config.yaml")
    seen: dict[str, object] = {}

    def from_run(cls, path, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        raise RuntimeError("stop")  # evaluate ends here, once the predictor is built

    monkeypatch.setattr(Predictor, "from_run", classmethod(from_run))
    with pytest.raises(RuntimeError, match="stop"):
        main(["evaluate", str(run), "predict.tta=true", "predict.overlap=0.5"])
    assert seen["tta"] is True and seen["overlap"] == 0.5
    assert seen["batch_size"] == 2  # the run's own key stays


def test_evaluate_in_python_refuses_keys_it_does_not_read(tmp_path: Path) -> None:
    """A data.* key would change what is evaluated without the CLI's check: refused."""
    from liandan.errors import ConfigError
    from liandan.evaluation import evaluate

    run = make_run(tmp_path / "run", 3)
    Config.load(None, [f"data.root={tmp_path}"]).save(run / "config.yaml")
    with pytest.raises(ConfigError, match=r"data\.val_fraction: not read by liandan evaluate"):
        evaluate(run, overrides=["data.val_fraction=0.5"])
