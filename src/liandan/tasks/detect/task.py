"""Object detection as a liandan task: boxes in (YOLO, COCO), boxes and mAP out.

The :class:`Detect` task wires the foundations of this package into the shared
machinery: the layouts ``yolo`` and ``coco`` (:mod:`liandan.data.finders`) index the
images with their boxes, :meth:`Detect.check_targets` names every bad file and line,
:class:`~liandan.tasks.detect.data.DetectionData` feeds the Lightning module, the
detector (:mod:`liandan.tasks.detect.models`) computes its own losses, and validation
accumulates the boxes of every image into COCO mAP
(:func:`~liandan.tasks.detect.metrics.evaluate_detections`), in the original pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from liandan.tasks.base import Task
from liandan.tasks.registry import register_task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from liandan.config import Config, LossConfig
    from liandan.data.fingerprint import Fingerprint
    from liandan.data.layouts import DatasetIndex, Sample
    from liandan.data.problems import Problem
    from liandan.data.scan import CheckedDataset, TargetCheck
    from liandan.data.transforms import Normalizer
    from liandan.planning import PlanFacts
    from liandan.prediction import Prediction, Predictor
    from liandan.reporting.samples import SampleResults
    from liandan.tasks.detect.boxes import ImageBoxes

# training memory per input pixel (floats): an FPN detector over the encoder holds
# about the memory of a U-Net over the same encoder (rough, the plan's batch estimate)
FLOATS_PER_PIXEL = {"resnet18": 500, "resnet34": 550}
# the fewest input pixels across the plan keeps the smallest boxes (5th percentile) at:
# FCOS's finest level has a stride of 8, so a smaller object falls within one cell
MIN_BOX_PX = 8


def records_of(index: DatasetIndex, samples: list[Sample]) -> list[ImageBoxes]:
    """The boxes of each sample (a detection sample's target is their position)."""
    images = index.source.images
    return [images[_position(s)] for s in samples]


def _position(sample: Sample) -> int:
    assert isinstance(sample.target, int), "a detection sample's target is a position"
    return sample.target


@dataclass
class BoxMeter:
    """The boxes of one validation pass, per image, in the original pixels."""

    num_classes: int
    truth: list[Any] = field(default_factory=list)
    preds: list[Any] = field(default_factory=list)

    def update(self, outputs: list[dict[str, Any]], targets: list[dict[str, Any]]) -> None:
        import numpy as np

        from liandan.tasks.detect.data import to_original
        from liandan.tasks.detect.metrics import Detections

        for out, target in zip(outputs, targets, strict=True):
            scale = target["scale"].tolist()
            truth = to_original(target["boxes"], scale)
            self.truth.append(
                Detections(truth, np.ones(len(truth)), target["labels"].cpu().numpy())
            )
            self.preds.append(
                Detections(
                    to_original(out["boxes"], scale),
                    out["scores"].detach().float().cpu().numpy(),
                    out["labels"].cpu().numpy(),
                )
            )

    def evaluate(self) -> Any:
        from liandan.tasks.detect.metrics import evaluate_detections

        return evaluate_detections(self.truth, self.preds, self.num_classes)


def detection_metrics(found: Any, class_names: list[str], split: str) -> dict[str, Any]:
    """metrics.json's dict of a :class:`~liandan.tasks.detect.metrics.DetectionMetrics`:
    ``overall`` (``map`` = mAP@[.5:.95], ``map50``, ``map75``, per size, recalls,
    precision / recall / F1 at the score threshold ``found`` was evaluated at, and that
    threshold), ``per_class`` and the
    ``(K + 1) x (K + 1)`` ``confusion_matrix`` (rows truth, last row and column
    background)."""
    summary = found.summary(class_names)
    return {
        "task": "detect",
        "split": split,
        "classes": list(class_names),
        "overall": summary["overall"],
        "per_class": summary["per_class"],
        "confusion_matrix": summary["confusion"],
        "confusion_labels": [*class_names, "background"],
    }


class Detect(Task):
    name = "detect"
    title = "object detection"
    aliases = ("detection", "object-detection", "boxes")
    targets = "boxes"
    headline = "map"  # COCO mAP@[.5:.95], the ranking COCO uses
    default_loss = "detector"  # the detector's own losses (classification, box, centerness)
    batch_cap_gpu = 32
    batch_cap_cpu = 16
    logged_metrics = ("map", "map50", "map75", "precision", "recall", "f1")
    demo_settings = (
        "model.arch=fcos",
        "model.encoder=resnet18",
        "model.fpn_channels=128",  # 1.5-1.9x the steps of 256 on a CPU, same mAP a step
        "data.image_size=128",
        "train.epochs=24",  # 600 steps: the class is learned between 300 and 600 ...
        "train.steps_per_epoch=25",
        "train.budget=270s",  # ... or fewer on a slower machine: the demo ends in 5 minutes
        "train.batch_size=16",
        "optim.lr=2e-3",
        "optim.weight_decay=0.05",
        "schedule.warmup_epochs=1",
        "augment.vflip=0.5",
        "augment.rotate90=0.5",
        "augment.scale=[0.75,1.25]",
        "augment.brightness_contrast=0.5",
        "predict.tile=256",  # the 512 px scene in 3 x 3 tiles, seams through shapes
    )

    # what the shared machinery cannot do with boxes yet, refused before it starts
    NOT_YET: ClassVar[dict[str, str]] = {
        "folds": "train one run (data.folds pools confusion matrices and averages "
        "class probabilities, which boxes do not have)",
        "devices": "train detection on one device (train.devices=1, train.num_nodes=1): "
        "validation gathers its boxes on one process only",
    }
    # what a refusal names, and the key it points at, where that is not `liandan <command>`
    REFUSED_AS: ClassVar[dict[str, tuple[str, str]]] = {
        "folds": ("k-fold training (--folds, data.folds)", "data.folds"),
        "devices": ("training on several devices or machines", "train.devices"),
    }

    def refuse(self, command: str) -> None:
        from liandan.errors import ConfigError

        if command in self.NOT_YET:
            what, where = self.REFUSED_AS.get(command, (f"liandan {command}", command))
            raise ConfigError(
                f"{what} is not yet available for detection",
                where=where,
                hint=self.NOT_YET[command],
            )

    def search_space(self) -> dict[str, Any]:
        # beside the shared keys: the detector family (anchor-free FCOS, anchor-based
        # RetinaNet); the objective is the monitor, val/map (COCO mAP@[.5:.95])
        return {"model.arch": ["fcos", "retinanet"]}

    def export_sizes(self, meta: dict[str, Any]) -> list[tuple[int, int]]:
        size = int(meta.get("image_size", 256))  # predict letterboxes to it
        return [(size, size)]

    def output_axes(self, num_classes: int) -> list[str | int]:
        return ["batch", "anchors", num_classes]  # the dense scores

    def export_module(
        self, model: torch.nn.Module, meta: dict[str, Any], size: tuple[int, int]
    ) -> tuple[torch.nn.Module, list[str] | None, dict[str, Any]]:
        from liandan.errors import ConfigError
        from liandan.tasks.detect.export import OUTPUT_NAMES, DenseDetector, postprocess_settings

        arch = getattr(model, "arch", meta.get("arch"))
        if arch not in ("fcos", "retinanet"):
            raise ConfigError(
                f"liandan export is not yet available for the two-stage {arch}",
                where="model.arch",
                hint="fcos and retinanet export; the run's model/ loads with "
                "liandan.models.load_model",
            )
        dense = DenseDetector(model, *size, int(meta["in_channels"]))
        extra = {
            "output": {  # replaces the single-output entry of the other tasks
                "names": OUTPUT_NAMES,
                "dtype": "float32",
                "kind": "dense detections: x1 y1 x2 y2 in input pixels, class scores",
                "shapes": {
                    "boxes": ["batch", "anchors", 4],
                    "scores": ["batch", "anchors", len(meta["classes"])],
                },
            },
            "postprocess": postprocess_settings(model, dense),
        }
        return dense, OUTPUT_NAMES, extra

    def check_export(
        self,
        model: torch.nn.Module,
        exported: torch.nn.Module,
        runner: Any,
        meta: dict[str, Any],
        sizes: list[tuple[int, int]],
        generator: torch.Generator,
    ) -> dict[str, float]:
        from liandan.tasks.detect.export import DenseDetector, check_export

        assert isinstance(exported, DenseDetector), "export_module's module"
        return check_export(model, exported, runner, meta, sizes[0], generator)

    def wrap_export(self, module: torch.nn.Module, meta: dict[str, Any]) -> torch.nn.Module:
        from liandan.tasks.detect.export import ExportedDetector

        return ExportedDetector(module, meta)

    # ------------------------------------------------------------ predict
    def predict_array(
        self, predictor: Predictor, image: np.ndarray, path: Path | str
    ) -> np.ndarray:
        from liandan.tasks.detect.predict import detect_array

        return detect_array(predictor, image, path)  # (N, 6): x1 y1 x2 y2 score class

    def decide(self, probs: np.ndarray) -> Any:
        return probs  # the detections are the decision

    def planned_outputs(
        self, files: Sequence[Path], out_dir: Path, probs: bool, vector: str | None
    ) -> tuple[list[Path], list[Path]]:
        from liandan.errors import ConfigError
        from liandan.tasks.detect.predict import planned_outputs
        from liandan.tasks.detect.raster import planned_raster_outputs, slices

        if probs or vector:
            raise ConfigError(
                "--probs and --vector are not yet available for detection",
                where="--vector" if vector else "--probs",
                hint="leave them out: predict writes detections.json and preview PNGs "
                "(and a GeoPackage per georeferenced raster)",
            )
        sliced = [f for f in files if slices(f)]
        targets, sources = planned_outputs([f for f in files if f not in sliced], out_dir)
        for f in sliced:
            made = planned_raster_outputs(f, out_dir)
            targets += made
            sources += [f] * len(made)
        return targets, sources

    def slices_raster(self, path: Path) -> bool:
        """Whether predict detects over ``path`` tile by tile (:meth:`predict_sliced`):
        a raster with a CRS or larger than 2048 px a side."""
        from liandan.tasks.detect.raster import slices

        return slices(path)

    def predict_sliced(
        self, predictor: Predictor, path: Path, out_dir: Path
    ) -> tuple[Prediction, list[Path]]:
        """Sliced detection over a raster streamed tile by tile, written to ``out_dir``
        (``<stem>.gpkg``, ``<stem>_detections.json``, ``preview/<stem>.png``)."""
        from liandan.prediction import Prediction
        from liandan.tasks.detect.raster import detect_raster, write_raster_outputs

        found = detect_raster(predictor, path)
        written = write_raster_outputs(found, predictor, out_dir)
        return Prediction(path, None, found.rows, output=written[-2]), written

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
        from liandan.tasks.detect.report import detection_sections
        from liandan.tasks.detect.results import DetectionResults

        assert isinstance(results, DetectionResults), "a detection split's results"
        return detection_sections(run, results, predictor, checked, cfg, out)

    def split_counts(
        self, checked: CheckedDataset, samples: list[Sample], num_classes: int
    ) -> tuple[np.ndarray, np.ndarray, str]:
        import numpy as np

        images = np.zeros(num_classes, np.int64)
        boxes = np.zeros(num_classes, np.int64)
        for rec in records_of(checked.index, samples):
            counts = np.bincount(rec.classes, minlength=num_classes)[:num_classes]
            boxes += counts
            images += counts > 0
        return images, boxes, "boxes"

    def scores(self, pred: Path, truth: Path) -> bool:
        from liandan.tasks.detect.scoring import is_box_prediction

        return is_box_prediction(pred)

    def score_files(
        self, pred: Path, truth: Path, score_threshold: float | None = None
    ) -> dict[str, Any]:
        from liandan.tasks.detect.scoring import score_boxes

        return score_boxes(pred, truth, score_threshold)

    def write_prediction(self, pred: Prediction, predictor: Predictor, out_dir: Path) -> list[Path]:
        from liandan.tasks.detect.predict import write_preview

        return write_preview(pred, predictor, out_dir)

    def write_predictions(
        self, preds: list[Prediction], predictor: Predictor, out_dir: Path
    ) -> list[Path]:
        from liandan.tasks.detect.predict import write_results

        # a sliced raster wrote its own <stem>_detections.json (Prediction.output)
        return write_results([p for p in preds if p.output is None], predictor, out_dir)

    def default_arch(self, image_size: int | None = None) -> str:
        return "fcos"

    def misplaced_arch_hint(self, arch: str, owner: Task) -> str:
        if owner.timm_classifiers:  # a classifier is an encoder here
            return (
                f"{arch} is a classifier; for detection set model.arch=fcos (or retinanet, "
                f"fasterrcnn) and model.encoder={arch}"
            )
        return super().misplaced_arch_hint(arch, owner)

    def make_demo(self, folder: Path) -> None:
        from liandan.tasks.detect.demo import make_detect_demo

        make_detect_demo(folder)

    def finish_demo(self, run_dir: Path, data_dir: Path) -> tuple[Path | None, Any]:
        from liandan.tasks.detect.demo import predict_scene

        return predict_scene(run_dir, data_dir)  # sliced, scored against its truth boxes

    # ------------------------------------------------------------------ plan
    def plan_input(self, facts: PlanFacts) -> None:
        cap = 512 if facts.gpu else 256
        size = facts.sized(cap)
        window = int(facts.fp.boxes.get("window", 0))  # rasters cut into windows
        if size < window:  # smaller windows, not shrunk ones: boxes keep their pixels
            facts.put("data.tile_size", size, f"rasters are cut into windows of "
                      f"data.tile_size px: {size} px windows train at the rasters' own "
                      f"resolution, where {window} px windows would be shrunk "
                      f"{window / size:.1f}x to data.image_size, their boxes with them")  # fmt: skip
            facts.n_train = round(facts.n_train * (window / size) ** 2)  # about, per window
            facts.size = size
            return
        # small objects: keep the smallest boxes (5th percentile) MIN_BOX_PX across
        small = facts.fp.boxes.get("relative_size", {}).get("p5", 0.0)
        if small and small * size < MIN_BOX_PX:
            wanted = min(cap, 32 * -(-int(MIN_BOX_PX / small) // 32))
            reason = f"the smallest boxes (5th percentile {small:.3f} of the image side) "
            if wanted > size:
                size = wanted
                reason += f"keep {small * size:.0f} px across at {size} px"
            else:
                reason = f"capped at {cap}; " + reason
            if small * size < MIN_BOX_PX:
                reason += (
                    f"; they are only {small * size:.1f} px across at {size} px and may be "
                    "missed: a larger data.image_size (on a GPU) keeps them"
                )
            facts.put("data.image_size", size, reason)
        facts.size = size

    def plan_model(self, facts: PlanFacts) -> int:
        facts.put("model.arch", "fcos", "FCOS: anchor-free, no anchor sizes to fit to the "
                  "boxes, one-stage and fast on a CPU")  # fmt: skip
        encoder = "resnet34" if facts.gpu and facts.n_train >= 1000 else "resnet18"
        facts.put("model.encoder", encoder, f"{facts.n_train} training images on "
                  f"{facts.device}")  # fmt: skip
        if not facts.gpu:
            facts.put("model.fpn_channels", 128, "on a CPU the pyramid and heads at 128 "
                      "channels instead of torchvision's 256 take 1.5-1.9x less time a step; "
                      "at equal steps the demo scored the same (mAP@.5 0.501 against 0.500 "
                      "at 300 steps), and the steps gained are what a CPU lacks")  # fmt: skip
        return FLOATS_PER_PIXEL[encoder]

    def plan_loss(self, facts: PlanFacts) -> None:
        facts.put("loss.name", self.default_loss, "a detector trains with its own losses "
                  "(focal classification, box regression, centerness)")  # fmt: skip

    # ------------------------------------------------------------------ data
    def class_counts(self, dataset: Any, samples: list[Sample], num_classes: int) -> np.ndarray:
        import numpy as np

        counts = np.zeros(num_classes, dtype=np.int64)
        for rec in dataset.records:  # boxes of each class
            known = rec.classes[(rec.classes >= 0) & (rec.classes < num_classes)]
            counts += np.bincount(known, minlength=num_classes)
        return counts

    def balance(
        self,
        dataset: Any,
        samples: list[Sample],
        num_classes: int,
        size: int,
        generator: torch.Generator,
    ) -> Any:
        from liandan.errors import ConfigError

        raise ConfigError(
            "data.sampler=balanced is not available for detection yet",
            where="data.sampler",
            hint="set data.sampler=random",
        )

    def build_datasets(
        self,
        cfg: Config,
        checked: CheckedDataset,
        splits: dict[str, list[Sample]],
        normalizer: Normalizer,
    ) -> tuple[Any, Any]:
        from liandan.engine.distributed import process_count
        from liandan.tasks.detect.data import DetectionData

        if process_count(cfg) > 1:  # before a run folder is made, not at the first validation
            self.refuse("devices")
        aug = cfg.augment
        scale = tuple(aug.scale)
        common: dict[str, Any] = {
            "normalize": normalizer,
            "bands": cfg.data.bands,
            "images": checked.images,
        }
        train = DetectionData(
            records_of(checked.index, splits["train"]),
            cfg.data.image_size,
            train=True,
            scale=(float(scale[0]), float(scale[1])),
            hflip=aug.hflip,
            vflip=aug.vflip,
            rotate90=aug.rotate90,
            brightness_contrast=aug.brightness_contrast,
            hue_saturation=aug.hue_saturation,
            gamma=aug.gamma,
            seed=cfg.train.seed,
            **common,
        )
        val = DetectionData(
            records_of(checked.index, splits["val"]), cfg.data.image_size, train=False, **common
        )
        return train, val

    def collate(self) -> Any:
        from liandan.tasks.detect.data import detection_collate

        return detection_collate

    # ------------------------------------------------------------ checks
    def check_targets(
        self,
        index: DatasetIndex,
        problems: list[tuple[Sample, str]],
        targets: dict[Path, np.ndarray],
        lossy: dict[Path, str],
        blocking: list[str],
    ) -> TargetCheck:
        from liandan.data.scan import TargetCheck
        from liandan.tasks.detect.boxes import validate

        found = TargetCheck(hint=None)
        dataset = index.source
        by_file: dict[str, list[Sample]] = {}  # image and label file -> its samples
        for s in index.samples:
            rec = dataset.images[_position(s)]
            by_file.setdefault(str(rec.path), []).append(s)
            if rec.label_file is not None and rec.label_file.suffix != ".json":
                by_file.setdefault(str(rec.label_file), []).append(s)
        for p in validate(dataset):
            reason = f"{p.file}: {p.reason}"
            if not p.blocking:
                index.notes.append(reason)
            elif p.file in by_file:  # one image's problem: on_error=skip leaves it out
                problems += [(s, reason) for s in by_file[p.file]]
            else:  # a file the dataset hangs on (a COCO JSON's entry): never skipped
                blocking.append(reason)
        if not dataset.class_names:
            blocking.append(f"{index.root}: no class names and no box to number them from")
            found.hint = "name the classes in data.yaml (names: [...]) or classes.txt"
        return found

    def target_problems(
        self,
        index: DatasetIndex,
        good: list[Sample],
        records: dict[Path, dict[str, Any]],
        lossy_masks: str,
        notes: list[str],
    ) -> list[Problem]:
        from liandan.tasks.detect.boxes import validate

        return validate(index.source)  # every label file and line, errors and warnings

    def fingerprint_targets(
        self,
        fp: Fingerprint,
        index: DatasetIndex,
        good: list[Sample],
        records: dict[Path, dict[str, Any]],
        lossy_masks: str,
    ) -> list[int] | None:
        import numpy as np

        from liandan.tasks.detect.boxes import box_stats

        fp.classes = list(index.classes.names)
        images = records_of(index, good)
        stats = box_stats(images, fp.classes)
        windows = [r.window for r in images if r.window is not None]
        if windows:  # rasters cut into windows: a sample is its window, not the raster
            hw = np.array([[r.height, r.width] for r in images])
            fp.image_size = {
                "min": hw.min(0).tolist(),
                "median": np.median(hw, 0).astype(int).tolist(),
                "max": hw.max(0).tolist(),
            }
            stats["window"] = max(max(w[2], w[3]) for w in windows)  # data.tile_size
        fp.class_images = dict(stats["class_images"])
        fp.boxes = stats  # plan_input sizes the input so that small boxes survive
        return list(stats["class_boxes"].values())  # frequencies: boxes per class

    def adopt_classes(self, index: DatasetIndex, classes: Any) -> None:
        from liandan.errors import ConfigError

        if index.classes.names != classes.names:
            raise ConfigError(
                f"the dataset's classes {index.classes.names} differ from the model's "
                f"{classes.names}",
                where=index.root,
                hint="name the classes as in training (data.yaml / classes.txt / categories)",
            )

    # ------------------------------------------------------------ training
    def build_criterion(
        self,
        cfg: LossConfig,
        num_classes: int,
        *,
        ignore_index: int,
        class_weights: torch.Tensor | None,
    ) -> torch.nn.Module:
        import torch

        from liandan.errors import ConfigError

        if cfg.name not in ("auto", self.default_loss):
            raise ConfigError(
                f"loss {cfg.name!r}: a detector trains with its own losses",
                where="loss.name",
                hint="leave loss.name unset (or set it to 'detector')",
            )
        if class_weights is not None:
            raise ConfigError(
                "class weights are not available for detection yet",
                where="loss.class_weights",
                hint="set loss.class_weights=none",
            )
        return torch.nn.Identity()  # the detector sums its own losses (batch_loss)

    def batch_loss(
        self, model: torch.nn.Module, criterion: torch.nn.Module, x: torch.Tensor, y: Any
    ) -> torch.Tensor:
        losses = model(x, y)  # torchvision: {"classification": ..., "bbox_regression": ...}
        return sum(losses.values())  # type: ignore[no-any-return]

    def probe_loss(self, model: torch.nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
        import torch

        side = x.shape[-1]
        targets = []
        for _ in range(x.shape[0]):  # a few random boxes per image
            xy = torch.rand(4, 2, device=x.device) * side * 0.7
            wh = torch.rand(4, 2, device=x.device) * side * 0.25 + 4
            boxes = torch.cat([xy, xy + wh], 1)
            labels = torch.randint(0, num_classes, (4,), device=x.device)
            targets.append({"boxes": boxes, "labels": labels})
        return self.batch_loss(model, torch.nn.Identity(), x, targets)

    def validation_meter(self, num_classes: int, ignore_index: int, device: Any) -> Any:
        return BoxMeter(num_classes)

    def validate_batch(
        self,
        model: torch.nn.Module,
        criterion: torch.nn.Module,
        x: torch.Tensor,
        y: Any,
        meter: Any,
    ) -> torch.Tensor | None:
        meter.update(model(x), y)  # eval mode: detections
        losses = model.eval_losses(x, y)  # type: ignore[operator]
        return sum(losses.values())  # type: ignore[return-value]

    def validation_metrics(
        self, meter: Any, class_names: list[str], gather: Any = None
    ) -> tuple[dict[str, Any], Any]:
        import torch

        if gather is not None:
            from liandan.errors import ConfigError

            raise ConfigError(
                "detection validates on one process only for now",
                where="train.devices",
                hint="train detection on one device (train.devices=1)",
            )
        metrics = detection_metrics(meter.evaluate(), class_names, "val")
        return metrics, torch.tensor(metrics["confusion_matrix"])

    # ------------------------------------------------------------ evaluation
    def evaluate_samples(
        self,
        predictor: Predictor,
        checked: CheckedDataset,
        samples: list[Sample],
        bands: list[int] | None,
    ) -> SampleResults:
        import torch
        from torch.utils.data import DataLoader

        from liandan.tasks.detect.data import DetectionData, detection_collate
        from liandan.tasks.detect.predict import configure_detector
        from liandan.tasks.detect.results import DetectionResults

        # predict.nms_iou and predict.score_threshold (P/R/F1's), as liandan predict
        threshold = configure_detector(predictor)
        records = records_of(checked.index, samples)
        data = DetectionData(
            records,
            predictor.image_size,
            train=False,
            normalize=predictor.normalizer,
            bands=bands,
            images=checked.images,
        )
        meter = BoxMeter(len(predictor.classes))
        loader = DataLoader(data, batch_size=predictor.batch_size, collate_fn=detection_collate)
        with torch.inference_mode():
            for x, targets in loader:
                meter.update(predictor.model(x.to(predictor.device)), targets)
        # the truth of the metrics is the records' own (crowd flags, COCO areas, and
        # boxes beyond the letterboxed input), not the input's clipped copy
        found = _evaluate_records(records, meter.preds, len(predictor.classes), threshold)
        return DetectionResults(
            task=self.name,
            classes=list(predictor.classes),
            samples=samples,
            names=[_display(checked.index.root, r.path) for r in records],
            confusion=found.confusion,
            found=found,
            predictions=meter.preds,
        )

    def score_results(
        self, results: SampleResults, class_names: list[str], split: str
    ) -> dict[str, Any]:
        return detection_metrics(results.found, class_names, split)  # type: ignore[attr-defined]


def _evaluate_records(
    records: list[ImageBoxes], preds: list[Any], num_classes: int, score_threshold: float
) -> Any:
    from liandan.tasks.detect.metrics import evaluate_detections

    return evaluate_detections(records, preds, num_classes, score_threshold=score_threshold)


def _display(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


register_task(Detect())
