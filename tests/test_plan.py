"""`liandan plan`: a valid config from a fingerprint, a reason for each decision."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import yaml

from conftest import FAST_CLS, make_imagefolder, save
from liandan.cli import main
from liandan.config import Config
from liandan.data.fingerprint import Fingerprint
from liandan.planning import plan, plan_from_fingerprint


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("LIANDAN_CACHE_DIR", str(tmp_path / "cache"))


def test_tiny_rgb_photos(tmp_path):
    root = make_imagefolder(tmp_path / "cls", n_per_class=8)
    p = plan(root, device="cpu")
    cfg = p.config
    assert cfg.task == "classify" and cfg.data.layout == "imagefolder"
    assert cfg.model.arch == "lenet" and cfg.data.image_size == 32
    assert cfg.data.normalize == "dataset" and cfg.augment.hflip == 0.5
    assert cfg.augment.rotate90 == 0.0 and cfg.loss.class_weights == "none"
    assert isinstance(cfg.train.batch_size, int)  # CPU plans keep the estimate
    for key in ("task", "data.image_size", "data.normalize", "model.arch", "loss.name",
                "augment.hflip", "train.batch_size", "optim.lr", "train.epochs"):  # fmt: skip
        assert len(p.reasons[key]) > 10, key
    # plan.yaml is the config (comments are the reasons); plan.md has one line per decision
    yaml_path, md_path = p.write(tmp_path / "out" / "plan.yaml")
    assert Config.load(yaml_path) == cfg
    text = yaml_path.read_text()
    assert f"image_size: 32  # {p.reasons['data.image_size']}" in text
    md = md_path.read_text()
    assert md.count("\n- **") == len(p.reasons)


def test_16bit_multiband_overhead(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "geo"
    (root / "images").mkdir(parents=True)
    for i in range(6):
        img = rng.integers(0, 12000, (5, 48, 48), dtype=np.uint16)  # (bands, H, W)
        tifffile.imwrite(root / "images" / f"t{i}.tif", img, planarconfig="separate")
        save((rng.random((48, 48)) > 0.5).astype(np.uint8), root / "masks" / f"t{i}.png")
    p = plan(root, device="cuda")
    cfg = p.config
    assert cfg.task == "segment" and cfg.model.arch == "unet"
    assert cfg.data.normalize == "percentile" and cfg.data.percentiles == (0.5, 99.5)
    assert "uint16" in p.reasons["data.normalize"]
    assert cfg.augment.vflip == cfg.augment.rotate90 == 0.5
    assert "overhead" in p.reasons["augment.rotate90"]
    assert cfg.loss.name == "ce+dice" and cfg.data.image_size == 64  # 48 px up to /32
    # on a GPU the batch is probed when training starts; the estimate stays in the reason
    assert cfg.train.batch_size == "auto" and "suggests" in p.reasons["train.batch_size"]


def test_imbalanced_masks_weight_rare_classes():
    fp = Fingerprint(
        task="segment", layout="pairs", num_samples=400, splits={"train": 320, "val": 80},
        classes=["bg", "crack"], class_pixels={"bg": 10**8, "crack": 2 * 10**5},
        imbalance_ratio=500.0, image_size={"min": [900, 1200], "median": [900, 1200],
        "max": [900, 1200]}, bands=[3], dtypes=["uint8"], extensions=[".jpg"],
    )  # fmt: skip
    p = plan_from_fingerprint(fp, "data", device="cpu", budget="10m")
    cfg = p.config
    assert cfg.loss.name == "focal+dice" and cfg.loss.class_weights == "auto"
    assert "500" in p.reasons["loss.class_weights"]
    assert cfg.data.image_size == 256 and "900" in p.reasons["data.image_size"]
    # images much larger than the crop: zoom around the native scale (segmentation)
    assert cfg.augment.scale == (0.5, 2.0) and "native" in p.reasons["augment.scale"]
    assert cfg.train.steps_per_epoch == "auto"  # sized by measured costs
    assert cfg.predict.tile == 1216  # 900 x 1200 images: predicted whole (max side, /32)
    small = {**fp.__dict__, "image_size": {"min": [600, 700], "median": [650, 739],
                                           "max": [846, 1099]}}  # fmt: skip
    planned = plan_from_fingerprint(fp.__class__(**small), "data", device="cpu")
    assert planned.config.predict.tile == 1120  # 846 x 1099 at most: predicted whole (max side)
    big = {**fp.__dict__, "image_size": {"min": [2000, 2000], "median": [2000, 2000],
                                         "max": [2000, 2000]}}  # fmt: skip
    planned = plan_from_fingerprint(fp.__class__(**big), "data", device="cpu")
    assert planned.config.predict.tile == 512  # too large to predict whole on a CPU: tiles
    assert cfg.augment.rotate90 == 0.0  # upright photos
    assert cfg.train.budget == "10m" and cfg.train.epochs >= 100
    balanced = plan_from_fingerprint(
        fp.__class__(**{**fp.__dict__, "imbalance_ratio": 2.0}), "data", device="cpu"
    )
    assert balanced.config.loss.name == "ce+dice"
    assert balanced.config.loss.class_weights == "none"


@pytest.mark.slow
def test_cli_plan_and_train_plans_by_default(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "cls", n_per_class=6)
    assert main(["plan", str(root), "-o", str(tmp_path / "p" / "plan.yaml")]) == 0
    assert (tmp_path / "p" / "plan.md").is_file()
    fast = [o for o in FAST_CLS if not o.startswith("model.")] + ["optim.lr=1e-3"]
    fast += ["train.steps_per_epoch=1"]
    # `liandan train DATA` with no --config plans first (no --plan needed)
    args = ["train", str(root), "--out", str(tmp_path / "runs"), *fast]
    assert main(args) == 0
    run = tmp_path / "runs" / "train"
    assert (run / "plan.md").is_file() and (run / "plan.yaml").is_file()
    assert "plan.md" in capsys.readouterr().out  # the run says where the reasons are
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["arch"] == "lenet"  # the plan's choice
    assert saved["train"]["patience"] is not None  # ... early stopping, which defaults lack
    assert saved["train"]["epochs"] == 2 and saved["optim"]["lr"] == 1e-3  # user's overrides
    assert "set by you" in (run / "plan.md").read_text()
    # --no-plan: the built-in defaults, no plan files
    assert main([*args, "--no-plan", "--name", "plain"]) == 0
    plain = tmp_path / "runs" / "plain"
    assert not (plain / "plan.md").exists()
    assert yaml.safe_load((plain / "config.yaml").read_text())["train"]["patience"] is None


def _scenes(root, upright: bool, n: int = 12, size: int = 48):
    """RGB PNG scenes: "sky" above "ground" (upright) or the two in random quadrants."""
    rng = np.random.default_rng(3)
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        if upright:  # horizon somewhere in the middle third, sky (1) above it
            mask[: int(rng.integers(size // 3, 2 * size // 3))] = 1
        else:  # a random half of the image is class 1, in any orientation
            half = int(rng.integers(4))
            mask[[slice(None, size // 2), slice(size // 2, None)][half % 2]] = 1
            mask = np.rot90(mask, half // 2).copy()
        img = (mask[..., None] * 120 + rng.integers(0, 60, (size, size, 3))).astype(np.uint8)
        save(img, root / "images" / f"s{i:02d}.png")
        save(mask, root / "masks" / f"s{i:02d}.png")
    return root


def test_upright_scenes_are_not_flipped_vertically(tmp_path):
    p = plan(_scenes(tmp_path / "street", upright=True), device="cpu")
    fp_shift = p.fingerprint.layout_shift
    assert fp_shift["vertical"] > 0.5 > fp_shift["horizontal"]  # sky on top, never below
    assert p.config.augment.hflip == 0.5
    assert p.config.augment.vflip == 0.0 and p.config.augment.rotate90 == 0.0
    assert "upright" in p.reasons["augment.vflip"]


def test_scenes_without_an_up_direction_are_rotated(tmp_path):
    p = plan(_scenes(tmp_path / "texture", upright=False), device="cpu")
    assert p.fingerprint.layout_shift["vertical"] <= 0.1
    assert p.config.augment.vflip == p.config.augment.rotate90 == 0.5
    assert "no up direction" in p.reasons["augment.rotate90"]


def test_georeferenced_rasters_get_tiles_sized_for_the_device():
    """One 791x718 georeferenced scene (like the shared Landsat subset): tiles, not a
    resized image; an epoch of random tiles over the area; a batch that BatchNorm can use."""
    fp = Fingerprint(
        task="segment", layout="pairs", num_samples=1, splits={"none": 1},
        classes=["0", "1", "2"], class_pixels={"0": 10**5, "1": 10**5, "2": 10**5},
        imbalance_ratio=1.05, image_size={"min": [718, 791], "median": [718, 791],
        "max": [718, 791]}, bands=[3], dtypes=["uint8"], extensions=[".tif"],
        georeferenced=True,
    )  # fmt: skip
    cpu = plan_from_fingerprint(fp, "data", device="cpu").config
    assert (
        cpu.data.tile_size == 256
        and "tiles" in plan_from_fingerprint(fp, "data", device="cpu").reasons["data.tile_size"]
    )
    assert 64 <= cpu.data.tiles_per_epoch <= 1024
    assert cpu.train.batch_size == 8  # a U-Net/ResNet-18 256 px sample is ~110 MB on a CPU
    assert plan_from_fingerprint(fp, "data", device="cuda").config.data.tile_size == 512
    small = fp.__class__(**{**fp.__dict__, "image_size": {k: [300, 300] for k in fp.image_size}})
    assert plan_from_fingerprint(small, "data", device="cuda").config.data.tile_size == 288
    photos = fp.__class__(**{**fp.__dict__, "georeferenced": False, "extensions": [".png"]})
    assert plan_from_fingerprint(photos, "data", device="cpu").config.data.tile_size == 512
    big = fp.__class__(**{**fp.__dict__, "num_samples": 40, "image_size": {
        k: [10000, 10000] for k in fp.image_size}})  # fmt: skip
    assert plan_from_fingerprint(big, "data", device="cpu").config.data.tiles_per_epoch == 1024
