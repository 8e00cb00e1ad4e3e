"""Detection canvases (neuralode.data.canvas): exact boxes, limited overlap, determinism by seed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from neuralode.data.canvas import make_canvases
from neuralode.data.images import ImageSet

SHARED = Path(os.environ.get("NEURALODE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="module")
def mnist_digits() -> ImageSet:
    os.environ.setdefault("NEURALODE_DATA", str(SHARED))
    from neuralode.data.mnist import load_mnist

    return load_mnist("test").subset(500, seed=0)


def _solid_objects(n: int = 6, side: int = 8) -> ImageSet:
    """Objects of one uniform colour each (10, 40, 70, ...), so pasted pixels identify their object."""
    colours = torch.arange(n) * 30 + 10
    images = colours.view(n, 1, 1, 1).expand(n, 3, side, side).to(torch.uint8).clone()
    return ImageSet(images, torch.arange(n) % 3, ["a", "b", "c"], "solid")


def test_ink_boxes_are_the_tight_boxes_of_the_pasted_digits(mnist_digits):
    # disjoint boxes on black: every pixel with ink lies in a box, and each box edge touches ink
    cs = make_canvases(mnist_digits, 40, size=64, seed=3, objects_per_canvas=(1, 4), scale=(0.5, 1.5),
                       max_overlap=0.0, mode="ink", ink_threshold=32)
    assert cs.n_objects() > 60
    for img, boxes in zip(cs.images, cs.boxes):
        ink = img[0] > 32
        covered = torch.zeros_like(ink)
        for x0, y0, x1, y1 in boxes.int().tolist():
            covered[y0:y1, x0:x1] = True
            box_ink = ink[y0:y1, x0:x1]
            assert box_ink[0].any() and box_ink[-1].any() and box_ink[:, 0].any() and box_ink[:, -1].any()
        assert not (ink & ~covered).any()
        assert (img[0][~covered] == 0).all()  # nothing but the digits was drawn


def test_paste_boxes_hold_exactly_the_pasted_object_on_a_photo_background():
    objects = _solid_objects()
    g = torch.Generator().manual_seed(0)
    photo = torch.randint(200, 256, (3, 120, 150), dtype=torch.uint8, generator=g)  # brighter than any object
    cs = make_canvases(objects, 30, size=48, seed=5, objects_per_canvas=(1, 3), scale=(0.5, 2.0),
                       max_overlap=0.0, mode="paste", backgrounds=[photo])
    for img, boxes, srcs in zip(cs.images, cs.boxes, cs.sources):
        is_object = img[0] < 200
        covered = torch.zeros_like(is_object)
        for (x0, y0, x1, y1), k in zip(boxes.int().tolist(), srcs.tolist()):
            assert (img[:, y0:y1, x0:x1] == objects.images[k, 0, 0, 0]).all()
            covered[y0:y1, x0:x1] = True
        assert not (is_object & ~covered).any()  # the background fills everything else


def test_boxes_overlap_at_most_max_overlap_of_the_smaller_box():
    cs = make_canvases(_solid_objects(), 60, size=40, seed=1, objects_per_canvas=(3, 5), scale=(1.0, 3.0),
                       max_overlap=0.25, mode="paste")
    worst = 0.0
    for boxes in cs.boxes:
        b = boxes.tolist()
        for i in range(len(b)):
            for j in range(i):
                iw = min(b[i][2], b[j][2]) - max(b[i][0], b[j][0])
                ih = min(b[i][3], b[j][3]) - max(b[i][1], b[j][1])
                if iw > 0 and ih > 0:
                    area = min((u[2] - u[0]) * (u[3] - u[1]) for u in (b[i], b[j]))
                    worst = max(worst, iw * ih / area)
    assert 0.0 < worst <= 0.25  # overlaps happen, within the limit


def test_canvases_are_deterministic_by_seed_and_independent_of_their_number(mnist_digits):
    a = make_canvases(mnist_digits, 5, size=48, seed=7, scale=(0.5, 1.5))
    b = make_canvases(mnist_digits, 5, size=48, seed=7, scale=(0.5, 1.5))
    c = make_canvases(mnist_digits, 3, size=48, seed=7, scale=(0.5, 1.5))
    d = make_canvases(mnist_digits, 5, size=48, seed=8, scale=(0.5, 1.5))
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes))
    assert torch.equal(a.images[:3], c.images) and all(torch.equal(x, y) for x, y in zip(a.labels, c.labels))
    assert not torch.equal(a.images, d.images)
    assert a.recipe["seed"] == 7 and a.recipe["mode"] == "ink"
    for labels, srcs in zip(a.labels, a.sources):  # labels are the pasted images' labels
        assert torch.equal(labels, mnist_digits.labels[srcs])


def test_bad_generator_settings_are_named():
    objects = _solid_objects()
    with pytest.raises(ValueError, match="mode='blend'"):
        make_canvases(objects, 1, mode="blend")
    with pytest.raises(ValueError, match="exceed the canvas size=16"):
        make_canvases(objects, 1, size=16, scale=(1.0, 3.0))
    with pytest.raises(ValueError, match="objects_per_canvas"):
        make_canvases(objects, 1, objects_per_canvas=(3, 1))
    with pytest.raises(ValueError, match="max_overlap"):
        make_canvases(objects, 1, max_overlap=1.5)
