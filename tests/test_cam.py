from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from btxrd.cam import class_activation_map, grad_cam
from btxrd.cam.guidance import attention_loss
from btxrd.metrics.localization import (
    cam_iou,
    energy_in_boxes,
    localization_per_image,
    localization_scores,
    pointing_hit,
)
from btxrd.models import build_model, cam_target, list_models

from .helpers import settings


@pytest.fixture(params=list_models(task="classify"))
def classifier(request) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(settings([f"model={request.param}", "model.pretrained=false"]).model)
    nn.init.normal_(model.get_classifier().weight, std=0.5)  # heads start at zero; give them content
    return model


def test_grad_cam_equals_classic_cam_up_to_scale(classifier: nn.Module) -> None:
    x = torch.randn(3, 1, 96, 96)
    classes = torch.tensor([0, 1, 2])
    cams, logits = grad_cam(classifier, x, cam_target(classifier), classes)
    classifier.eval()
    with torch.no_grad():
        classic = torch.relu(class_activation_map(classifier.forward_features(x), classifier.get_classifier(), classes))
        torch.testing.assert_close(logits, classifier(x))
    assert cams.shape == classic.shape == (3, 3, 3)
    h, w = cams.shape[-2:]
    torch.testing.assert_close(cams * h * w, classic, rtol=1e-4, atol=1e-5)  # Grad-CAM = CAM / (h*w)


def test_grad_cam_keeps_mode_leaves_no_hook_and_no_grads(classifier: nn.Module) -> None:
    classifier.train()
    target = cam_target(classifier)
    bn = next(m for m in classifier.modules() if isinstance(m, nn.BatchNorm2d))
    running = bn.running_mean.clone()
    grad_cam(classifier, torch.randn(2, 1, 64, 64), target)
    assert classifier.training
    assert not target._forward_hooks and not any(m._forward_hooks for m in classifier.modules())
    assert all(p.grad is None for p in classifier.parameters())
    torch.testing.assert_close(bn.running_mean, running)  # ran in eval mode


def test_default_class_is_the_prediction(classifier: nn.Module) -> None:
    x = torch.randn(2, 1, 64, 64)
    cams, logits = grad_cam(classifier, x, cam_target(classifier))
    explicit, _ = grad_cam(classifier, x, cam_target(classifier), logits.argmax(1))
    torch.testing.assert_close(cams, explicit)


BOX = [(20.0, 30.0, 40.0, 50.0)]


def test_map_peaked_inside_the_box_scores_one() -> None:
    cam = np.zeros((64, 64))
    cam[35:45, 25:35] = 1.0
    assert pointing_hit(cam, BOX, tolerance=0)
    energy, baseline = energy_in_boxes(cam, BOX)
    assert energy == pytest.approx(1.0) and baseline == pytest.approx(20 * 20 / 64**2)


def test_uniform_map_scores_the_area_fraction() -> None:
    energy, baseline = energy_in_boxes(np.ones((64, 64)), BOX)
    assert energy == pytest.approx(baseline)
    assert not pointing_hit(np.ones((64, 64)), BOX, tolerance=100)  # a flat map points nowhere


def test_pointing_tolerance_and_misses() -> None:
    cam = np.zeros((64, 64))
    cam[55, 45] = 1.0  # 5 px right of and below the box
    assert not pointing_hit(cam, BOX, tolerance=2)
    assert pointing_hit(cam, BOX, tolerance=6)


def test_iou_and_aggregate_scores() -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[30:50, 20:40] = 1
    assert cam_iou(mask.astype(float), mask) == pytest.approx(1.0)
    half = np.zeros((64, 64))
    half[30:50, 20:30] = 1
    assert cam_iou(half, mask) == pytest.approx(0.5)
    per_image = localization_per_image(
        np.stack([mask.astype(float), np.ones((64, 64)), mask.astype(float)]),
        [BOX, BOX, []],
        np.stack([mask, mask, mask]),
        image_size=64,
    )
    assert per_image["cam_pointing"].tolist()[:2] == [1.0, 0.0] and per_image.iloc[2].isna().all()  # no box: NaN
    scores = localization_scores(per_image)
    assert scores["cam_pointing"] == pytest.approx(0.5) and scores["cam_n"] == 2
    assert scores["cam_energy"] == pytest.approx((1 + scores["cam_energy_baseline"]) / 2, rel=0.05)


def test_attention_loss_zero_inside_and_growing_outside() -> None:
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16, :16] = 1  # lesion in the top-left quadrant; feature grid 2x2
    weight = torch.tensor([[1.0], [0.0], [0.0]])  # class 0 reads the single feature channel
    losses = []
    for outside in (0.0, 0.25, 1.0, 4.0):
        features = torch.tensor([[[[1.0, outside], [outside, outside]]]])
        losses.append(float(attention_loss(features, weight, torch.tensor([0]), mask, dilation=0)))
    assert losses[0] == pytest.approx(0.0)
    assert losses == sorted(losses) and losses[-1] == pytest.approx(12 / 13)
    features = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]], requires_grad=True)
    attention_loss(features, weight, torch.tensor([0]), mask, dilation=0).sum().backward()
    assert features.grad[0, 0, 0, 0] < 0 < features.grad[0, 0, 1, 1]  # pushes mass into the lesion
    dilated = attention_loss(torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]), weight, torch.tensor([0]), mask, dilation=1)
    assert float(dilated) == pytest.approx(0.0)  # the dilated mask reaches the next cell
