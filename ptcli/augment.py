"""Batched image augmentations for contrastive learning, in plain torch (no torchvision/kornia).

``Augment(ops)`` takes the ordered op list as written in YAML (``objective.augment``), e.g.
``[{name: random_resized_crop, scale: [0.3, 1.0]}, {name: hflip, p: 0.5}]``. Every op works on a whole
batch ``[B, C, H, W]`` of floats in [0, 1]: per-sample random parameters are drawn as tensors (from the
``generator`` when given, on the images' device), geometric ops go through one ``affine_grid`` +
``grid_sample`` call, and nothing loops over samples. Each op is applied to a sample with probability ``p``
(per sample). Same generator state -> same output.

Differences from torchvision's SimCLR pipeline, on purpose: color jitter applies brightness, contrast,
saturation, hue in this fixed order (torchvision shuffles the order); random resized crop clamps an
out-of-range crop to the image instead of retrying 10 times.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptcli.errors import UsageError

# Suited to 8x8 grayscale digits: moderate crops (a 0.08 crop of an 8x8 image is a 2x2 blob), a small affine
# jitter, brightness/contrast and pixel noise. No flip (a mirrored 2, 3, 7 is not a digit) and no blur
# (an 8x8 image has no fine detail left to blur away).
DEFAULT_SMALL_IMAGE_OPS: list[dict[str, Any]] = [
    {"name": "random_resized_crop", "scale": [0.5, 1.0], "ratio": [0.75, 1.33]},
    {"name": "affine", "degrees": 10, "translate": 0.1, "p": 0.5},
    {"name": "color_jitter", "brightness": 0.4, "contrast": 0.4, "p": 0.8},
    {"name": "gaussian_noise", "std": 0.05, "p": 0.5},
]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as torchvision's rgb_to_grayscale


# ---------------------------------------------------------------------------------------------- validation
class _Params:
    """Reads and validates one op's parameters; every error names ``objective.augment[i].<key>``."""

    def __init__(self, index: int, name: str, op: Mapping, keys: Sequence[str]) -> None:
        self.where, self.name, self.op = f"objective.augment[{index}]", name, op
        unknown = [k for k in op if k != "name" and k not in keys]
        if unknown:
            raise UsageError(f"{self.where}.{unknown[0]}: unknown parameter for augmentation '{name}'. "
                             f"Valid parameters: {', '.join(keys)}.")

    def fail(self, key: str, want: str, value: Any) -> UsageError:
        return UsageError(f"{self.where}.{key} ({self.name}) must be {want}, got {value!r}.")

    def number(self, key: str, default: float, lo: float = -math.inf, hi: float = math.inf,
               lo_open: bool = False) -> float:
        value = self.op.get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value > hi or value < lo or (lo_open and value == lo):
            rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise self.fail(key, f"a number in {rng}", value)
        return float(value)

    def pair(self, key: str, default: Sequence[float], lo: float = 0.0, hi: float = math.inf,
             lo_open: bool = False) -> tuple[float, float]:
        """``[min, max]`` (a single number means a fixed value) with ``lo <= min <= max <= hi``."""
        value = self.op.get(key, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value, value]
        want = f"[min, max] with {lo:g} {'<' if lo_open else '<='} min <= max <= {hi:g}"
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
            raise self.fail(key, want, value)
        a, b = value
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (a, b)):
            raise self.fail(key, want, list(value))
        if a > b or a < lo or b > hi or (lo_open and a <= lo):
            raise self.fail(key, want, list(value))
        return float(a), float(b)

    def choice(self, key: str, default: str, options: Sequence[str]) -> str:
        value = self.op.get(key, default)
        if value not in options:
            raise self.fail(key, f"one of {', '.join(options)}", value)
        return str(value)

    def p(self) -> float:
        return self.number("p", 1.0, 0.0, 1.0)


# -------------------------------------------------------------------------------------------------- helpers
def _uniform(n: int, lo: float, hi: float, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """``n`` draws from U(lo, hi) as float32 on ``x``'s device (float32 whatever x's dtype, for reproducibility)."""
    return lo + (hi - lo) * torch.rand(n, generator=g, device=x.device)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> luminance ``[B, 1, H, W]`` (the channel itself when C != 3)."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    flat = maxc == minc  # gray pixels: hue undefined, use 0
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(flat, ones, maxc)
    div = torch.where(flat, ones, chroma)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    sector = i.long() % 6  # [B, H, W]
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    onehot = F.one_hot(sector, 6).permute(0, 3, 1, 2).to(x.dtype)  # [B, 6, H, W]
    table = ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))  # r, g, b per hue sector
    return torch.stack([(onehot * torch.stack(row, 1)).sum(1) for row in table], 1)


def _warp(x: torch.Tensor, theta: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Resample every image through its own ``[2, 3]`` output->input affine map (normalized coordinates)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


# ------------------------------------------------------------------------------------------------------ ops
class _Op(nn.Module):
    """One augmentation. ``transform`` changes every sample; ``forward`` keeps it for a ``p`` share of them."""

    keys: tuple[str, ...] = ("p",)

    def __init__(self, params: _Params) -> None:
        super().__init__()
        self.p = params.p()

    def transform(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        if self.p <= 0.0:
            return x
        y = self.transform(x, g)
        if self.p >= 1.0:
            return y
        keep = torch.rand(x.shape[0], generator=g, device=x.device) < self.p
        return torch.where(keep.view(-1, 1, 1, 1), y, x)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)}" for k in self.keys)


class RandomResizedCrop(_Op):
    """Crop a random area share ``scale`` with aspect ``ratio`` (w/h, log-uniform), resize back to H x W."""

    keys = ("scale", "ratio", "p")

    def __init__(self, params: _Params) -> None:
        super().__init__(params)
        self.scale = params.pair("scale", (0.08, 1.0), 0.0, 1.0, lo_open=True)
        self.ratio = params.pair("ratio", (3 / 4, 4 / 3), 0.0, lo_open=True)

    def transform(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b, _, hgt, wid = x.shape
        area = _uniform(b, *self.scale, x, g)
        r = _uniform(b, math.log(self.ratio[0]), math.log(self.ratio[1]), x, g).exp() * (hgt / wid)
        w = (area * r).sqrt().clamp(max=1.0)  # crop size as a share of the image width / height; w/h = ratio in px
        h = (area / r).sqrt().clamp(max=1.0)
        cx = (1.0 - w) * _uniform(b, -1.0, 1.0, x, g)  # centre such that the crop stays inside the image
        cy = (1.0 - h) * _uniform(b, -1.0, 1.0, x, g)
        zero = torch.zeros_like(w)
        theta = torch.stack((torch.stack((w, zero, cx), 1), torch.stack((zero, h, cy), 1)), 1)
        return _warp(x, theta)


class HFlip(_Op):
    keys = ("p",)

    def __init__(self, params: _Params) -> None:
        super().__init__(params)
        if "p" not in params.op:
            self.p = 0.5  # a flip with p=1 is a fixed transform, not an augmentation

    def transform(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        return x.flip(-1)


class Affine(_Op):
    """Rotation by U(-degrees, degrees), translation by U(-translate, translate) of the image size per axis,
    zoom by U(scale); uncovered pixels follow ``padding`` (zeros = black, border = edge colour, reflection)."""

    keys = ("degrees", "translate", "scale", "padding", "p")

    def __init__(self, params: _Params) -> None:
        super().__init__(params)
        self.degrees = params.number("degrees", 0.0, 0.0, 180.0)
        self.translate = params.number("translate", 0.0, 0.0, 1.0)
        self.scale = params.pair("scale", (1.0, 1.0), 0.0, lo_open=True)
        self.padding = params.choice("padding", "zeros", ("zeros", "border", "reflection"))

    def transform(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b, _, hgt, wid = x.shape
        angle = _uniform(b, -self.degrees, self.degrees, x, g) * (math.pi / 180.0)
        tx = _uniform(b, -self.translate, self.translate, x, g) * 2.0  # normalized coordinates span 2
        ty = _uniform(b, -self.translate, self.translate, x, g) * 2.0
        zoom = _uniform(b, *self.scale, x, g)
        # theta maps output -> input: the inverse of (rotate by angle, zoom, then shift), written in pixel
        # units and conjugated into normalized coordinates so non-square images rotate without shearing.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        a, bb = cos, sin * hgt / wid
        c, d = -sin * wid / hgt, cos
        theta = torch.stack((torch.stack((a, bb, -(a * tx + bb * ty)), 1),
                             torch.stack((c, d, -(c * tx + d * ty)), 1)), 1)
        return _warp(x, theta, self.padding)


class ColorJitter(_Op):
    """Brightness, contrast (any C), saturation and hue (RGB only; skipped when C != 3), in that order.
    Factors are drawn from U(max(0, 1 - v), 1 + v); the hue shift from U(-hue, hue) of a full turn."""

    keys = ("brightness", "contrast", "saturation", "hue", "p")

    def __init__(self, params: _Params) -> None:
        super().__init__(params)
        self.brightness = params.number("brightness", 0.0, 0.0)
        self.contrast = params.number("contrast", 0.0, 0.0)
        self.saturation = params.number("saturation", 0.0, 0.0)
        self.hue = params.number("hue", 0.0, 0.0, 0.5)

    def _factor(self, v: float, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        return _uniform(x.shape[0], max(0.0, 1.0 - v), 1.0 + v, x, g).to(x.dtype).view(-1, 1, 1, 1)

    def transform(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        if self.brightness > 0:
            x = (x * self._factor(self.brightness, x, g)).clamp(0, 1)
        if self.contrast > 0:
            mean = _gray(x).mean((1, 2, 3), keepdim=True)
            x = ((x - mean) * self._factor(self.contrast, x, g) + mean).clamp(0, 1)
        if x.shape[1] == 3 and self.saturation > 0:
            gray = _gray(x)
            x = ((x - gray) * self._factor(self.saturation, x, g) + gray).clamp(0, 1)
        if x.shape[1] == 3 and self.hue > 0:
            shift = _uniform(x.shape[0], -self.hue, self.hue, x, g).to(x.dtype).view(-1, 1, 1)
            hsv = _rgb_to_hsv(x)
            hsv = torch.stack((torch.remainder(hsv[:, 0] + shift, 1.0), hsv[:, 1], hsv[:, 2]), 1)
            x = _hsv_to_rgb(hsv)
        return x


class Grayscale(_Op):
    """RGB -> luminance, repeated over the 3 channels; a no-op on single-channel images."""

    def __init__(self, params: _Params) -> None:
        super().__init__(params)
        if "p" not in params.op:
            self.p = 0.2  # SimCLR's default

    def transform(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        return _gray(x).expand_as(x) if x.shape[1] == 3 else x


class GaussianNoise(_Op):
    """Additive N(0, std^2) pixel noise; ``std`` may be ``[min, max]`` (drawn per sample). Clamped to [0, 1]."""

    keys = ("std", "p")

    def __init__(self, params: _Params) -> None:
        super().__init__(params)
        self.std = params.pair("std", (0.05, 0.05), 0.0)

    def transform(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        std = _uniform(x.shape[0], *self.std, x, g).to(x.dtype).view(-1, 1, 1, 1)
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        return (x + std * noise).clamp(0, 1)


class GaussianBlur(_Op):
    """Separable Gaussian blur with sigma ~ U(sigma) in pixels per sample; kernel 2*ceil(3*max sigma)+1 (or
    ``kernel_size``), cut to fit the image; reflect padding."""

    keys = ("sigma", "kernel_size", "p")

    def __init__(self, params: _Params) -> None:
        super().__init__(params)
        self.sigma = params.pair("sigma", (0.1, 2.0), 0.0, lo_open=True)
        self.kernel_size = params.op.get("kernel_size", 2 * math.ceil(3 * self.sigma[1]) + 1)
        if isinstance(self.kernel_size, bool) or not isinstance(self.kernel_size, int) or self.kernel_size % 2 != 1 \
                or self.kernel_size < 1:
            raise params.fail("kernel_size", "an odd positive integer", self.kernel_size)

    def transform(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        radius = min(self.kernel_size // 2, hgt - 1, wid - 1)  # reflect padding needs pad < size
        if radius <= 0:
            return x
        sigma = _uniform(b, *self.sigma, x, g).view(-1, 1)
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=sigma.dtype).view(1, -1)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = (kernel / kernel.sum(1, keepdim=True)).to(x.dtype).repeat_interleave(c, 0)  # [B*C, K]
        k = kernel.shape[1]
        y = x.reshape(1, b * c, hgt, wid)  # one grouped conv: each (sample, channel) gets its own kernel
        y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel.view(b * c, 1, 1, k), groups=b * c)
        y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel.view(b * c, 1, k, 1), groups=b * c)
        return y.view(b, c, hgt, wid)


class RandomErasing(_Op):
    """Fill a random rectangle (area share ``scale``, aspect ``ratio`` h/w) with ``value``."""

    keys = ("scale", "ratio", "value", "p")

    def __init__(self, params: _Params) -> None:
        super().__init__(params)
        if "p" not in params.op:
            self.p = 0.5  # torchvision's default
        self.scale = params.pair("scale", (0.02, 0.33), 0.0, 1.0, lo_open=True)
        self.ratio = params.pair("ratio", (0.3, 3.3), 0.0, lo_open=True)
        self.value = params.number("value", 0.0, 0.0, 1.0)

    def transform(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b, _, hgt, wid = x.shape
        area = _uniform(b, *self.scale, x, g)
        r = _uniform(b, math.log(self.ratio[0]), math.log(self.ratio[1]), x, g).exp() * (wid / hgt)
        eh = (area * r).sqrt().clamp(max=1.0)  # rectangle size as a share of height / width; h/w = ratio in px
        ew = (area / r).sqrt().clamp(max=1.0)
        top = (1.0 - eh) * torch.rand(b, generator=g, device=x.device)
        left = (1.0 - ew) * torch.rand(b, generator=g, device=x.device)
        rows = (torch.arange(hgt, device=x.device) + 0.5) / hgt  # pixel centres as shares of the size
        cols = (torch.arange(wid, device=x.device) + 0.5) / wid
        in_rows = (rows.view(1, -1) >= top.view(-1, 1)) & (rows.view(1, -1) < (top + eh).view(-1, 1))
        in_cols = (cols.view(1, -1) >= left.view(-1, 1)) & (cols.view(1, -1) < (left + ew).view(-1, 1))
        mask = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # [B, 1, H, W]
        return torch.where(mask, torch.full_like(x, self.value), x)


OPS: dict[str, type[_Op]] = {
    "random_resized_crop": RandomResizedCrop,
    "hflip": HFlip,
    "affine": Affine,
    "color_jitter": ColorJitter,
    "grayscale": Grayscale,
    "gaussian_noise": GaussianNoise,
    "gaussian_blur": GaussianBlur,
    "random_erasing": RandomErasing,
}


class Augment(nn.Module):
    """The op list applied in order. No parameters, no state: nothing of it lands in checkpoints."""

    def __init__(self, ops: list[dict]) -> None:
        super().__init__()
        if isinstance(ops, (str, bytes, Mapping)) or not isinstance(ops, Sequence):
            raise UsageError(f"objective.augment must be a list of ops like [{{name: hflip, p: 0.5}}], got {ops!r}. "
                             f"Valid names: {', '.join(OPS)}.")
        built = []
        for i, op in enumerate(ops):
            if not isinstance(op, Mapping):
                raise UsageError(f"objective.augment[{i}] must be a mapping like {{name: hflip, p: 0.5}}, "
                                 f"got {op!r}. Valid names: {', '.join(OPS)}.")
            name = op.get("name")
            if name not in OPS:
                what = "has no 'name'" if name is None else f".name: unknown augmentation '{name}'"
                raise UsageError(f"objective.augment[{i}]{' ' if name is None else ''}{what}. "
                                 f"Valid names: {', '.join(OPS)}.")
            cls = OPS[name]
            built.append(cls(_Params(i, name, op, cls.keys)))
        self.ops = nn.ModuleList(built)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x [B, C, H, W]`` float in [0, 1] -> augmented copy, same shape, in [0, 1]."""
        if x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"Augment expects float images [B, C, H, W] in [0, 1], got {x.dtype} {tuple(x.shape)}")
        for op in self.ops:
            x = op(x, generator)
        return x
