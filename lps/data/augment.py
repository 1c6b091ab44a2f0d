"""Batched image augmentation on uint8 tensors, with per-sample random parameters.

Every function takes ``x: uint8 [N, C, H, W]`` (C = 1 or 3) on any device and returns a new
tensor on the same device; nothing here loops over samples. Random functions draw from an
explicit ``torch.Generator`` that lives on ``x.device`` and draw one parameter set *per sample*
(``torchvision.transforms.v2`` draws one per batch).

Low-level ops take one parameter per sample (a tensor of shape [N] or a Python scalar) and
reproduce ``torchvision.transforms.v2.functional`` (below ``F``) applied sample by sample:
bit-exact on CPU for the pointwise ops and the nearest-neighbour geometric ops (see
``tests/test_augment.py``); ``resized_crop`` is bilinear without antialiasing and matches
``F.resized_crop(..., antialias=False)`` within one intensity level.

RandAugment follows FixMatch (Sohn et al., 2020, Table 12) as the released LPS/ORCA code runs it
(the PyTorch port kekmodel/FixMatch-pytorch ``dataset/randaugment.py``, ``RandAugmentMC`` +
``CutoutAbs``): magnitudes 1..9, geometric fill 0, Cutout of ``v + 1`` px (PIL's inclusive
rectangle); ``tests/test_augment.py`` pins each against PIL.
Parameter values are not range-checked when given as tensors (that would force a device sync).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor

__all__ = [
    "FIXMATCH_OPS",
    "FIXMATCH_POOL",
    "Augmenter",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "adjust_sharpness",
    "autocontrast",
    "color_jitter",
    "cutout",
    "equalize",
    "identity",
    "posterize",
    "randaugment_fixmatch",
    "random_crop_with_padding",
    "random_grayscale",
    "random_hflip",
    "random_resized_crop",
    "resize_center_crop",
    "resized_crop",
    "rotate",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
]

Fill = float | Sequence[float]
Param = float | int | Tensor

# ----------------------------------------------------------------------------- helpers


def _check_batch(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"expected an image batch of shape [N, C, H, W], got {getattr(x, 'shape', type(x))}")
    if x.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image batch, got dtype {x.dtype}; convert with x.to(torch.uint8)")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")


def _check_generator(generator: torch.Generator, x: Tensor) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"expected a torch.Generator, got {type(generator)}")
    if generator.device.type != x.device.type:
        raise ValueError(
            f"generator is on {generator.device} but the images are on {x.device}; "
            f"create it with torch.Generator(device=x.device)"
        )


def _param(v: Param, x: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """One parameter per sample as a tensor [N] on x's device (float64 keeps Python-float maths)."""
    t = torch.as_tensor(v, dtype=dtype, device=x.device)
    if t.dim() == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"expected one parameter per sample (shape [{x.shape[0]}]), got shape {tuple(t.shape)}")
    return t


def _b(t: Tensor) -> Tensor:
    """[N] -> [N, 1, 1, 1] for broadcasting over images."""
    return t.view(-1, 1, 1, 1)


def _fill_tensor(fill: Fill, x: Tensor) -> Tensor:
    f = torch.as_tensor(fill, dtype=torch.float32, device=x.device).flatten()
    if f.numel() not in (1, x.shape[1]):
        raise ValueError(f"fill must be a scalar or have one value per channel ({x.shape[1]}), got {fill}")
    return f.view(1, -1, 1, 1)


def _rand(n: int | tuple[int, ...], generator: torch.Generator, x: Tensor, dtype=torch.float32) -> Tensor:
    size = (n,) if isinstance(n, int) else n
    return torch.rand(size, generator=generator, device=x.device, dtype=dtype)


def _apply_on(out: Tensor, sel: Tensor, fn: Callable[[Tensor], Tensor]) -> None:
    """``out[idx] = fn(idx)`` for the samples where ``sel`` is True (in place, skipped if none).

    Processing only the subset that drew an op costs one device sync per call but keeps the
    work proportional to the number of affected samples (cheaper than computing every op for
    the whole batch and selecting with ``torch.where`` on large images).
    """
    idx = sel.nonzero().squeeze(1)
    if idx.numel() > 0:
        out.index_copy_(0, idx, fn(idx))


def _gray_float(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma as float32 [N, 1, H, W], same operation order as F.rgb_to_grayscale."""
    r, g, b = x.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend(img: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """``img * ratio + other * (1 - ratio)`` clamped and truncated to uint8, as torchvision's ``_blend``."""
    r32 = _b(ratio.to(torch.float32))
    a32 = _b((1.0 - ratio.to(torch.float64)).to(torch.float32))  # Python computes 1 - ratio in double
    out = torch.addcmul(img.to(torch.float32).mul_(r32), other, a32)  # == mul(r).add_(other, alpha=1-r)
    return out.clamp_(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------- pointwise ops


def identity(x: Tensor) -> Tensor:
    """Return ``x`` unchanged."""
    return x


def autocontrast(x: Tensor) -> Tensor:
    """Per-channel min-max stretch to [0, 255] (F.autocontrast)."""
    _check_batch(x)
    xf = x.to(torch.float32)
    lo = xf.amin(dim=(-2, -1), keepdim=True)
    hi = xf.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    inv_scale = (hi - lo).mul_(1.0 / 255)
    lo = lo.masked_fill(flat, 0.0)
    inv_scale = inv_scale.masked_fill(flat, 1.0)
    return xf.sub_(lo).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def equalize(x: Tensor) -> Tensor:
    """Per-channel histogram equalisation with PIL's lookup table (F.equalize)."""
    _check_batch(x)
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w).to(torch.long)
    hist = torch.zeros(n, c, 256, dtype=torch.int32, device=x.device)
    hist.scatter_add_(-1, flat, torch.ones(1, dtype=torch.int32, device=x.device).expand_as(flat))
    cum = hist.cumsum(-1)
    # PIL: step = (#pixels not of the largest present value) // 255; lut[k] = (cum[k-1] + step//2) // step
    last = cum.argmax(-1, keepdim=True)
    step = (h * w - hist.gather(-1, last)).div(255, rounding_mode="floor")
    valid = step.ne(0).unsqueeze(-1)
    lut = (cum[..., :-1] + step // 2).div(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], dim=-1).to(torch.uint8)
    out = lut.gather(-1, flat).view(n, c, h, w)
    return torch.where(valid, out, x)


def posterize(x: Tensor, bits: Param) -> Tensor:
    """Keep the ``bits[i]`` (0..8) most significant bits of each value (F.posterize)."""
    _check_batch(x)
    b = _param(bits, x, torch.int32)
    mask = torch.bitwise_left_shift(torch.full_like(b, 255), 8 - b).bitwise_and_(255)
    return x & _b(mask.to(torch.uint8))


def solarize(x: Tensor, threshold: Param) -> Tensor:
    """Invert values ``>= threshold[i]`` (F.solarize; PIL's ``solarize`` uses the same rule)."""
    _check_batch(x)
    t = _b(_param(threshold, x))
    return torch.where(x >= t, 255 - x, x)


def adjust_brightness(x: Tensor, factor: Param) -> Tensor:
    """Scale intensities by ``factor[i]`` (F.adjust_brightness; PIL ImageEnhance.Brightness)."""
    _check_batch(x)
    f = _b(_param(factor, x).to(torch.float32))
    return x.to(torch.float32).mul_(f).clamp_(0, 255).to(torch.uint8)


def adjust_saturation(x: Tensor, factor: Param) -> Tensor:
    """Blend with the grayscale image (F.adjust_saturation; PIL "Color"). Identity on 1 channel."""
    _check_batch(x)
    if x.shape[1] == 1:
        return x
    return _blend(x, _gray_float(x).floor_(), _param(factor, x))


def adjust_contrast(x: Tensor, factor: Param) -> Tensor:
    """Blend with the mean grey level of each image (F.adjust_contrast; PIL ImageEnhance.Contrast)."""
    _check_batch(x)
    gray = _gray_float(x).floor_() if x.shape[1] == 3 else x.to(torch.float32)
    mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, _param(factor, x))


def adjust_sharpness(x: Tensor, factor: Param) -> Tensor:
    """Blend the interior with a 3x3 smoothed image (kernel 1,1,1/1,5,1/1,1,1 / 13; F.adjust_sharpness)."""
    _check_batch(x)
    n, c, h, w = x.shape
    if h <= 2 or w <= 2:
        return x
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=torch.float32, device=x.device)
    out = x.to(torch.float32)
    blurred = nnf.conv2d(out, kernel.expand(c, 1, 3, 3), groups=c).round_()
    inner = out[..., 1:-1, 1:-1]
    alpha = _b((1.0 - _param(factor, x)).to(torch.float32))
    inner.copy_(torch.addcmul(inner, blurred.sub_(inner), alpha))  # == inner.add_(diff, alpha=1-f)
    return out.clamp_(0, 255).to(torch.uint8)


def _rgb_to_hsv(img: Tensor) -> Tensor:
    """float [N,3,H,W] in [0,1] -> HSV, same arithmetic as torchvision's ``_rgb_to_hsv``."""
    r, g, _ = img.unbind(dim=-3)
    minc, maxc = torch.aminmax(img, dim=-3)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - img) / divisor).unbind(dim=-3)
    maxc_neq_r = maxc != r
    maxc_eq_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(maxc_eq_g & maxc_neq_r)
    hr = bc.sub_(gc).mul_(~maxc_neq_r)
    hb = gc.add_(4.0).sub_(rc).mul_(maxc_neq_r.logical_and_(maxc_eq_g.logical_not_()))
    h = hr.add_(hg).add_(hb).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(img: Tensor) -> Tensor:
    """HSV -> RGB, same arithmetic as torchvision's ``_hsv_to_rgb``."""
    h, s, v = img.unbind(dim=-3)
    h6 = h.mul(6)
    i = torch.floor(h6)
    f = h6.sub_(i)
    i = i.to(dtype=torch.int32)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    i.remainder_(6)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=img.device)
    select = select[:, i].moveaxis(0, -3)  # [N, 3, H, W]
    return vpqt.gather(-3, select)


def adjust_hue(x: Tensor, hue: Param) -> Tensor:
    """Rotate hue by ``hue[i]`` in [-0.5, 0.5] turns (F.adjust_hue). Identity on 1 channel."""
    _check_batch(x)
    if x.shape[1] == 1:
        return x
    hsv = _rgb_to_hsv(x.to(torch.float32).mul_(1.0 / 255))
    h, s, v = hsv.unbind(dim=-3)
    h = h.add(_param(hue, x).to(torch.float32).view(-1, 1, 1)).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return rgb.mul_(255 + 1.0 - 1e-3).to(torch.uint8)  # torchvision's float -> uint8 conversion


# ----------------------------------------------------------------------------- geometric ops


def _inverse_affine_theta(
    angle: Tensor, tx: Tensor, ty: Tensor, shear_x_deg: Tensor, shear_y_deg: Tensor, cx: Tensor, cy: Tensor
) -> Tensor:
    """Per-sample inverse affine matrix [N, 2, 3] (float64), torchvision's ``_get_inverse_affine_matrix``.

    Coordinates are in pixels relative to the image centre; (cx, cy) is the centre of the
    transform in those coordinates; scale is 1.
    """
    rad = math.pi / 180.0  # math.radians(v) == v * (pi / 180)
    rot, sx, sy = angle * rad, shear_x_deg * rad, shear_y_deg * rad
    cos_sy, tan_sx, rot_minus_sy = torch.cos(sy), torch.tan(sx), rot - sy
    a = torch.cos(rot_minus_sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot_minus_sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    cxt, cyt = cx + tx, cy + ty
    m2 = 0.0 + (cx - m0 * cxt - m1 * cyt)
    m5 = 0.0 + (cy - m3 * cxt - m4 * cyt)
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=-1).view(-1, 2, 3)


def _affine_nearest(x: Tensor, theta: Tensor, fill: Fill) -> Tensor:
    """Warp each image with its own inverse matrix (nearest, constant fill), as F.affine on tensors."""
    n, c, h, w = x.shape
    theta = theta.to(torch.float32)
    # torchvision's _affine_grid, batched over theta
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=x.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=x.device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=x.device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32, device=x.device)
    rescaled = theta.transpose(1, 2).div(scale)  # [N, 3, 2]
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(rescaled).view(n, h, w, 2)
    # sampling (x - fill) with zero padding and adding fill back == torchvision's mask-channel trick
    f = _fill_tensor(fill, x)
    out = nnf.grid_sample(x.to(torch.float32) - f, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.add_(f).round_().clamp_(0, 255).to(torch.uint8)


def _zeros(x: Tensor) -> Tensor:
    return torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)


def rotate(x: Tensor, angle: Param, fill: Fill = 0) -> Tensor:
    """Rotate counter-clockwise by ``angle[i]`` degrees about the centre (F.rotate, nearest, no expand).

    Same direction as PIL ``img.rotate(angle)`` used by FixMatch; ``fill`` 0 is PIL's default
    (the released call passes none).
    """
    _check_batch(x)
    z = _zeros(x)
    a = -torch.remainder(_param(angle, x), 360.0)  # F.rotate: angle % 360, then the matrix of -angle
    return _affine_nearest(x, _inverse_affine_theta(a, z, z, z, z, z, z), fill)


def _shear_theta(x: Tensor, s: Tensor, axis: int) -> Tensor:
    z = _zeros(x)
    deg = torch.rad2deg(torch.atan(s))
    cx = torch.full_like(z, -0.5 * x.shape[-1])  # transform centre = top-left corner, as PIL
    cy = torch.full_like(z, -0.5 * x.shape[-2])
    if axis == 0:
        return _inverse_affine_theta(z, z, z, deg, z, cx, cy)
    return _inverse_affine_theta(z, z, z, z, deg, cx, cy)


def shear_x(x: Tensor, s: Param, fill: Fill = 0) -> Tensor:
    """Horizontal shear as FixMatch's ``img.transform(size, AFFINE, (1, s, 0, 0, 1, 0))``.

    The output pixel at (u, v) (origin = top-left corner) samples the input at (u + s*v, v).
    Equals ``F.affine(img, angle=0, translate=[0, 0], scale=1, shear=[degrees(atan(s)), 0],
    center=[0, 0], fill=fill)`` (nearest).
    """
    _check_batch(x)
    return _affine_nearest(x, _shear_theta(x, _param(s, x), 0), fill)


def shear_y(x: Tensor, s: Param, fill: Fill = 0) -> Tensor:
    """Vertical shear as FixMatch's ``img.transform(size, AFFINE, (1, 0, 0, s, 1, 0))``.

    The output pixel at (u, v) samples the input at (u, v + s*u). Equals ``F.affine(img, 0,
    [0, 0], 1, shear=[0, degrees(atan(s))], center=[0, 0], fill=fill)``.
    """
    _check_batch(x)
    return _affine_nearest(x, _shear_theta(x, _param(s, x), 1), fill)


def translate_x(x: Tensor, pixels: Param, fill: Fill = 0) -> Tensor:
    """Shift content right by ``pixels[i]`` (F.affine ``translate=[pixels, 0]``).

    FixMatch's PIL offset v (``(1, 0, v, 0, 1, 0)``) corresponds to ``pixels = -v``.
    """
    _check_batch(x)
    z = _zeros(x)
    return _affine_nearest(x, _inverse_affine_theta(z, _param(pixels, x), z, z, z, z, z), fill)


def translate_y(x: Tensor, pixels: Param, fill: Fill = 0) -> Tensor:
    """Shift content down by ``pixels[i]`` (F.affine ``translate=[0, pixels]``)."""
    _check_batch(x)
    z = _zeros(x)
    return _affine_nearest(x, _inverse_affine_theta(z, z, _param(pixels, x), z, z, z, z), fill)


# ----------------------------------------------------------------------------- random ops


def _cutout_box(x: Tensor, size: Param, generator: torch.Generator) -> Tensor:
    """FixMatch ``CutoutAbs`` box [N, 4] = (x0, y0, x1, y1), half-open, in pixels (side + 1 px,
    as PIL paints it)."""
    n, _, h, w = x.shape
    side = _param(size, x)
    u = _rand((2, n), generator, x, torch.float64)
    cx, cy = u[0] * w, u[1] * h  # np.random.uniform(0, w), np.random.uniform(0, h)
    x0 = (cx - side / 2.0).clamp_(min=0).floor_()
    y0 = (cy - side / 2.0).clamp_(min=0).floor_()
    # PIL's rectangle((x0, y0, x0 + v, y0 + v)) includes its end pixel: v + 1 px (size 0: nothing)
    extra = (side > 0).to(side.dtype)
    x1 = torch.minimum(x0 + side + extra, torch.full_like(x0, w))
    y1 = torch.minimum(y0 + side + extra, torch.full_like(y0, h))
    return torch.stack([x0, y0, x1, y1], dim=1).to(torch.long)


def _paint_box(x: Tensor, box: Tensor, fill: Fill) -> Tensor:
    cols = torch.arange(x.shape[-1], device=x.device)
    rows = torch.arange(x.shape[-2], device=x.device)
    in_x = (cols >= box[:, 0:1]) & (cols < box[:, 2:3])  # [N, W]
    in_y = (rows >= box[:, 1:2]) & (rows < box[:, 3:4])  # [N, H]
    mask = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)
    fill_t = _fill_tensor(fill, x).round().clamp(0, 255).to(torch.uint8)
    return torch.where(mask, fill_t, x)


def cutout(x: Tensor, size: Param, generator: torch.Generator, fill: Fill = 127) -> Tensor:
    """Paint a square with ``fill`` at a random place, exactly as FixMatch's ``CutoutAbs(img, size)``.

    Centre (x0, y0) ~ U[0, w) x U[0, h); left/top edge ``max(0, x0 - size/2)`` (truncated to int),
    right/bottom edge ``min(w, left + size)``, drawn with PIL's ``ImageDraw.rectangle``, which
    includes its end pixel: an unclipped box is ``(size + 1) x (size + 1)`` (17 x 17 for the
    16-px Cutout at 32 x 32, 113 x 113 for 112 px at 224). The box keeps its full side at the
    top/left border and is clipped only at the bottom/right one. ``size`` 0 paints nothing (the
    released call always has ``size >= 1``).
    """
    _check_batch(x)
    _check_generator(generator, x)
    return _paint_box(x, _cutout_box(x, size, generator), fill)


def random_hflip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Flip each image left-right with probability ``p``."""
    _check_batch(x)
    _check_generator(generator, x)
    n, c, h, w = x.shape
    flip = _rand(n, generator, x) < p
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)  # one gather instead of flip + where
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def random_crop_with_padding(
    x: Tensor,
    padding: int = 4,
    generator: torch.Generator | None = None,
    padding_mode: str = "constant",
    fill: int = 0,
) -> Tensor:
    """Pad by ``padding`` on every side, then crop back to H x W at a per-sample random offset.

    Equals ``F.crop(F.pad(img, [padding], fill, padding_mode), top, left, H, W)`` with
    top, left ~ U{0..2*padding} (torchvision RandomCrop(size, padding)). Modes: 'constant', 'reflect'.
    """
    _check_batch(x)
    if generator is None:
        raise TypeError("random_crop_with_padding needs a generator (torch.Generator on x's device)")
    _check_generator(generator, x)
    if padding_mode not in ("constant", "reflect"):
        raise ValueError(f"padding_mode must be 'constant' or 'reflect', got {padding_mode!r}")
    n, c, h, w = x.shape
    if padding_mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding {padding} must be smaller than the image size {h}x{w}")
    off = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=x.device)
    rows = off[0, :, None] + torch.arange(h, device=x.device) - padding  # source rows [N, H]
    cols = off[1, :, None] + torch.arange(w, device=x.device) - padding  # source cols [N, W]
    if padding_mode == "reflect":
        rows = torch.where(rows < 0, -rows, torch.where(rows >= h, 2 * (h - 1) - rows, rows))
        cols = torch.where(cols < 0, -cols, torch.where(cols >= w, 2 * (w - 1) - cols, cols))
    else:
        valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    out = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    if padding_mode == "constant":
        out = torch.where(valid[:, None], out, torch.tensor(fill, dtype=torch.uint8, device=x.device))
    return out


def resized_crop(x: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor, out_size: int) -> Tensor:
    """Crop box (top, left, height, width) of each image, resized to out_size x out_size (bilinear).

    Per sample equals ``F.resized_crop(img, top, left, height, width, [S, S], antialias=False)``
    within one intensity level (half-pixel centres, edge clamping as ``F.interpolate``).
    """
    _check_batch(x)
    n, _, h, w = x.shape
    s = out_size
    top, left, height, width = (_param(t, x, torch.float32) for t in (top, left, height, width))
    half = (torch.arange(s, device=x.device, dtype=torch.float32) + 0.5) / s  # (u + 0.5) / S

    def source(offset: Tensor, extent: Tensor, size: int) -> Tensor:
        # F.interpolate (align_corners=False): src = (u + 0.5) * extent / S - 0.5, clamped to the crop
        src = (half * extent[:, None] - 0.5).clamp_(min=0)
        src = torch.minimum(src, (extent - 1)[:, None]) + offset[:, None]
        return (2 * src + 1) / size - 1  # grid_sample coordinates (align_corners=False), [N, S]

    gx, gy = source(left, width, w), source(top, height, h)
    grid = torch.stack([gx[:, None, :].expand(n, s, s), gy[:, :, None].expand(n, s, s)], dim=-1)
    out = nnf.grid_sample(x.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _valid_sizes(x: Tensor, sizes: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-sample image height and width [N] (float64): ``sizes`` [N, 2] (h, w) of images stored
    top-left in a larger canvas, or the full canvas when None."""
    n, _, h, w = x.shape
    if sizes is None:
        return (torch.full((n,), float(h), dtype=torch.float64, device=x.device),
                torch.full((n,), float(w), dtype=torch.float64, device=x.device))
    sizes = torch.as_tensor(sizes, device=x.device).to(torch.float64)
    if sizes.shape != (n, 2):
        raise ValueError(f"sizes must be [N, 2] (height, width) per image, got shape {tuple(sizes.shape)}")
    if bool(((sizes < 1) | (sizes[:, :1] > h) | (sizes[:, 1:] > w)).any()):
        raise ValueError(f"sizes must lie in [1, {h}] x [1, {w}] (the canvas)")
    return sizes[:, 0], sizes[:, 1]


def random_resized_crop(
    x: Tensor,
    out_size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
    sizes: Tensor | None = None,
) -> Tensor:
    """RandomResizedCrop with per-sample boxes drawn as ``torchvision.transforms.RandomResizedCrop``.

    Up to 10 tries of area fraction ~ U(scale) and log aspect ~ U(log ratio); the first box that
    fits is used, else the central crop fallback. Resampling: ``resized_crop`` (bilinear).
    ``sizes`` [N, 2]: each image's own (height, width) inside the canvas (images stored top-left,
    as :class:`lps.data.datasets.ImageFiles` serves them); the box is drawn on that image, so a
    crop of the full, non-square image is what torchvision draws on it.
    """
    _check_batch(x)
    if generator is None:
        raise TypeError("random_resized_crop needs a generator (torch.Generator on x's device)")
    _check_generator(generator, x)
    n = x.shape[0]
    h, w = _valid_sizes(x, sizes)
    tries = 10
    u = _rand((2, n, tries), generator, x).to(torch.float64)
    target_area = (h * w)[:, None] * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    cw = torch.sqrt(target_area * aspect).round()
    ch = torch.sqrt(target_area / aspect).round()
    ok = (cw > 0) & (cw <= w[:, None]) & (ch > 0) & (ch <= h[:, None])
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # index of the first box that fits
    found = ok.any(dim=1)
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
    in_ratio = w / h  # central-crop fallback, as torchvision
    fw = torch.where(in_ratio > max(ratio), (h * max(ratio)).round(), w)
    fh = torch.where(in_ratio < min(ratio), (w / min(ratio)).round(), h)
    cw = torch.where(found, cw, fw)
    ch = torch.where(found, ch, fh)
    v = _rand((2, n), generator, x).to(torch.float64)
    top = torch.where(found, (v[0] * (h - ch + 1)).floor_().clamp_(max=h - ch), ((h - fh) / 2).floor())
    left = torch.where(found, (v[1] * (w - cw + 1)).floor_().clamp_(max=w - cw), ((w - fw) / 2).floor())
    return resized_crop(x, top, left, ch, cw, out_size)


def resize_center_crop(x: Tensor, resize: int, size: int, sizes: Tensor | None = None) -> Tensor:
    """``Resize(resize)`` (short side) then ``CenterCrop(size)`` of each image, as one crop of the
    stored image: the centred square of side ``short * size / resize``, resized to ``size``
    (bilinear). ``sizes`` as in :func:`random_resized_crop`."""
    _check_batch(x)
    h, w = _valid_sizes(x, sizes)
    side = torch.minimum(h, w) * (size / resize)
    return resized_crop(x, (h - side) / 2, (w - side) / 2, side, side, size)


def random_grayscale(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Replace each image by its 3-channel grayscale with probability ``p`` (identity on 1 channel)."""
    _check_batch(x)
    _check_generator(generator, x)
    sel = _rand(x.shape[0], generator, x) < p
    if x.shape[1] == 1:
        return x
    gray = _gray_float(x).to(torch.uint8).expand_as(x)  # F.rgb_to_grayscale(img, 3)
    return torch.where(_b(sel), gray, x)


def color_jitter(
    x: Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    generator: torch.Generator,
    p: float = 1.0,
    return_params: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`` with per-sample draws.

    Factors ~ U[max(0, 1 - b), 1 + b] (b = brightness, contrast, saturation), hue ~ U[-hue, hue],
    applied in a per-sample random order (torchvision: ``randperm(4)``; 0 brightness, 1 contrast,
    2 saturation, 3 hue). ``return_params`` adds {"applied", "order", "factors" [N, 4]}.
    """
    _check_batch(x)
    _check_generator(generator, x)
    if min(brightness, contrast, saturation) < 0 or not 0 <= hue <= 0.5:
        raise ValueError(
            f"color_jitter needs brightness, contrast, saturation >= 0 and hue in [0, 0.5], "
            f"got {brightness}, {contrast}, {saturation}, {hue}"
        )
    n = x.shape[0]
    applied = _rand(n, generator, x) < p
    u = _rand((4, n), generator, x, torch.float64)
    ranges = [(max(0.0, 1 - s), 1 + s) for s in (brightness, contrast, saturation)] + [(-hue, hue)]
    factors = torch.stack([lo + (hi - lo) * u[k] for k, (lo, hi) in enumerate(ranges)], dim=1)  # [N, 4]
    order = _rand((n, 4), generator, x).argsort(dim=1)
    strengths = (brightness, contrast, saturation, hue)
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    out = x.clone()
    for pos in range(4):
        for k in range(4):
            if strengths[k] == 0 or (k >= 2 and x.shape[1] == 1):
                continue
            _apply_on(
                out, applied & (order[:, pos] == k), lambda idx, k=k: ops[k](out[idx], factors[idx, k])
            )
    if return_params:
        return out, {"applied": applied, "order": order, "factors": factors}
    return out


# ----------------------------------------------------------------------------- RandAugment (FixMatch)

# FixMatch Table 12 / kekmodel ``fixmatch_augment_pool``: (name, max_v, bias)
FIXMATCH_POOL: tuple[tuple[str, float | None, float | None], ...] = (
    ("AutoContrast", None, None),
    ("Brightness", 0.9, 0.05),
    ("Color", 0.9, 0.05),
    ("Contrast", 0.9, 0.05),
    ("Equalize", None, None),
    ("Identity", None, None),
    ("Posterize", 4, 4),
    ("Rotate", 30, 0),
    ("Sharpness", 0.9, 0.05),
    ("ShearX", 0.3, 0),
    ("ShearY", 0.3, 0),
    ("Solarize", 256, 0),
    ("TranslateX", 0.3, 0),
    ("TranslateY", 0.3, 0),
)
FIXMATCH_OPS: tuple[str, ...] = tuple(name for name, _, _ in FIXMATCH_POOL)
_OP = {name: i for i, name in enumerate(FIXMATCH_OPS)}
PARAMETER_MAX = 10
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _float_parameter(v: Tensor, max_v: float) -> Tensor:
    return v.to(torch.float64) * max_v / PARAMETER_MAX  # FixMatch: float(v) * max_v / PARAMETER_MAX


def _int_parameter(v: Tensor, max_v: int) -> Tensor:
    return v * max_v // PARAMETER_MAX  # FixMatch: int(v * max_v / PARAMETER_MAX), v >= 0


def _fixmatch_slot(out: Tensor, op: Tensor, v: Tensor, applied: Tensor, sign: Tensor, fill: Fill) -> None:
    """Apply one RandAugment slot in place: sample i gets op[i] at magnitude v[i] if applied[i]."""
    w = out.shape[-1]
    enhance = {"Brightness": adjust_brightness, "Color": adjust_saturation, "Contrast": adjust_contrast,
               "Sharpness": adjust_sharpness}  # fmt: skip
    for name, max_v, bias in FIXMATCH_POOL:
        sel = applied & (op == _OP[name])
        if name == "AutoContrast":
            _apply_on(out, sel, lambda idx: autocontrast(out[idx]))
        elif name == "Equalize":
            _apply_on(out, sel, lambda idx: equalize(out[idx]))
        elif name in enhance:
            f = _float_parameter(v, max_v) + bias
            _apply_on(out, sel, lambda idx, fn=enhance[name], f=f: fn(out[idx], f[idx]))
        elif name == "Posterize":
            bits = _int_parameter(v, max_v) + bias
            _apply_on(out, sel, lambda idx, b=bits: posterize(out[idx], b[idx]))
        elif name == "Solarize":
            thr = 256 - (_int_parameter(v, max_v) + bias)
            _apply_on(out, sel, lambda idx, t=thr: solarize(out[idx], t[idx]))
    # the five geometric ops share one batched affine warp (each sample drew at most one of them)
    geo = applied & torch.isin(op, torch.tensor([_OP[g] for g in _GEOMETRIC], device=op.device))

    def warp(idx: Tensor) -> Tensor:
        o, m, s, x = op[idx], v[idx], sign[idx].to(torch.float64), out[idx]
        z = torch.zeros_like(s)
        rot = s * (_int_parameter(m, 30) + 0).to(torch.float64)  # degrees, counter-clockwise
        shear = s * (_float_parameter(m, 0.3) + 0)  # PIL shear coefficient
        shift = s * torch.trunc((_float_parameter(m, 0.3) + 0) * w)  # int(v * width), pixels
        is_ = {g: o == _OP[g] for g in _GEOMETRIC}
        angle = torch.where(is_["Rotate"], -torch.remainder(rot, 360.0), z)
        shear_deg = torch.rad2deg(torch.atan(shear))
        shx = torch.where(is_["ShearX"], shear_deg, z)
        shy = torch.where(is_["ShearY"], shear_deg, z)
        tx = torch.where(is_["TranslateX"], shift, z)
        ty = torch.where(is_["TranslateY"], shift, z)
        sheared = is_["ShearX"] | is_["ShearY"]
        cx = torch.where(sheared, -0.5 * x.shape[-1], z)  # shear about the top-left corner (PIL)
        cy = torch.where(sheared, -0.5 * x.shape[-2], z)
        return _affine_nearest(x, _inverse_affine_theta(angle, tx, ty, shx, shy, cx, cy), fill)

    _apply_on(out, geo, warp)


def randaugment_fixmatch(
    x: Tensor,
    generator: torch.Generator,
    n_ops: int = 2,
    prob: float = 0.5,
    return_params: bool = False,
    cutout_size: int | None = None,
    fill: Fill = 0,
    cutout_fill: Fill = 127,
    m: int = 10,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """FixMatch RandAugment (``RandAugmentMC(n=2, m=10)``) with per-sample draws, then Cutout.

    Per sample and slot: op ~ U(14 ops) with replacement, magnitude v ~ U{1..m-1} (the released
    ``np.random.randint(1, m)`` excludes m: 1..9, never 10), applied with probability ``prob``;
    Rotate/Shear/Translate flip sign with probability 0.5. Parameter maps (PARAMETER_MAX = 10):
    enhance factor ``v*max_v/10 + bias``; Posterize bits ``int(v*4/10) + 4``; Rotate
    ``int(v*30/10)`` deg; Shear ``v*0.3/10``; Solarize threshold ``256 - int(v*256/10)``; Translate
    ``int(v*0.3/10 * W)`` px. Geometric ops fill with ``fill`` (PIL's default 0, black: the released
    calls pass no fill). Then always :func:`cutout` of ``cutout_size`` (default ``int(0.5 * H)``,
    16 -> a 17 x 17 box at 32x32) filled with ``cutout_fill``. ``return_params`` adds {"ops",
    "magnitudes", "applied", "signs" ([N, n_ops]), "cutout_box" ([N, 4] x0, y0, x1, y1, half-open)}.
    """
    _check_batch(x)
    _check_generator(generator, x)
    if m < 2:
        raise ValueError(f"RandAugment m must be >= 2 (magnitudes are drawn from 1..m-1), got {m}")
    n = x.shape[0]
    ops = torch.randint(0, len(FIXMATCH_OPS), (n, n_ops), generator=generator, device=x.device)
    mags = torch.randint(1, m, (n, n_ops), generator=generator, device=x.device)
    applied = _rand((n, n_ops), generator, x) < prob
    signs = torch.where(_rand((n, n_ops), generator, x) < 0.5, -1, 1)
    out = x.clone()
    for k in range(n_ops):
        _fixmatch_slot(out, ops[:, k], mags[:, k], applied[:, k], signs[:, k], fill)
    size = int(0.5 * x.shape[-2]) if cutout_size is None else cutout_size
    box = _cutout_box(out, size, generator)
    out = _paint_box(out, box, cutout_fill)
    if return_params:
        return out, {"ops": ops, "magnitudes": mags, "applied": applied, "signs": signs, "cutout_box": box}
    return out


# ----------------------------------------------------------------------------- pipelines


class Augmenter:
    """The views the trainer asks for, on uint8 batches, returning normalised float32 [N, C, S, S].

    kind "small" (CIFAR, Fashion-MNIST): inputs are already S x S.
        weak   = RandomCrop(S, padding 4) + horizontal flip
        strong = flip + RandomCrop(S, padding 4, reflect) + FixMatch RandAugment + Cutout(int(f*S))
        simclr = RandomResizedCrop(S, scale (0.2, 1)) + flip + ColorJitter(0.4, 0.4, 0.4, 0.1)
                 w.p. 0.8 + RandomGrayscale(0.2) (SimCLR CIFAR recipe)
    kind "large" (ImageNet, the released ``utils.py``): each image is stored top-left in a canvas
    with its own (height, width) in ``sizes`` (:class:`lps.data.datasets.ImageFiles`); every crop
    is drawn on the full image, whatever its aspect.
        weak   = RandomResizedCrop(S, scale (0.5, 1)) + flip
        strong = weak + RandomCrop(S, padding S/8 = 28, reflect) + FixMatch RandAugment
                 + Cutout(int(f*S)) (112 px at 224)
        test   = Resize(S * 8/7 = 256) + CenterCrop(S)
        simclr = as for "small", the crop drawn on the full image
    f = ``cutout_frac``.
    """

    def __init__(self, kind: str, image_size: int, mean: tuple, std: tuple, cutout_frac: float = 0.5):
        if kind not in ("small", "large"):
            raise ValueError(f"Augmenter kind must be 'small' or 'large', got {kind!r}")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(f"mean and std need one value per channel (1 or 3), got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {std}")
        if not 0 <= cutout_frac <= 1:
            raise ValueError(f"cutout_frac must be in [0, 1], got {cutout_frac}")
        self.kind, self.image_size, self.cutout_frac = kind, image_size, cutout_frac
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.test_resize = round(image_size * 256 / 224)  # Resize(256) before CenterCrop(224)
        self.strong_padding = int(image_size * 0.125)  # RandomCrop(224, padding=int(224 * 0.125))
        self._stats: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _check(self, x: Tensor) -> None:
        _check_batch(x)
        h, w = x.shape[-2:]
        s = self.image_size
        if x.shape[1] != len(self.mean):
            raise ValueError(f"images have {x.shape[1]} channels but mean/std have {len(self.mean)}")
        if self.kind == "small" and (h, w) != (s, s):
            raise ValueError(f"kind 'small' expects {s}x{s} images, got {h}x{w}")

    def normalize(self, x: Tensor) -> Tensor:
        """``(x / 255 - mean) / std`` per channel, float32."""
        if x.device not in self._stats:
            shape = (1, len(self.mean), 1, 1)
            self._stats[x.device] = (
                torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape),
                torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape),
            )
        mean, std = self._stats[x.device]
        return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)

    def _crop_flip(self, x: Tensor, g: torch.Generator, padding_mode: str, sizes: Tensor | None) -> Tensor:
        if self.kind == "small":
            x = random_crop_with_padding(x, 4, g, padding_mode=padding_mode)
        else:
            x = random_resized_crop(x, self.image_size, scale=(0.5, 1.0), generator=g, sizes=sizes)
        return random_hflip(x, g)

    def weak(self, x: Tensor, g: torch.Generator, sizes: Tensor | None = None) -> Tensor:
        self._check(x)
        return self.normalize(self._crop_flip(x, g, "constant", sizes))

    def strong(self, x: Tensor, g: torch.Generator, sizes: Tensor | None = None) -> Tensor:
        self._check(x)
        x = self._crop_flip(x, g, "reflect", sizes)
        if self.kind == "large":
            x = random_crop_with_padding(x, self.strong_padding, g, padding_mode="reflect")
        x = randaugment_fixmatch(x, g, cutout_size=int(self.cutout_frac * self.image_size))
        return self.normalize(x)

    def simclr(self, x: Tensor, g: torch.Generator, sizes: Tensor | None = None) -> Tensor:
        self._check(x)
        x = random_resized_crop(x, self.image_size, scale=(0.2, 1.0), generator=g,
                                sizes=sizes if self.kind == "large" else None)
        x = random_hflip(x, g)
        x = color_jitter(x, 0.4, 0.4, 0.4, 0.1, g, p=0.8)
        x = random_grayscale(x, 0.2, g)
        return self.normalize(x)

    def test(self, x: Tensor, sizes: Tensor | None = None) -> Tensor:
        self._check(x)
        if self.kind == "large":
            x = resize_center_crop(x, self.test_resize, self.image_size, sizes)
        return self.normalize(x)
