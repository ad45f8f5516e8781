"""Batched RandAugment of the reference's PoseDual + RandAug variant (reference §2.4), on the training device.

Images are (B, 3, H, W) floats in [0, 255]; every op rounds to integers, as the reference's uint8 PIL pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import equalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CUTOUT_FILL = (125.0, 123.0, 114.0)  # the reference's grey, written to channels 0, 1, 2 of its array


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's "L" conversion of channels read as (R, G, B): (B, 3, H, W) -> (B, 1, H, W), rounded."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).round()


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: degenerate + factor·(x − degenerate); factor (B,)."""
    return degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)


def _auto_contrast(x: torch.Tensor, value: float, sign: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    lo, hi = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
    scale = 255.0 / (hi - lo).clamp(min=1.0)
    return torch.where(hi > lo, ((x - lo) * scale).floor(), x)


def _equalize(x: torch.Tensor, value: float, sign: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    return equalize(x.to(torch.uint8)).to(x.dtype)  # PIL's LUT scheme, per channel


def _invert(x: torch.Tensor, value: float, sign: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    return 255.0 - x


def _posterize(x: torch.Tensor, value: float, sign: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    step = 2.0 ** (8 - max(2, 6 - int(value)))  # reference: bits = max(2, 6 − int(v))
    return (x / step).floor() * step


def _solarize(x: torch.Tensor, value: float, sign: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 256.0 - value, 255.0 - x, x)


def _solarize_add(x: torch.Tensor, value: float, sign: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    y = (x + value).clamp(0.0, 255.0).floor()
    return torch.where(y >= 128.0, 255.0 - y, y)


def _color(x: torch.Tensor, value: float, sign: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    return _blend(_gray(x).expand_as(x), x, 1.0 + sign * value)


def _contrast(x: torch.Tensor, value: float, sign: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    mean = _gray(x).mean((-3, -2, -1), keepdim=True).round()
    return _blend(mean.expand_as(x), x, 1.0 + sign * value)


def _brightness(x: torch.Tensor, value: float, sign: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, 1.0 + sign * value)


def _sharpness(x: torch.Tensor, value: float, sign: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=x.dtype, device=x.device) / 13
    smooth = F.conv2d(x, kernel.expand(x.shape[1], 1, 3, 3), groups=x.shape[1]).round()
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth  # PIL's SMOOTH filter keeps the border pixels
    return _blend(degenerate, x, 1.0 + sign * value)


def _cutout_abs(x: torch.Tensor, value: float, sign: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Grey square of side `value` px at a uniform position (PIL rectangle: inclusive corners)."""
    h, w = x.shape[-2:]
    x0 = (uv[:, 0] * w - value / 2).clamp(min=0).floor()
    y0 = (uv[:, 1] * h - value / 2).clamp(min=0).floor()
    x1, y1 = (x0 + value).clamp(max=w).floor(), (y0 + value).clamp(max=h).floor()
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
    x0, y0, x1, y1 = (t.view(-1, 1, 1, 1) for t in (x0, y0, x1, y1))
    inside = (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
    fill = torch.tensor(CUTOUT_FILL, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.where(inside, fill, x)


# name -> (op, min value, max value); the reference's list, in its order
RA_OPS: dict[str, tuple[Callable[..., torch.Tensor], float, float]] = {
    "AutoContrast": (_auto_contrast, 0.0, 1.0),
    "Equalize": (_equalize, 0.0, 1.0),
    "Invert": (_invert, 0.0, 1.0),
    "Posterize": (_posterize, 0.0, 4.0),
    "Solarize": (_solarize, 0.0, 256.0),
    "SolarizeAdd": (_solarize_add, 0.0, 110.0),
    "Color": (_color, 0.0, 0.9),
    "Contrast": (_contrast, 0.0, 0.9),
    "Brightness": (_brightness, 0.0, 0.9),
    "Sharpness": (_sharpness, 0.0, 0.9),
    "CutoutAbs": (_cutout_abs, 0.0, 80.0),
}


def rand_augment(
    img: torch.Tensor,
    *,
    generator: torch.Generator,
    num_ops: int = 2,
    magnitude: float = 20.0,
    cutout_max: float = 80.0,
    return_choices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RandAugment(N=num_ops, m=magnitude of 30) with an op drawn per image and step, with replacement.

    Value = m/30·(max − min) + min; Color/Contrast/Brightness/Sharpness use factor 1 ± value (sign random per
    image); each op runs vectorised on the images that drew it.

    Args:
        img: (B, 3, H, W) float in [0, 255] (un-normalised; channel order as the caller's tensor).
        generator: RNG; draws happen on its device.
        cutout_max: CutoutAbs's square side in px at magnitude 30 (the reference's 80, made for 256x192 crops).
        return_choices: also return the (B, num_ops) long indices into `RA_OPS` that were applied.

    Returns:
        (B, 3, H, W) new tensor in [0, 255], integer-valued, in the input's dtype.
    """
    names = list(RA_OPS)
    b, dev, gdev = img.shape[0], img.device, generator.device
    x = img.float().round().clamp(0.0, 255.0)
    choices = torch.randint(0, len(names), (b, num_ops), generator=generator, device=gdev).to(dev)
    signs = torch.where(torch.rand(b, num_ops, generator=generator, device=gdev) < 0.5, -1.0, 1.0).to(dev)
    uv = torch.rand(b, num_ops, 2, generator=generator, device=gdev).to(dev)
    for step in range(num_ops):
        out = x.clone()
        for k, name in enumerate(names):
            idx = (choices[:, step] == k).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            op, lo, hi = RA_OPS[name]
            hi = cutout_max if name == "CutoutAbs" else hi
            value = magnitude / 30.0 * (hi - lo) + lo
            out[idx] = op(x[idx], value, signs[idx, step], uv[idx, step]).round().clamp(0.0, 255.0)
        x = out
    x = x.to(img.dtype)
    return (x, choices) if return_choices else x


def randaugment_normalized(
    img: torch.Tensor,
    *,
    joints: torch.Tensor | None = None,
    generator: torch.Generator,
    quirks: bool = False,
    n: int = 2,
    magnitude: float = 20.0,
    cutout_max: float = 80.0,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """`rand_augment` for normalised images (the `OPS["randaugment"]` entry): de-normalise, augment, normalise.

    Args:
        img: (B, 3, H, W) normalised as (x/255 − mean)/std.
        joints, quirks: ignored (uniform op signature).
        n: ops per image (the recipe's `RandAugmentOp.n`); magnitude: m on the 0–30 scale; cutout_max: CutoutAbs's
            side in px at magnitude 30.
        mean, std: the per-channel statistics the images were normalised with (0–1 units).

    Returns:
        (B, 3, H, W) normalised new tensor.
    """
    m = torch.tensor(mean, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    out = rand_augment(
        (img * s + m) * 255.0, generator=generator, num_ops=n, magnitude=magnitude, cutout_max=cutout_max
    )
    return (out / 255.0 - m) / s
