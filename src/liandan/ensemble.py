"""Several trained networks as one: the mean of their class probabilities.

A k-fold parent run (``liandan train DATA --folds K``) keeps ``model/model.json`` with
an ``ensemble`` list of its members' folders; :func:`load_ensemble` builds an
:class:`Ensemble`, which the Predictor uses like any network (images, rasters, TTA),
so prediction memory grows with the number of members, never with the input's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from liandan.errors import CheckpointError


class Ensemble(nn.Module):
    """Averages the softmax probabilities of ``members``; returns their logarithm.

    ``softmax(log(mean p)) == mean p``, so code that applies a softmax to a network's
    output gets the averaged probabilities. Classification and segmentation alike:
    ``(N, C)`` or ``(N, C, H, W)`` outputs, averaged over the class dimension's softmax.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, ...) per member -> mean probability -> log, in float32 for the sum
        probs = sum(torch.softmax(m(x).float(), dim=1) for m in self.members)
        assert isinstance(probs, torch.Tensor)
        return torch.log((probs / len(self.members)).clamp_min(1e-12))


def load_ensemble(folder: Path, meta: dict[str, Any]) -> Ensemble:
    """Load the members named in ``meta["ensemble"]`` (folders relative to the run).

    Raises:
        CheckpointError: a member is missing, or was trained on other classes or inputs.
    """
    from liandan.runs import load_model

    run = folder.parent if folder.name == "model" else folder
    members = []
    for name in meta["ensemble"]:
        model, member_meta = load_model(run / name)
        for key in ("task", "classes", "in_channels", "normalization"):
            if member_meta.get(key) != meta.get(key):
                raise CheckpointError(
                    f"ensemble member {name} differs in {key!r} from the ensemble",
                    where=run / name,
                    hint="members must come from one k-fold run (liandan train --folds K)",
                )
        members.append(model)
    return Ensemble(members).eval()
