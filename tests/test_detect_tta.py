"""Detection test-time augmentation: boxes found on flipped inputs map back exactly,
and weighted boxes fusion keeps what every view finds and discounts what one view
alone believes in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from liandan.tasks.detect.tta import FLIPS, FlipTTA, fuse_boxes, unflip


class BrightSquare(nn.Module):
    """A perfect, flip-equivariant 'detector': the box of the pixels above 0.5 (class 1,
    score 0.9), plus a false alarm that is always at the input's top-left corner
    (class 0, score 0.6), wherever that lands once the flip is undone."""

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
            box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            out.append(
                {
                    "boxes": torch.stack([box, torch.tensor([0.0, 0.0, 4.0, 4.0])]),
                    "scores": torch.tensor([0.9, 0.6]),
                    "labels": torch.tensor([1, 0]),
                }
            )
        return out


def square_image(top: int, left: int, h: int = 40, w: int = 56) -> torch.Tensor:
    image = torch.zeros(1, 3, h, w)
    image[:, :, top : top + 10, left : left + 14] = 1.0
    return image


@pytest.mark.parametrize("dims", FLIPS)
def test_boxes_of_a_flipped_input_map_back_to_the_object(dims: tuple[int, ...]) -> None:
    image = square_image(5, 30)
    found = BrightSquare()(torch.flip(image, dims) if dims else image)[0]["boxes"][:1]
    assert unflip(found, dims, 40, 56).tolist() == [[30.0, 5.0, 44.0, 15.0]]


def test_fusion_keeps_agreeing_boxes_and_discounts_lonely_ones() -> None:
    boxes = np.array(
        [[10, 10, 20, 20], [11, 10, 21, 20], [10, 11, 20, 21], [50, 50, 60, 60], [10, 10, 20, 20]],
        float,
    )
    scores = np.array([0.9, 0.6, 0.9, 0.9, 0.8])
    labels = np.array([1, 1, 1, 1, 0])  # the last: another class at the same place
    out_boxes, out_scores, out_labels = fuse_boxes(boxes, scores, labels, passes=3)
    assert out_labels.tolist() == [1, 1, 0]
    assert out_scores == pytest.approx([0.8, 0.3, 0.8 / 3])  # found 3/3, 1/3, 1/3 times
    w = np.array([0.9, 0.9, 0.6])  # score-weighted mean, best first
    mean = (boxes[[0, 2, 1]] * w[:, None]).sum(0) / w.sum()
    np.testing.assert_allclose(out_boxes[0], mean)
    np.testing.assert_allclose(out_boxes[1], [50, 50, 60, 60])


def test_flip_tta_finds_the_object_once_and_discounts_the_false_alarm() -> None:
    found = FlipTTA(BrightSquare())(torch.cat([square_image(5, 30), square_image(20, 3)]))
    assert len(found) == 2
    first = found[0]
    # the object: every view agrees, score kept; the corner false alarm lands in three
    # different corners once unflipped, each found by one view
    assert first["boxes"][0].tolist() == pytest.approx([30.0, 5.0, 44.0, 15.0])
    assert first["scores"][0].item() == pytest.approx(0.9)
    assert first["labels"].tolist() == [1, 0, 0, 0]
    assert first["scores"][1:].tolist() == pytest.approx([0.2] * 3)
    assert found[1]["boxes"][0].tolist() == pytest.approx([3.0, 20.0, 17.0, 30.0])


def test_flip_tta_runs_only_the_flips_it_is_given() -> None:
    """Predictor.tta_flips (the flips training used) reach the detector's TTA: a model
    trained upright is not run upside down."""
    seen: list[torch.Tensor] = []

    class Recording(BrightSquare):
        def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            seen.append(images.clone())
            return super().forward(images)

    image = square_image(5, 30)
    found = FlipTTA(Recording(), flips=[(3,)])(image)
    assert len(seen) == 2
    assert torch.equal(seen[0], image) and torch.equal(seen[1], torch.flip(image, (3,)))
    assert found[0]["scores"][0].item() == pytest.approx(0.9)  # both views agree
