"""Image augmentations: each op does what it says, and a seed always gives the same view."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.config import AugmentConfig
from pretrain.train.augment import (
    DEFAULTS,
    NONE,
    Augment,
    augment,
    blur_kernel_size,
    color_jitter,
    crop_boxes,
    gaussian_blur,
    resize,
    resized_crop,
    resolve,
)

OFF = NONE  # no op at all: crop keeps the whole image


def images(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def unit(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).float() / 255


def test_same_seed_same_view_and_other_seeds_differ():
    x = images()
    strong = DEFAULTS["image_contrastive"]
    a, b, c = augment(x, strong, 12, seed=7), augment(x, strong, 12, seed=7), augment(x, strong, 12, seed=8)
    assert a.shape == (6, 3, 12, 12) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_with_every_op_off_the_view_is_the_image():
    x = images()
    assert torch.allclose(augment(x, OFF, 16, seed=3), unit(x), atol=1e-5)
    assert torch.equal(resize(x, 16), unit(x))
    assert resize(x, 8).shape == (6, 3, 8, 8)


def test_flip_mirrors_left_and_right():
    x = images()
    flipped = augment(x, Augment(crop_scale=(1.0, 1.0), flip=True, color_jitter=0.0, grayscale=0.0, blur=0.0), 16, 0)
    mirrored = torch.isclose(flipped, unit(x).flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(flipped, unit(x), atol=1e-5).flatten(1).all(1)
    assert (mirrored | same).all() and mirrored.any() and same.any()  # each sample is either, at p 0.5
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 6)
    assert torch.allclose(resized_crop(unit(x), boxes, torch.ones(6, dtype=torch.bool), 16), unit(x).flip(-1),
                          atol=1e-5)


def test_crop_boxes_keep_the_area_and_aspect_bounds_and_stay_inside():
    gen = torch.Generator().manual_seed(0)
    for scale in ((0.2, 1.0), (0.8, 1.0), (0.08, 0.1)):
        cx, cy, w, h = crop_boxes(4000, scale, gen).unbind(1)
        area = w * h
        assert area.min() >= scale[0] - 1e-5 and area.max() <= scale[1] + 1e-5
        assert area.max() - area.min() > 0.5 * (scale[1] - scale[0])  # the range is used, not one value
        ratio = w / h
        assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
        assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()
        assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()


def test_a_crop_shows_that_part_of_the_image():
    # a horizontal ramp: the left half's crop only holds values below the middle, and is resampled to the full size
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    left = resized_crop(ramp, torch.tensor([[0.25, 0.5, 0.5, 1.0]]), torch.zeros(1, dtype=torch.bool), 32)
    assert left.max() <= 0.5 + 1e-3 and left[..., 0].mean() < 0.05
    assert (left[..., 1:] >= left[..., :-1] - 1e-6).all()  # still increasing: not mirrored


def test_grayscale_gives_equal_channels_and_jitter_changes_colours_only_when_on():
    x = images()
    gray = augment(x, Augment(crop_scale=(1.0, 1.0), flip=False, color_jitter=0.0, grayscale=1.0, blur=0.0), 16, 0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    u = unit(x)
    ones = torch.ones(6)
    assert torch.allclose(color_jitter(u, ones, ones, ones, torch.zeros(6)), u, atol=1e-5)
    darker = color_jitter(u, ones * 0.5, ones, ones, torch.zeros(6))
    assert torch.allclose(darker, u * 0.5, atol=1e-5)
    desaturated = color_jitter(u, ones, ones, ones * 0, torch.zeros(6))
    assert torch.allclose(desaturated[:, 0], desaturated[:, 2], atol=1e-5)
    turned = color_jitter(u, ones, ones, ones, torch.full((6,), 0.25))
    assert (turned - u).abs().mean() > 0.05
    jittered = augment(x, Augment(crop_scale=(1.0, 1.0), flip=False, color_jitter=0.4, grayscale=0.0, blur=0.0), 16, 1)
    assert not torch.allclose(jittered, u, atol=1e-3)


def test_blur_smooths_and_keeps_a_flat_image():
    x = unit(images(2, 32))
    sigma = torch.tensor([2.0, 2.0])
    k = blur_kernel_size(32)
    assert k == 3 and blur_kernel_size(224) == 23
    blurred = gaussian_blur(x, sigma, 7)
    assert blurred.shape == x.shape
    assert blurred.diff(dim=-1).abs().mean() < 0.5 * x.diff(dim=-1).abs().mean()  # neighbours closer
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([1.5]), 5), flat, atol=1e-6)


@pytest.mark.parametrize("objective", ["image_contrastive", "image_text_contrastive"])
def test_defaults_per_objective_and_overrides(objective):
    got = resolve(AugmentConfig(), objective)
    assert got == DEFAULTS[objective]
    if objective == "image_text_contrastive":
        assert got.crop_scale == (0.8, 1.0) and not got.flip and got.color_jitter == 0 and got.blur == 0
    else:
        assert got.crop_scale == (0.2, 1.0) and got.flip and got.color_jitter == 0.4 and math.isclose(got.blur, 0.5)
    tuned = resolve(AugmentConfig(flip=False, crop_scale=(0.5, 0.9)), objective)
    assert not tuned.flip and tuned.crop_scale == (0.5, 0.9) and tuned.grayscale == got.grayscale


def test_simclr_blurs_no_small_image_by_default_but_a_recipe_may_ask():
    from pretrain.config import AugmentConfig
    from pretrain.train.augment import resolve

    assert resolve(AugmentConfig(), "image_contrastive", image_size=32).blur == 0.0  # SimCLR's CIFAR setting
    assert resolve(AugmentConfig(), "image_contrastive", image_size=224).blur == 0.5
    assert resolve(AugmentConfig(blur=0.3), "image_contrastive", image_size=32).blur == 0.3
    assert resolve(AugmentConfig(), "image_text_contrastive", image_size=224).blur == 0.0
