"""Image classification: one class label per image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liandan.tasks.base import Task
from liandan.tasks.registry import register_task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from liandan.config import AugmentConfig, Config
    from liandan.data.fingerprint import Fingerprint
    from liandan.data.layouts import DatasetIndex, Sample
    from liandan.data.scan import CheckedDataset
    from liandan.planning import PlanFacts
    from liandan.prediction import Prediction, Predictor
    from liandan.reporting.samples import SampleResults


# Training memory per input pixel and sample, in float32 values (activations + gradients),
# rough figures measured with torch.cuda.max_memory_allocated at 256 px; x2 safety margin.
FLOATS_PER_PIXEL = {"lenet": 40, "resnet18": 250, "resnet34": 350, "resnet50": 700}


class Classify(Task):
    name = "classify"
    title = "classification"
    aliases = ("classification",)
    targets = "image labels"
    headline = "macro_f1"
    default_loss = "ce"
    batch_cap_gpu = 256
    batch_cap_cpu = 64
    mixes_labels = True
    demo_settings = (  # measured in the README
        "model.arch=lenet",
        "data.image_size=32",
        "train.epochs=15",
        "train.batch_size=32",
        "optim.lr=3e-3",
        "augment.hflip=0.0",  # digits are not mirror-symmetric
    )
    timm_classifiers = True

    def default_arch(self, image_size: int | None = None) -> str:
        # LeNet for tiny inputs (digits, 32 px), a ResNet otherwise
        return "lenet" if image_size is not None and image_size <= 64 else "resnet18"

    def probe_loss(self, model: torch.nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        y = torch.randint(0, num_classes, (x.shape[0],), device=x.device)
        return F.cross_entropy(model(x).float(), y)

    def search_space(self) -> dict[str, Any]:
        return {"loss.name": ["ce", "focal"], "loss.label_smoothing": [0.0, 0.1]}

    def make_demo(self, folder: Path) -> None:
        from liandan.data.demo import make_classify_demo

        make_classify_demo(folder)  # scikit-learn's bundled handwritten digits

    def plan_input(self, facts: PlanFacts) -> None:
        from liandan.planning import ceil32

        if facts.side > 64:
            facts.size = facts.sized(384 if facts.gpu else 224)
            return
        h, w = facts.median
        facts.size = max(32, ceil32(facts.side))
        facts.put("data.image_size", facts.size, f"median image is {w}x{h}: small images are "
                  f"upsampled to {facts.size}, the smallest size the small CNNs are built for")  # fmt: skip

    def plan_model(self, facts: PlanFacts) -> int:
        big = facts.gpu and facts.n_train >= 10000
        arch = "lenet" if facts.size <= 64 else ("resnet50" if big else "resnet18")
        facts.put("model.arch", arch, f"{facts.size} px inputs, {facts.n_train} training images "
                  f"on {facts.device}" + (": a LeNet-size CNN is enough for tiny images"
                                          if arch == "lenet" else ""))  # fmt: skip
        return FLOATS_PER_PIXEL[arch]

    def plan_loss(self, facts: PlanFacts) -> None:
        ratio = facts.fp.imbalance_ratio or 1.0
        loss = "focal" if ratio > 20 else "ce"
        facts.put("loss.name", loss, f"imbalance ratio {ratio:g} in images"
                  + ("; focal loss down-weights the easy majority" if loss == "focal" else ""))  # fmt: skip
        facts.weigh_classes(3)

    def plan_orientation(self, facts: PlanFacts) -> bool:
        if facts.size <= 64 and facts.bands == 1:
            facts.put("augment.hflip", 0.0, "small single-band images (glyphs, digits): "
                      "mirroring can change the class")  # fmt: skip
            return True
        return False

    def plan_scale(self, facts: PlanFacts) -> None:
        if facts.side >= 1.5 * facts.size:
            facts.put("augment.scale", [0.5, 1.0], f"images ({facts.side} px) are larger than the "
                      f"input ({facts.size} px): random crops of half to all of the area add "
                      "scale variety")  # fmt: skip

    def stratum(self, sample: Sample) -> int:
        return int(sample.target)  # type: ignore[arg-type]

    def fingerprint_targets(
        self,
        fp: Fingerprint,
        index: DatasetIndex,
        good: list[Sample],
        records: dict[Path, dict[str, Any]],
        lossy_masks: str,
    ) -> list[int] | None:
        from liandan.data.fingerprint import label_frequencies

        return label_frequencies(fp, index, good)

    def evaluate_samples(
        self,
        predictor: Predictor,
        checked: CheckedDataset,
        samples: list[Sample],
        bands: list[int] | None,
    ) -> SampleResults:
        from liandan.reporting.samples import evaluate_label_samples

        return evaluate_label_samples(predictor, checked, samples, bands)

    def metric_extras(self, results: SampleResults) -> dict[str, Any]:
        from liandan.metrics_extra import classification_extras

        assert results.probs is not None and results.targets is not None
        return classification_extras(
            results.probs, results.targets, results.classes, matrix=results.confusion
        )

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
        from liandan.reporting.build import label_sections

        return label_sections(run, results, predictor, checked, cfg, meta, out)

    def predict_array(
        self, predictor: Predictor, image: np.ndarray, path: Path | str
    ) -> np.ndarray:
        from liandan.data.transforms import eval_resize_crop

        # resize (and centre-crop, with augment.eval_resize) the raw image first, then
        # normalize: the order training's validation used
        raw = eval_resize_crop(image, predictor.image_size, predictor.meta.get("eval_resize"))
        x = predictor.prepare(raw, path)
        return predictor.forward_batch(x.transpose(2, 0, 1)[None])[0]

    def decide(self, probs: np.ndarray) -> Any:
        return int(probs.argmax())

    def planned_outputs(
        self, files: Sequence[Path], out_dir: Path, probs: bool, vector: str | None
    ) -> tuple[list[Path], list[Path]]:
        table = out_dir / "predictions.csv"
        return ([table], [table]) if files else ([], [])

    def write_predictions(
        self, preds: list[Prediction], predictor: Predictor, out_dir: Path
    ) -> list[Path]:
        from liandan.predict_outputs import write_predictions_csv

        write_predictions_csv(preds, predictor, out_dir / "predictions.csv")
        return [out_dir / "predictions.csv"]

    def export_sizes(self, meta: dict[str, Any]) -> list[tuple[int, int]]:
        size = int(meta.get("image_size", 224))
        return [(size, size), (size, size)]

    def output_axes(self, num_classes: int) -> list[str | int]:
        return ["batch", num_classes]

    def class_counts(self, dataset: Any, samples: list[Sample], num_classes: int) -> np.ndarray:
        import numpy as np

        counts = np.zeros(num_classes, dtype=np.int64)
        for s in samples:
            counts[int(s.target)] += 1  # type: ignore[arg-type]
        return counts

    def geometry(self, cfg: AugmentConfig, image_size: int, train: bool) -> list[Any]:
        from liandan.data.transforms import resized_geometry

        return resized_geometry(cfg, image_size, train)

    def augment_sample(
        self, dataset: Any, image: np.ndarray, sample: Sample
    ) -> tuple[np.ndarray, torch.Tensor]:
        import torch

        assert isinstance(sample.target, int)
        return dataset.augment(image=image)["image"], torch.tensor(sample.target, dtype=torch.int64)

    def balance(
        self,
        dataset: Any,
        samples: list[Sample],
        num_classes: int,
        size: int,
        generator: torch.Generator,
    ) -> Any:
        from liandan.data.samplers import balanced_sampler

        labels = [int(s.target) for s in samples]  # type: ignore[arg-type]
        return balanced_sampler(labels, num_classes, generator)


register_task(Classify())
