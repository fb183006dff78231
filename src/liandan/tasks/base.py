"""The interface every task implements.

A :class:`Task` holds what differs between tasks and only that: how targets are read,
checked and kept aligned by transforms, how a split is stratified, the default model,
loss, monitor and search space, what predict writes and what the report shows. The
shared machinery calls these methods; it never tests a task's name.

Methods import what they use when called, so that importing the registry (as reading a
config does) stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import torch

    from liandan.config import AugmentConfig, Config, LossConfig, TrainConfig
    from liandan.data.fingerprint import Fingerprint
    from liandan.data.layouts import ClassSpec, DatasetIndex, Sample
    from liandan.data.problems import Problem
    from liandan.data.scan import CheckedDataset, TargetCheck
    from liandan.data.transforms import Normalizer
    from liandan.planning import PlanFacts
    from liandan.prediction import Prediction, Predictor
    from liandan.reporting.samples import SampleResults


class Task:
    """One computer-vision task; subclasses fill in the class attributes and methods."""

    name: ClassVar[str]
    title: ClassVar[str]  # the name in prose: "segmentation"
    aliases: ClassVar[tuple[str, ...]] = ()
    targets: ClassVar[str]  # what a sample's target is, in words ("masks", "image labels")
    headline: ClassVar[str]  # the metrics.json overall key that ranks runs
    default_loss: ClassVar[str]
    # the largest batch the automatic batch size picks on a GPU / a CPU (on a CPU,
    # throughput stops growing at small batches while each step gets slower)
    batch_cap_gpu: ClassVar[int]
    batch_cap_cpu: ClassVar[int]
    # `liandan demo --task NAME`: its config overrides, small enough for 2 CPU cores
    demo_settings: ClassVar[tuple[str, ...]] = ()
    # mixup / cutmix mix whole-image labels; dense targets cannot be mixed that way
    mixes_labels: ClassVar[bool] = False
    # every timm classifier is an architecture of this task (``model.arch=convnext_atto``)
    timm_classifiers: ClassVar[bool] = False
    # exported models take any input size by default (rather than the training one)
    dynamic_export: ClassVar[bool] = False
    # large or georeferenced rasters are trained on tiles and predicted streamed
    uses_raster_tiles: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------------ defaults
    @property
    def monitor(self) -> str:
        """The validation metric checkpoints and early stopping follow."""
        return f"val/{self.headline}"

    def default_arch(self, image_size: int | None = None) -> str:
        """The architecture ``model.arch=auto`` resolves to (for inputs of ``image_size``)."""
        raise NotImplementedError

    def misplaced_arch_hint(self, arch: str, owner: Task) -> str:
        """What to do when ``arch`` is an architecture of the task ``owner`` instead."""
        return f"{arch} is a {owner.title} architecture; set task: {owner.name}"

    def probe_loss(self, model: torch.nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
        """A training loss of ``model`` on the batch ``x`` with random targets (memory probes)."""
        raise NotImplementedError

    def search_space(self) -> dict[str, Any]:
        """Task-specific entries added to the default tuning search space."""
        return {}

    def make_demo(self, folder: Path) -> None:
        """Write the embedded demo dataset (no download) into ``folder``."""
        from liandan.errors import ConfigError

        raise ConfigError(f"the {self.name} task has no demo yet", where="--task")

    def finish_demo(self, run_dir: Path, data_dir: Path) -> tuple[Path | None, Any]:
        """After the demo trained: predict its scene (``data_dir/scene/scene.tif``, when
        the demo has one) into ``run_dir/predictions`` and score it against its truth
        (``scene_mask.tif``). Returns the predictions folder and the scene's metrics
        (None where there is no scene or no truth)."""
        from liandan.prediction import predict
        from liandan.scoring import score

        scene = data_dir / "scene" / "scene.tif"
        if not scene.is_file():
            return None, None
        pred_dir = run_dir / "predictions"
        predict(run_dir, [scene], out=pred_dir)
        truth = data_dir / "scene" / "scene_mask.tif"
        return pred_dir, score(pred_dir / "scene.tif", truth) if truth.is_file() else None

    def refuse(self, command: str) -> None:
        """Raise a :class:`~liandan.errors.ConfigError` where this task cannot do
        ``command`` (``predict``, ``export``, ``tune``, ``report``, ``folds``) yet; the built-in
        tasks do them all."""

    # ------------------------------------------------------------------ training
    # The defaults serve networks that map images to class logits, trained with a loss
    # of (logits, target) and validated with a confusion matrix (classify, segment).
    # the validation metrics logged each epoch (metrics.json "overall" keys)
    logged_metrics: ClassVar[tuple[str, ...]] = (
        "accuracy",
        "balanced_accuracy",
        "kappa",
        "macro_f1",
        "mean_iou",
    )

    def build_criterion(
        self,
        cfg: LossConfig,
        num_classes: int,
        *,
        ignore_index: int,
        class_weights: torch.Tensor | None,
    ) -> torch.nn.Module:
        """The training loss (``loss.*``); a module, so that it moves with the model."""
        from liandan.losses import build_loss

        return build_loss(
            cfg,
            task=self.name,
            num_classes=num_classes,
            ignore_index=ignore_index,
            class_weights=class_weights,
        )

    def batch_loss(
        self, model: torch.nn.Module, criterion: torch.nn.Module, x: torch.Tensor, y: Any
    ) -> torch.Tensor:
        """The training loss of ``model`` on one batch."""
        return criterion(model(x), y)  # type: ignore[no-any-return]

    def validation_meter(self, num_classes: int, ignore_index: int, device: Any) -> Any:
        """A fresh accumulator of one validation pass (moved to ``device`` when given)."""
        from liandan.metrics import ConfusionMatrix

        return ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)

    def validate_batch(
        self,
        model: torch.nn.Module,
        criterion: torch.nn.Module,
        x: torch.Tensor,
        y: Any,
        meter: Any,
    ) -> torch.Tensor | None:
        """Count one validation batch into ``meter``; its loss (None: not computed)."""
        logits = model(x)
        meter.update(logits.argmax(1), y)
        return criterion(logits, y)  # type: ignore[no-any-return]

    def validation_metrics(
        self, meter: Any, class_names: list[str], gather: Any = None
    ) -> tuple[dict[str, Any], Any]:
        """metrics.json's dict of a validation pass, and the state checkpoints keep.

        Args:
            meter: the pass's accumulator (see :meth:`validation_meter`).
            class_names: one name per class.
            gather: ``LightningModule.all_gather`` when several processes validated
                their shares of the samples, else None.
        """
        from liandan.metrics import compute_metrics

        matrix = meter.matrix
        if gather is not None:  # (world, C, C) -> (C, C): one matrix over all ranks
            matrix = gather(matrix).sum(0)
        matrix = matrix.detach().cpu()
        metrics = compute_metrics(matrix.numpy(), class_names, task=self.name, split="val")
        return metrics, matrix

    # ---------------------------------------------------------------------- plan
    # ``liandan plan``'s task-specific rules, called in this order; each records its
    # choices with ``facts.put(key, value, reason)`` (see :mod:`liandan.planning`).
    def plan_input(self, facts: PlanFacts) -> None:
        """Choose the training input side (``facts.size``; tiles: ``facts.tiled``)."""
        raise NotImplementedError

    def plan_model(self, facts: PlanFacts) -> int:
        """Choose the architecture; return its training memory per input pixel (floats)."""
        raise NotImplementedError

    def plan_loss(self, facts: PlanFacts) -> None:
        """Choose the loss and class weights from the imbalance ratio."""
        raise NotImplementedError

    def plan_orientation(self, facts: PlanFacts) -> bool:
        """Choose flips and rotations for non-overhead data; False: the upright default."""
        return False

    def plan_scale(self, facts: PlanFacts) -> None:
        """Choose ``augment.scale`` (nothing: the default)."""
        return None

    def plan_predict(self, facts: PlanFacts) -> None:
        """Choose ``predict.*`` keys (nothing: the defaults)."""
        return None

    # ---------------------------------------------------------------------- data
    def stratum(self, sample: Sample) -> int:
        """The group a sample is dealt from when splitting (one group: no stratification)."""
        return 0

    def class_counts(self, dataset: Any, samples: list[Sample], num_classes: int) -> np.ndarray:
        """How often each class occurs in ``samples`` (the unit is the task's: images, pixels)."""
        raise NotImplementedError

    def balance(
        self,
        dataset: Any,
        samples: list[Sample],
        num_classes: int,
        size: int,
        generator: torch.Generator,
    ) -> Any:
        """``data.sampler=balanced``: a sampler to use (or None after adjusting ``dataset``)."""
        raise NotImplementedError

    def validation_source(
        self, dataset: Any, size: int, batch: int, wanted: int, train: TrainConfig
    ) -> tuple[Any, int, str | None]:
        """What validation iterates during training, its batch size, and a note (or None).

        Args:
            dataset: the validation dataset.
            size: the training crop side.
            batch: the training batch size; ``wanted``: the resolved ``train.batch_size``.
            train: the ``train`` config section.
        """
        return dataset, wanted, None

    def build_datasets(
        self,
        cfg: Config,
        checked: CheckedDataset,
        splits: dict[str, list[Sample]],
        normalizer: Normalizer,
    ) -> tuple[Any, Any]:
        """The training and validation datasets of ``splits`` (items: image, target).

        The default reads, augments (:meth:`geometry`, :meth:`augment_sample`) and
        normalizes one sample per item.
        """
        from liandan.data.datasets import SampleDataset
        from liandan.data.transforms import build_augment, dtype_max

        augment = dict(
            task=self.name,
            image_size=cfg.data.image_size,
            bands=checked.in_channels,
            value_scale=dtype_max(checked.dtype),
            seed=cfg.train.seed,
        )
        common = dict(bands=cfg.data.bands, seed=cfg.train.seed)
        train = SampleDataset(
            splits["train"],
            checked,
            normalizer,
            build_augment(cfg.augment, train=True, **augment),  # type: ignore[arg-type]
            brightness_contrast_p=cfg.augment.brightness_contrast,
            **common,  # type: ignore[arg-type]
        )
        val = SampleDataset(
            splits["val"],
            checked,
            normalizer,
            build_augment(cfg.augment, train=False, **augment),  # type: ignore[arg-type]
            **common,  # type: ignore[arg-type]
        )
        return train, val

    def collate(self) -> Any:
        """How the data loaders put items together into a batch (default: padded tensors)."""
        from liandan.data.datasets import pad_collate

        return pad_collate

    def geometry(self, cfg: AugmentConfig, image_size: int, train: bool) -> list[Any]:
        """The albumentations ops that bring an image (and its target) to the input size."""
        raise NotImplementedError

    def augment_sample(
        self, dataset: Any, image: np.ndarray, sample: Sample
    ) -> tuple[np.ndarray, torch.Tensor]:
        """``dataset.augment`` applied to the image and its target, kept aligned.

        Returns:
            The augmented ``(H, W, C)`` image and the target as a tensor.
        """
        raise NotImplementedError

    # ------------------------------------------------------------ scan and checks
    def check_targets(
        self,
        index: DatasetIndex,
        problems: list[tuple[Sample, str]],
        targets: dict[Path, np.ndarray],
        lossy: dict[Path, str],
        blocking: list[str],
    ) -> TargetCheck:
        """Check the decoded targets when a dataset is loaded for training.

        Args:
            index: the dataset; its classes may be settled here (e.g. read from masks).
            problems: per-sample problems so far; append the targets' own.
            targets: decoded target files (mapped to class indices in place).
            lossy: target files in a lossy format -> the format.
            blocking: dataset problems so far (never skipped).
        """
        from liandan.data.scan import TargetCheck

        return TargetCheck()

    def target_problems(
        self,
        index: DatasetIndex,
        good: list[Sample],
        records: dict[Path, dict[str, Any]],
        lossy_masks: str,
        notes: list[str],
    ) -> list[Problem]:
        """``liandan scan``: the problems the targets' records show (``notes``: appended)."""
        return []

    def fingerprint_targets(
        self,
        fp: Fingerprint,
        index: DatasetIndex,
        good: list[Sample],
        records: dict[Path, dict[str, Any]],
        lossy_masks: str,
    ) -> list[int] | None:
        """Fill the fingerprint's classes; their frequencies, or None when not counted."""
        raise NotImplementedError

    def adopt_classes(self, index: DatasetIndex, classes: ClassSpec) -> None:
        """Evaluating a run on data: its classes must be the model's (or are made so)."""
        from liandan.errors import ConfigError

        if index.classes.names != classes.names:
            raise ConfigError(
                f"the dataset's classes {index.classes.names} differ from the model's "
                f"{classes.names}",
                where=index.root,
            )

    # ------------------------------------------------------------- evaluation
    def evaluate_samples(
        self,
        predictor: Predictor,
        checked: CheckedDataset,
        samples: list[Sample],
        bands: list[int] | None,
    ) -> SampleResults:
        """Predict and count every sample, keeping what the report shows per sample."""
        raise NotImplementedError

    def score_results(
        self, results: SampleResults, class_names: list[str], split: str
    ) -> dict[str, Any]:
        """metrics.json's dict of an evaluated split (default: from the confusion matrix,
        plus :meth:`metric_extras`)."""
        from liandan.metrics import compute_metrics
        from liandan.metrics_extra import add_extras

        metrics = compute_metrics(results.confusion, class_names, task=self.name, split=split)
        add_extras(metrics, results.extras())
        return metrics

    def metric_extras(self, results: SampleResults) -> dict[str, Any]:
        """The task's extra metrics.json entries (see :mod:`liandan.metrics_extra`)."""
        return {}

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
        """report.html's task sections after the shared ones (``out``: the plots folder)."""
        return []

    def split_counts(
        self, checked: CheckedDataset, samples: list[Sample], num_classes: int
    ) -> tuple[np.ndarray, np.ndarray, str] | None:
        """The report's per-class counts of a split, when the task counts its own
        targets: images containing each class, the class's units and their name
        (``"boxes"``); None: the shared counts (image labels, or mask pixels)."""
        return None

    # ---------------------------------------------------------------- predict
    def slices_raster(self, path: Path) -> bool:
        """Whether predict handles ``path`` its own streamed way (:meth:`predict_sliced`)
        instead of the shared image and raster paths (default: never)."""
        return False

    def predict_sliced(
        self, predictor: Predictor, path: Path, out_dir: Path
    ) -> tuple[Prediction, list[Path]]:
        """Predict a raster :meth:`slices_raster` claims, writing into ``out_dir``: the
        in-memory prediction and the files written."""
        raise NotImplementedError(f"{self.name} does not predict rasters slice by slice")

    def merge_flipped(self, out: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """Test-time augmentation: the prediction of a flipped input, in the input's frame."""
        return out

    def predict_array(
        self, predictor: Predictor, image: np.ndarray, path: Path | str
    ) -> np.ndarray:
        """The model's output for one raw ``(H, W, C)`` image, as probabilities."""
        raise NotImplementedError

    def decide(self, probs: np.ndarray) -> Any:
        """The prediction from the probabilities (a class, a class map)."""
        raise NotImplementedError

    def planned_outputs(
        self, files: Sequence[Path], out_dir: Path, probs: bool, vector: str | None
    ) -> tuple[list[Path], list[Path]]:
        """Every file ``liandan predict`` writes for ``files``, and the input each comes from."""
        raise NotImplementedError

    def write_prediction(self, pred: Prediction, predictor: Predictor, out_dir: Path) -> list[Path]:
        """Write one in-memory prediction's files; the paths written."""
        return []

    def write_predictions(
        self, preds: list[Prediction], predictor: Predictor, out_dir: Path
    ) -> list[Path]:
        """Write what covers all the inputs (e.g. one table) once all are predicted."""
        return []

    # ------------------------------------------------------------------ score
    def scores(self, pred: Path, truth: Path) -> bool:
        """Whether ``liandan score PRED TRUTH`` is this task's to score, ``pred`` being
        in a form of its own (default: no; the shared scorer reads masks and label CSVs)."""
        return False

    def score_files(
        self, pred: Path, truth: Path, score_threshold: float | None = None
    ) -> dict[str, Any]:
        """metrics.json's dict of the predictions in ``pred`` against ``truth``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- export
    def export_sizes(self, meta: dict[str, Any]) -> list[tuple[int, int]]:
        """Input sizes an exported model is checked at against PyTorch (two, or one twice)."""
        raise NotImplementedError

    def output_axes(self, num_classes: int) -> list[str | int]:
        """The exported output's axes, as model.json records them."""
        raise NotImplementedError

    def export_module(
        self, model: torch.nn.Module, meta: dict[str, Any], size: tuple[int, int]
    ) -> tuple[torch.nn.Module, list[str] | None, dict[str, Any]]:
        """What ``liandan export`` exports for inputs of ``size``: the module, its output
        names (None: the one ``logits``) and entries model.json's ``export`` gains
        (default: the network itself, nothing more)."""
        return model, None, {}

    def check_export(
        self,
        model: torch.nn.Module,
        exported: torch.nn.Module,
        runner: Any,
        meta: dict[str, Any],
        sizes: list[tuple[int, int]],
        generator: torch.Generator,
    ) -> dict[str, float]:
        """Compare the written export (``runner``: a batch -> its outputs) with PyTorch;
        raise :class:`~liandan.errors.ConfigError` when it differs; the figures model.json
        records (default: class probabilities within the exporter's tolerance)."""
        from liandan.exporting import check_probabilities

        return check_probabilities(model, runner, meta, sizes, generator)

    def wrap_export(self, module: torch.nn.Module, meta: dict[str, Any]) -> torch.nn.Module:
        """How a loaded export is called at predict time (default: as it is)."""
        return module

    def target_mapper(self, classes: ClassSpec) -> Any:
        """What turns a stored target into class indices (None: targets are indices)."""
        return None

    def prepare_classes(self, index: DatasetIndex, root: Path, ignore_index: int | None) -> None:
        """Settle ``index.classes`` from files beside the data (e.g. classes.yaml)."""
        return None

    def reads_classes_yaml(self) -> bool:
        """Whether ``classes.yaml`` beside the data describes this task's targets."""
        return False
