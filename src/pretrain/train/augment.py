"""Image augmentations in plain torch, on a whole batch, drawn from a seed so a resumed step sees the same views.

``augment(images uint8 [B, S, S, 3], settings, out_size, seed) -> float [B, 3, out, out]`` in [0, 1]:

- random resized crop: each sample keeps a box of ``crop_scale`` of the area with aspect ratio in [3/4, 4/3]
  (the ratio range narrowed so the box always fits: its area is exactly the drawn fraction), resampled to
  ``out_size`` with one bilinear ``grid_sample`` (the crop, the flip and the resize are one affine map);
- horizontal flip at p 0.5 (``flip``);
- colour jitter at p 0.8 (``color_jitter`` = strength s: brightness, contrast, saturation by factors in
  [1 - 0.8 s, 1 + 0.8 s], hue rotated by up to 0.2 s of a turn in YIQ space), SimCLR's recipe;
- grayscale at p ``grayscale`` (ITU-R 601 luma in all three channels);
- Gaussian blur at p ``blur``, sigma in [0.1, 2] pixels, kernel about a tenth of the side (odd, >= 3).

Every random number comes from a CPU ``torch.Generator`` seeded with ``seed`` (the loop derives it from the run
seed, the micro-step, the rank and the view), so views do not depend on the device or on what ran before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from pretrain.config import AugmentConfig

RATIO = (3 / 4, 4 / 3)
JITTER_P = 0.8
BLUR_SIGMA = (0.1, 2.0)
LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB = torch.linalg.inv(_YIQ)


@dataclass(frozen=True)
class Augment:
    """Resolved settings (no ``None``): what one view goes through."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip: bool = True
    color_jitter: float = 0.4
    grayscale: float = 0.2
    blur: float = 0.5

    @property
    def identity(self) -> bool:
        return (self.crop_scale == (1.0, 1.0) and not self.flip and not self.color_jitter and not self.grayscale
                and not self.blur)


# SimCLR's strong set; CLIP crops gently and keeps colours and sides (its captions name them)
DEFAULTS = {"image_contrastive": Augment(),
            "image_text_contrastive": Augment(crop_scale=(0.8, 1.0), flip=False, color_jitter=0.0, grayscale=0.0,
                                              blur=0.0)}
NONE = Augment(crop_scale=(1.0, 1.0), flip=False, color_jitter=0.0, grayscale=0.0, blur=0.0)


SMALL_IMAGES = 64  # below this side SimCLR blurs no view (its CIFAR setting): a blur erases a small picture's shapes


def resolve(cfg: AugmentConfig, objective: str, image_size: int | None = None) -> Augment:
    """``train.augment`` with each unset key taken from the objective's default (SimCLR: no blur for images
    smaller than ``SMALL_IMAGES``, as in its CIFAR-10 setting)."""
    base = DEFAULTS[objective]
    if objective == "image_contrastive" and image_size is not None and image_size < SMALL_IMAGES:
        base = replace(base, blur=0.0)
    given = {k: v for k, v in cfg.model_dump().items() if v is not None}
    if "crop_scale" in given:
        given["crop_scale"] = (float(given["crop_scale"][0]), float(given["crop_scale"][1]))
    return Augment(**{**base.__dict__, **given})


def crop_boxes(n: int, scale: tuple[float, float], gen: torch.Generator,
               ratio: tuple[float, float] = RATIO) -> torch.Tensor:
    """[n, 4] boxes (center x, center y, width, height) as fractions of the side, each inside the image:
    area ~ U(scale), log aspect (width / height) ~ U over ``ratio`` narrowed to [area, 1 / area] so it fits."""
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=gen)
    lo = torch.clamp(area.log(), min=math.log(ratio[0]))
    hi = torch.clamp(-area.log(), max=math.log(ratio[1]))
    log_ratio = lo + (hi - lo) * torch.rand(n, generator=gen)
    w = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)
    h = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
    cx = w / 2 + (1 - w) * torch.rand(n, generator=gen)
    cy = h / 2 + (1 - h) * torch.rand(n, generator=gen)
    return torch.stack([cx, cy, w, h], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, out_size: int) -> torch.Tensor:
    """Each image's box resampled to ``out_size`` (bilinear; mirrored where ``flip``), in one ``grid_sample``."""
    n = x.shape[0]
    boxes = boxes.to(x.device, x.dtype)
    sign = 1.0 - 2.0 * flip.to(x.device, x.dtype)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = boxes[:, 2] * sign  # output x in [-1, 1] -> input x = w * x (+- mirrored) + center
    theta[:, 0, 2] = boxes[:, 0] * 2 - 1
    theta[:, 1, 1] = boxes[:, 3]
    theta[:, 1, 2] = boxes[:, 1] * 2 - 1
    grid = F.affine_grid(theta, [n, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gray(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] luma."""
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def color_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
                 hue: torch.Tensor) -> torch.Tensor:
    """Per-sample factors (1 = unchanged; ``hue`` in turns, 0 = unchanged), applied in this order, clamped to
    [0, 1] after each."""
    def per(v: torch.Tensor) -> torch.Tensor:
        return v.to(x.device, x.dtype).view(-1, 1, 1, 1)

    x = (x * per(brightness)).clamp(0, 1)
    mean = gray(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * per(contrast) + mean).clamp(0, 1)
    g = gray(x)
    x = ((x - g) * per(saturation) + g).clamp(0, 1)
    angle = hue.to(x.device, x.dtype) * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    rot = torch.zeros(len(angle), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = _RGB.to(x.device, x.dtype) @ rot @ _YIQ.to(x.device, x.dtype)  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)


def blur_kernel_size(size: int) -> int:
    k = max(3, round(size / 10))
    return k + 1 - k % 2


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (pixels), reflect-padded."""
    n, c, h, w = x.shape
    offsets = torch.arange(kernel, device=x.device, dtype=x.dtype) - (kernel - 1) / 2
    k = torch.exp(-(offsets[None] ** 2) / (2 * sigma.to(x.device, x.dtype)[:, None] ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [n*c, kernel]
    pad = kernel // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, kernel), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, kernel, 1), groups=n * c)
    return y.view(n, c, h, w)


def augment(images: torch.Tensor, settings: Augment, out_size: int, seed: int) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> one augmented view, float [B, 3, out_size, out_size] in [0, 1] (see the module
    docstring); the same ``seed`` gives the same view. The random draws do not depend on which ops are on."""
    gen = torch.Generator().manual_seed(int(seed))
    n = images.shape[0]
    boxes = crop_boxes(n, settings.crop_scale, gen)
    flip = (torch.rand(n, generator=gen) < 0.5) & settings.flip
    s = settings.color_jitter
    jitter = torch.rand(n, generator=gen) < (JITTER_P if s else 0.0)
    factors = [torch.empty(n).uniform_(1 - 0.8 * s, 1 + 0.8 * s, generator=gen) for _ in range(3)]
    hue = torch.empty(n).uniform_(-0.2 * s, 0.2 * s, generator=gen)
    to_gray = torch.rand(n, generator=gen) < settings.grayscale
    blurred = torch.rand(n, generator=gen) < settings.blur
    sigma = torch.empty(n).uniform_(*BLUR_SIGMA, generator=gen)

    x = images.permute(0, 3, 1, 2).float().div(255.0)
    x = resized_crop(x, boxes, flip, out_size)
    keep = (~jitter).float()  # jitter off for a sample: every factor 1, no hue turn
    factors = [f * jitter.float() + keep for f in factors]
    if jitter.any():
        x = color_jitter(x, *factors, hue * jitter.float())
    if to_gray.any():
        x = torch.where(to_gray.to(x.device).view(-1, 1, 1, 1), gray(x).expand_as(x), x)
    if blurred.any():
        x = torch.where(blurred.to(x.device).view(-1, 1, 1, 1), gaussian_blur(x, sigma, blur_kernel_size(out_size)), x)
    return x


def resize(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """No augmentation (held-out images): uint8 [B, S, S, 3] -> float [B, 3, out, out] in [0, 1] (antialiased)."""
    x = images.permute(0, 3, 1, 2).float().div(255.0)
    if x.shape[-1] == out_size and x.shape[-2] == out_size:
        return x
    return F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False)
