"""Semantic segmentation: one class per pixel, from masks or vector layers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liandan.tasks.base import Task
from liandan.tasks.registry import register_task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from liandan.config import AugmentConfig, Config, TrainConfig
    from liandan.data.fingerprint import Fingerprint
    from liandan.data.layouts import ClassSpec, DatasetIndex, Sample
    from liandan.data.problems import Problem
    from liandan.data.scan import CheckedDataset, TargetCheck
    from liandan.planning import PlanFacts
    from liandan.prediction import Prediction, Predictor
    from liandan.reporting.samples import SampleResults


# U-Net: the slope of peak RSS between batch 2 and 8 (CPU, AdamW steps, 256 px, torch
# 2.14; measured 2026-11-28: 109 / 118 / 183 / 172 MB a sample), plus ~10%
FLOATS_PER_PIXEL = {"mobilenet_v2": 760, "resnet18": 480, "resnet34": 520, "resnet50": 800}
# images up to this side are predicted whole (no tiles): a U-Net/ResNet-18 forward pass
# at 1024 px peaked 0.5 GB above the model on the CPU (inference, measured)
WHOLE_IMAGE = {False: 1536, True: 2048}  # {gpu: max side}; about 1.1 GB at 1536 px
TILE_PASSES = 2  # random training tiles per epoch: about two passes over the raster area
TILES_PER_EPOCH = (64, 1024)  # ... within these bounds


class Segment(Task):
    name = "segment"
    title = "segmentation"
    aliases = ("segmentation",)
    targets = "masks"
    headline = "mean_iou"
    default_loss = "ce+dice"
    batch_cap_gpu = 64
    batch_cap_cpu = 16
    uses_raster_tiles = True
    dynamic_export = True
    demo_settings = (  # measured in the README
        "model.arch=unet",
        "model.encoder=resnet18",
        "data.image_size=128",
        "train.epochs=30",  # mIoU swings for ~10 epochs (BatchNorm, 6 steps/epoch)
        "train.batch_size=8",
        "optim.lr=1e-3",
        "augment.vflip=0.5",
        "augment.rotate90=0.5",
    )

    def default_arch(self, image_size: int | None = None) -> str:
        return "unet"

    def misplaced_arch_hint(self, arch: str, owner: Task) -> str:
        if owner.timm_classifiers:  # a classifier is an encoder here
            return (
                f"{arch} is a classifier; for segmentation set model.arch=unet (or another "
                f"decoder) and model.encoder={arch}"
            )
        return super().misplaced_arch_hint(arch, owner)

    def probe_loss(self, model: torch.nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        shape = (x.shape[0], *x.shape[2:])  # a class per pixel
        y = torch.randint(0, num_classes, shape, device=x.device)
        return F.cross_entropy(model(x).float(), y)

    def search_space(self) -> dict[str, Any]:
        return {"loss.name": ["ce+dice", "ce", "focal+dice"]}

    def check_targets(
        self,
        index: DatasetIndex,
        problems: list[tuple[Sample, str]],
        targets: dict[Path, np.ndarray],
        lossy: dict[Path, str],
        blocking: list[str],
    ) -> TargetCheck:
        from liandan.data.scan import check_masks

        return check_masks(index, problems, targets, lossy, blocking)

    def target_problems(
        self,
        index: DatasetIndex,
        good: list[Sample],
        records: dict[Path, dict[str, Any]],
        lossy_masks: str,
        notes: list[str],
    ) -> list[Problem]:
        from liandan.data.problems import mask_problems

        return mask_problems(index, good, records, lossy_masks, notes)

    def fingerprint_targets(
        self,
        fp: Fingerprint,
        index: DatasetIndex,
        good: list[Sample],
        records: dict[Path, dict[str, Any]],
        lossy_masks: str,
    ) -> list[int] | None:
        from liandan.data.fingerprint import mask_frequencies

        return mask_frequencies(fp, index, good, records, lossy_masks)

    def make_demo(self, folder: Path) -> None:
        from liandan.data.demo import make_segment_demo

        # texture mosaics, and a georeferenced scene (scene/scene.tif) predicted at the end
        make_segment_demo(folder)

    def plan_input(self, facts: PlanFacts) -> None:
        from liandan.config import DataConfig
        from liandan.data.readers import RASTER_EXTS

        fp, cap = facts.fp, 512 if facts.gpu else 256
        # rasters (georeferenced or larger than data.max_image_size) are trained on tiles
        tiled = bool(fp.extensions) and all(e in RASTER_EXTS for e in fp.extensions)
        facts.tiled = tiled and (fp.georeferenced or facts.top > DataConfig().max_image_size)
        if not facts.tiled:
            facts.size = facts.sized(cap)
            return
        h, w = facts.median
        size = facts.size = max(32, min(32 * (facts.side // 32), cap))
        facts.put("data.tile_size", size, f"rasters ({w}x{h} median) are trained on random "
                  f"tiles; {size} px keeps full resolution within what {facts.device} trains "
                  "fast")  # fmt: skip
        area = fp.num_samples * h * w * (1 - DataConfig().val_fraction)
        low, high = TILES_PER_EPOCH
        tiles = int(min(max(TILE_PASSES * area / size**2, low), high))
        facts.put("data.tiles_per_epoch", tiles, f"about {TILE_PASSES} passes over the "
                  f"training area per epoch, within {low}-{high} tiles")  # fmt: skip
        facts.n_train = tiles

    def plan_model(self, facts: PlanFacts) -> int:
        encoder = "resnet18" if (not facts.gpu or facts.n_train < 1000) else "resnet34"
        if facts.gpu and facts.n_train >= 10000:
            encoder = "resnet50"
        facts.put(
            "model.arch", "unet", "U-Net: the encoder-decoder that nnU-Net found hard to beat"
        )
        why = ("a small encoder trains fast and overfits less" if encoder == "resnet18"
               else "enough data for a deeper encoder")  # fmt: skip
        facts.put(
            "model.encoder", encoder, f"{facts.n_train} training images on {facts.device}: {why}"
        )
        return FLOATS_PER_PIXEL[encoder]

    def plan_loss(self, facts: PlanFacts) -> None:
        ratio = facts.fp.imbalance_ratio or 1.0
        loss = "focal+dice" if ratio > 100 else "ce+dice"
        facts.put("loss.name", loss, f"Dice is insensitive to class size; "
                  f"{'focal' if ratio > 100 else 'CE'} keeps per-pixel gradients (imbalance "
                  f"ratio {ratio:g} in pixels)")  # fmt: skip
        facts.weigh_classes(10)

    def plan_orientation(self, facts: PlanFacts) -> bool:
        from liandan.planning import UPRIGHT_SHIFT

        shift = facts.fp.layout_shift
        if shift.get("vertical", 1.0) > UPRIGHT_SHIFT:
            return False
        reason = (f"no up direction: the masks' top and bottom thirds hold the same class mix "
                  f"(distance {shift['vertical']:.2f} <= {UPRIGHT_SHIFT}), so flipped and "
                  "rotated images keep valid labels")  # fmt: skip
        for key in ("augment.hflip", "augment.vflip", "augment.rotate90"):
            facts.put(key, 0.5, reason)
        return True

    def plan_scale(self, facts: PlanFacts) -> None:
        if facts.side >= 1.5 * facts.size:
            facts.put("augment.scale", [0.5, 2.0], f"images ({facts.side} px) are larger than "
                      f"the {facts.size} px crop: windows of 0.71-1.41 times its side, resized "
                      "to it, add scale variety around the native resolution predict runs at "
                      "(nnU-Net scales by 0.7-1.4)")  # fmt: skip

    def plan_predict(self, facts: PlanFacts) -> None:
        from liandan.planning import ceil32

        if facts.tiled or facts.top > WHOLE_IMAGE[facts.gpu]:
            return
        whole = max(ceil32(facts.top), 64)
        facts.put("predict.tile", whole, f"the largest image ({facts.top} px) is predicted "
                  "whole: no overlapping tiles computed twice (a 740 px image cost 2.2x its "
                  f"pixels in 512 px tiles), no seams; larger inputs are tiled at {whole} px")  # fmt: skip

    def adopt_classes(self, index: DatasetIndex, classes: ClassSpec) -> None:
        index.classes = classes  # masks are read with the model's classes

    def evaluate_samples(
        self,
        predictor: Predictor,
        checked: CheckedDataset,
        samples: list[Sample],
        bands: list[int] | None,
    ) -> SampleResults:
        from liandan.reporting.samples import evaluate_mask_samples

        return evaluate_mask_samples(predictor, checked, samples, bands)

    def metric_extras(self, results: SampleResults) -> dict[str, Any]:
        from liandan.metrics_extra import segmentation_extras

        return segmentation_extras(results.names, results.ious, results.classes, results.confusion)

    def report_sections(
        self,
        run: Path,
        results: SampleResults,
        predictor: Predictor,
        checked: CheckedDataset,
        cfg: Config,
        meta: dict[str, Any],
        out: Path,
    ) -> list[Any]:
        from liandan.reporting.build import mask_sections

        return mask_sections(run, results, predictor, checked, cfg, meta, out)

    def merge_flipped(self, out: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        import torch

        return torch.flip(out, dims)  # class maps flip back with the image

    def predict_array(
        self, predictor: Predictor, image: np.ndarray, path: Path | str
    ) -> np.ndarray:
        return predictor.predict_dense(predictor.prepare(image, path))

    def decide(self, probs: np.ndarray) -> Any:
        return probs.argmax(0)

    def planned_outputs(
        self, files: Sequence[Path], out_dir: Path, probs: bool, vector: str | None
    ) -> tuple[list[Path], list[Path]]:
        from liandan.data.readers import RASTER_EXTS

        targets: list[Path] = []
        sources: list[Path] = []
        for path in files:
            names = [f"preview/{path.stem}.png"]
            if path.suffix.lower() in RASTER_EXTS:
                names.append(f"{path.stem}.tif")
                names += [f"{path.stem}_probs.tif"] if probs else []
                suffix = "geojson" if vector == "geojson" else "gpkg"
                names += [f"{path.stem}.{suffix}"] if vector else []
            else:
                names.append(f"{path.stem}.png")
            targets += [out_dir / n for n in names]
            sources += [path] * len(names)
        return targets, sources

    def write_prediction(self, pred: Prediction, predictor: Predictor, out_dir: Path) -> list[Path]:
        from liandan.predict_outputs import write_prediction

        return [write_prediction(pred, predictor, out_dir)]

    def export_sizes(self, meta: dict[str, Any]) -> list[tuple[int, int]]:
        base = max(32, min(int(meta.get("tile_size", 256)), 128))
        base -= base % 32
        return [(base, base), (base + 32, base + 64)]

    def output_axes(self, num_classes: int) -> list[str | int]:
        return ["batch", num_classes, "height", "width"]

    def class_counts(self, dataset: Any, samples: list[Sample], num_classes: int) -> np.ndarray:
        import numpy as np

        counts = np.zeros(num_classes, dtype=np.int64)
        for s in samples:  # pixels of each class (ignored pixels are negative)
            mask = dataset.load_mask(s.target)
            counts += np.bincount(mask[mask >= 0].ravel(), minlength=num_classes)[:num_classes]
        return counts

    def geometry(self, cfg: AugmentConfig, image_size: int, train: bool) -> list[Any]:
        from liandan.data.transforms import native_crop_geometry

        return native_crop_geometry(cfg, image_size, train)

    def augment_sample(
        self, dataset: Any, image: np.ndarray, sample: Sample
    ) -> tuple[np.ndarray, torch.Tensor]:
        import numpy as np
        import torch

        assert isinstance(sample.target, Path)
        out = dataset.augment(image=image, mask=dataset.load_mask(sample.target))
        mask = torch.from_numpy(np.ascontiguousarray(out["mask"]).astype(np.int64))
        return out["image"], mask

    def balance(
        self,
        dataset: Any,
        samples: list[Sample],
        num_classes: int,
        size: int,
        generator: torch.Generator,
    ) -> Any:
        from liandan.data.samplers import RareClassCrop

        # every image stays equally likely; the crops aim at rare-class pixels
        counts = self.class_counts(dataset, samples, num_classes)
        dataset.augment.crop = RareClassCrop(counts, size)
        return None

    def validation_source(
        self, dataset: Any, size: int, batch: int, wanted: int, train: TrainConfig
    ) -> tuple[Any, int, str | None]:
        from liandan.data.epochs import val_patches

        # large images: validated on fixed crops during training
        patches, why = val_patches(dataset, size, train.val_patches, train.seed)
        if patches is not None and why is not None:
            return patches, batch, why
        return dataset, max(1, batch // 2), None

    def target_mapper(self, classes: ClassSpec) -> Any:
        from liandan.data.masks import MaskMapper

        return MaskMapper(classes)

    def prepare_classes(self, index: DatasetIndex, root: Path, ignore_index: int | None) -> None:
        from liandan.data.layouts import classes_from_yaml

        classes_from_yaml(index, root, ignore_index)

    def reads_classes_yaml(self) -> bool:
        return True


register_task(Segment())
