"""One streaming confusion matrix -> every metric.

:class:`ConfusionMatrix` accumulates an ``int64`` matrix (rows = truth, columns =
prediction) from batches of class indices on the tensors' own device. :func:`compute_metrics`
turns a finished matrix into the ``metrics.json`` dictionary of ``docs/metrics.md``: a
metric whose denominator is zero is ``None`` and is left out of every mean, and
F1/F-beta/Dice follow scikit-learn (``2TP / (2TP + FP + FN)``).

>>> cm = ConfusionMatrix(2)
>>> cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
>>> cm.numpy().tolist()
[[1, 1], [0, 1]]
>>> compute_metrics(cm.numpy(), ["a", "b"], task="classify", split="val")["overall"]["accuracy"]
0.6666666666666666
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from rich.table import Table

__all__ = [
    "OVERALL_KEYS",
    "PER_CLASS_KEYS",
    "ConfusionMatrix",
    "compute_metrics",
    "metrics_table",
    "most_confused",
    "per_class_table",
]

OVERALL_KEYS = tuple(
    "accuracy balanced_accuracy kappa macro_precision macro_recall macro_f1 mean_iou mean_dice"
    " fw_iou weighted_precision weighted_recall weighted_f1 macro_fbeta beta num_samples".split()
)
PER_CLASS_KEYS = ("precision", "recall", "f1", "fbeta", "iou", "dice", "support")

# CPU inputs are counted in chunks of this many elements: each chunk's index tensor stays
# in cache, and each op stays under torch's parallel grain size (32768), so it runs on
# the calling thread and never stalls on busy cores.
_CHUNK = 1 << 15
# Largest (value range of target) x (value range of preds) counted by one histogram;
# wider ranges (stray huge labels) fall back to masking.
_MAX_BINS = 1 << 16
_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


class ConfusionMatrix:
    """Streaming int64 confusion matrix, rows = truth, columns = prediction.

    Args:
        num_classes: number of classes ``n``; labels are ``0 .. n-1``.
        ignore_index: target value whose pixels/samples are not counted (``None``: none).
        device: where the matrix lives. ``None``: on the device of the first update.

    Counting runs on the inputs' device with one ``torch.bincount`` per chunk; only the
    ``n x n`` counts are moved to the matrix's device.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = -1,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self._device = None if device is None else torch.device(device)
        self._matrix: torch.Tensor | None = None
        self._buffers: dict[torch.dtype, torch.Tensor] = {}  # CPU scratch, reused
        if self._device is not None:
            self._matrix = self._zeros(self._device)

    def _zeros(self, device: torch.device) -> torch.Tensor:
        n = self.num_classes
        return torch.zeros((n, n), dtype=torch.int64, device=device)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch.

        Args:
            preds: predicted class indices, an integer tensor of any shape.
            target: true class indices, same shape as ``preds``.

        Raises:
            TypeError: a tensor is not of an integer (or bool) dtype.
            ValueError: the shapes differ, or a counted target or prediction lies
                outside ``[0, num_classes)``.
        """
        p, t = _as_labels(preds, "preds"), _as_labels(target, "target")
        if p.shape != t.shape:
            raise ValueError(f"preds {tuple(p.shape)} and target {tuple(t.shape)} differ")
        if p.device != t.device:
            p = p.to(t.device)
        p, t = p.reshape(-1), t.reshape(-1)
        size, n = t.numel(), self.num_classes
        if size == 0:
            return
        # On CPU, chunks small enough to stay in cache and to run each op on one thread.
        step = max(_CHUNK, 4 * n * n) if t.device.type == "cpu" else size
        wide = torch.int32 if 2 * n * n < 2**31 else torch.int64
        common = torch.promote_types(t.dtype, p.dtype)
        fast: torch.dtype | None = None  # dtype in which t * n + p is one op, if any
        if torch.iinfo(common).max >= n * n - 1:
            fast = common if common in (torch.uint8, torch.int8, torch.int16) else wide
        counts = self._zeros(t.device)
        for start in range(0, size, step):
            stop = min(start + step, size)
            self._count(p[start:stop], t[start:stop], counts, fast, wide)
        if self._matrix is None:
            self._matrix = self._zeros(counts.device)
        self._matrix += counts.to(self._matrix.device)

    def _count(
        self,
        p: torch.Tensor,
        t: torch.Tensor,
        out: torch.Tensor,
        fast: torch.dtype | None,
        wide: torch.dtype,
    ) -> None:
        """Add the counts of one flat chunk to ``out``, validating its labels.

        ``fast``: dtype of the one-op index ``t * n + p`` (``None``: not safe);
        ``wide``: dtype of the index of the wide-range histogram.
        """
        n, ignore, size = self.num_classes, self.ignore_index, t.numel()
        t_range, p_range = torch.aminmax(t), torch.aminmax(p)
        t_min, t_max = int(t_range.min), int(t_range.max)
        p_min, p_max = int(p_range.min), int(p_range.max)
        ignored = ignore is not None and t_min <= ignore <= t_max
        if fast is not None and 0 <= min(t_min, p_min) and max(t_max, p_max) < n and not ignored:
            index = torch.add(p, t, alpha=n, out=self._scratch(fast, t))
            out += torch.bincount(index, minlength=n * n).view(n, n)
            return
        t_lo, t_hi, p_lo, p_hi = min(t_min, 0), max(t_max, n - 1), min(p_min, 0), max(p_max, n - 1)
        rows, cols = t_hi - t_lo + 1, p_hi - p_lo + 1
        if rows * cols > max(_MAX_BINS, 2 * n * n):
            out += self._count_masked(p, t)
            return
        # One histogram over the chunk's whole value range: ignored and invalid labels
        # land in bins of their own, so nothing is masked or copied.
        index = self._scratch(wide, t)
        index.copy_(t)
        index.mul_(cols).add_(p)
        offset = t_lo * cols + p_lo
        if offset:
            index.sub_(offset)
        hist = torch.bincount(index, minlength=rows * cols).view(rows, cols)
        skipped = 0
        if ignore is not None and ignored:
            skipped = int(hist[ignore - t_lo].sum())
            hist[ignore - t_lo] = 0
        counts = hist[-t_lo : n - t_lo, -p_lo : n - p_lo]
        if int(counts.sum()) + skipped != size:
            rows_ok = int(hist[-t_lo : n - t_lo].sum()) + skipped == size
            raise ValueError(
                f"{'preds' if rows_ok else 'target'} holds a class index outside [0, {n}) "
                f"(target spans [{t_min}, {t_max}], preds [{p_min}, {p_max}]; "
                f"ignore_index={ignore})"
            )
        out += counts

    def _scratch(self, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised 1-D tensor as long as ``like``; CPU buffers are reused."""
        if like.device.type != "cpu":
            return torch.empty(like.numel(), dtype=dtype, device=like.device)
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.numel() < like.numel():
            buffer = self._buffers[dtype] = torch.empty(like.numel(), dtype=dtype)
        return buffer[: like.numel()]

    def _count_masked(self, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Slow path for chunks whose labels span a huge range: mask, check, count."""
        n = self.num_classes
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        for name, values in (("target", t), ("preds", p)):
            if values.numel() and bool(((values < 0) | (values >= n)).any()):
                bad = values[(values < 0) | (values >= n)][:5].tolist()
                raise ValueError(f"{name} holds class indices outside [0, {n}): {bad}")
        index = t.to(torch.int64) * n + p.to(torch.int64)
        return torch.bincount(index, minlength=n * n).view(n, n)

    def reset(self) -> None:
        """Set every count back to zero (the matrix stays on its device)."""
        if self._matrix is not None:
            self._matrix.zero_()

    @property
    def matrix(self) -> torch.Tensor:
        """A copy of the ``(n, n)`` int64 counts; rows = truth, columns = prediction."""
        if self._matrix is None:
            return self._zeros(torch.device("cpu"))
        return self._matrix.clone()

    def numpy(self) -> np.ndarray:
        """The counts as an ``(n, n)`` int64 NumPy array."""
        return self.matrix.cpu().numpy()

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix's counts to this one (e.g. from another process or image).

        Raises:
            ValueError: the two matrices have different numbers of classes.
        """
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix into a "
                f"{self.num_classes}-class one"
            )
        counts = other.matrix
        if self._matrix is None:
            self._matrix = self._zeros(self._device or counts.device)
        self._matrix += counts.to(self._matrix.device)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, "
            f"ignore_index={self.ignore_index}, total={int(self.matrix.sum())})"
        )


def _as_labels(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """``x`` as an integer tensor that torch's reductions support, copying only if needed."""
    tensor = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if tensor.dtype == torch.bool:
        return tensor.to(torch.uint8)
    if tensor.dtype in _UNSIGNED:
        return tensor.to(torch.int64)
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got {tensor.dtype}")
    return tensor


def _as_counts(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    """A square matrix of counts as an int64 NumPy array."""
    m = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {m.shape}")
    if m.dtype.kind not in "iub" and not np.array_equal(m, np.round(m)):
        raise ValueError("a confusion matrix holds whole counts")
    return m.astype(np.int64)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def _weighted(values: Sequence[float | None], weights: Sequence[int]) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
    return _ratio(sum(v * w for v, w in pairs), sum(w for _, w in pairs))


def compute_metrics(
    matrix: np.ndarray | torch.Tensor,
    classes: list[str],
    *,
    task: str,
    split: str,
    beta: float = 2.0,
) -> dict[str, Any]:
    """Every metric of ``metrics.json`` from a confusion matrix.

    Args:
        matrix: ``(n, n)`` counts, rows = truth, columns = prediction.
        classes: the ``n`` class names, in index order.
        task: ``classify`` or ``segment`` (recorded as is).
        split: the evaluated split, e.g. ``val`` (recorded as is).
        beta: the beta of the F-beta score (default 2: recall weighs more).

    Returns:
        ``{"task", "split", "classes", "overall", "per_class", "confusion_matrix"}`` of
        plain Python values; an undefined metric (zero denominator) is ``None``.

    Raises:
        ValueError: the matrix is not square, does not match ``classes``, or has
            negative counts.
    """
    m = _as_counts(matrix)
    n = len(classes)
    if m.shape != (n, n):
        raise ValueError(f"matrix of shape {m.shape} does not match {n} classes")
    if m.size and m.min() < 0:
        raise ValueError("a confusion matrix cannot hold negative counts")
    tp: list[int] = np.diag(m).tolist()
    support: list[int] = m.sum(axis=1).tolist()
    predicted: list[int] = m.sum(axis=0).tolist()
    total = sum(support)
    b2 = float(beta) ** 2

    per_class: dict[str, dict[str, Any]] = {}
    for name, t, s, p in zip(classes, tp, support, predicted, strict=True):
        fp, fn = p - t, s - t
        f1 = _ratio(2 * t, 2 * t + fp + fn)
        per_class[name] = {
            "precision": _ratio(t, p),
            "recall": _ratio(t, s),
            "f1": f1,
            "fbeta": _ratio((1 + b2) * t, (1 + b2) * t + b2 * fn + fp),
            "iou": _ratio(t, t + fp + fn),
            "dice": f1,
            "support": s,
        }

    def column(key: str) -> list[Any]:
        return [per_class[name][key] for name in classes]

    agreement = sum(r * c for r, c in zip(support, predicted, strict=True))
    kappa = _ratio(total * sum(tp) - agreement, total * total - agreement)
    ious = column("iou")
    overall: dict[str, Any] = {
        "accuracy": _ratio(sum(tp), total),
        "balanced_accuracy": _mean(column("recall")),
        "kappa": kappa,
        "macro_precision": _mean(column("precision")),
        "macro_recall": _mean(column("recall")),
        "macro_f1": _mean(column("f1")),
        "mean_iou": _mean(ious),
        "mean_dice": _mean(column("dice")),
        "fw_iou": _weighted(ious, support) if total else None,
        "weighted_precision": _weighted(column("precision"), support),
        "weighted_recall": _weighted(column("recall"), support),
        "weighted_f1": _weighted(column("f1"), support),
        "macro_fbeta": _mean(column("fbeta")),
        "beta": float(beta),
        "num_samples": total,
    }
    return {
        "task": task,
        "split": split,
        "classes": list(classes),
        "overall": overall,
        "per_class": per_class,
        "confusion_matrix": m.tolist(),
    }


def most_confused(
    matrix: np.ndarray | torch.Tensor, classes: Sequence[str], k: int = 5
) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells as ``(truth, predicted, count)``.

    Zero counts are dropped; ties keep row-major order.
    """
    off = _as_counts(matrix).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[: max(k, 0)]
    rows, cols = np.unravel_index(order, off.shape)
    return [
        (classes[i], classes[j], int(off[i, j]))
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True)
        if off[i, j] > 0
    ]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


_LABELS = {
    "macro_f1": "macro F1",
    "mean_iou": "mean IoU",
    "mean_dice": "mean Dice",
    "fw_iou": "freq.-weighted IoU",
    "weighted_f1": "weighted F1",
    "num_samples": "samples",
}


def metrics_table(metrics: dict[str, Any]) -> Table:
    """A two-column rich table of the overall metrics (``None`` shown as "—")."""
    overall = metrics["overall"]
    table = Table(title=f"{metrics.get('split', '')} metrics".strip())
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in overall.items():
        if key == "beta":
            continue  # shown in the F-beta label
        label = _LABELS.get(key, key.replace("_", " "))
        if key == "macro_fbeta" and overall.get("beta") is not None:
            label = f"macro F{overall['beta']:g}"
        table.add_row(label, _fmt(value))
    return table


def per_class_table(metrics: dict[str, Any]) -> Table:
    """A rich table with one row per class (``None`` shown as "—")."""
    beta = metrics.get("overall", {}).get("beta")
    table = Table(title="per class")
    table.add_column("class")
    for key in PER_CLASS_KEYS:
        label = f"F{beta:g}" if key == "fbeta" and beta is not None else key
        table.add_column(label, justify="right")
    for name in metrics["classes"]:
        row = metrics["per_class"][name]
        table.add_row(name, *(_fmt(row.get(key)) for key in PER_CLASS_KEYS))
    return table
