"""Tests for lps.data.augment: batched ops against torchvision's functional ops sample by sample,
FixMatch RandAugment parameter statistics, per-sample randomness, and the Augmenter pipelines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lps.data import augment as A

F = pytest.importorskip("torchvision.transforms.v2.functional")
stats = pytest.importorskip("scipy.stats")


def _images(n: int, c: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random uint8 images, some low-contrast and some constant (edge cases for the colour ops)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)
    x[: n // 4] = x[: n // 4] // 4 + 60
    x[n // 4 : n // 4 + 2] = 77
    return x


def _per_sample(x: torch.Tensor, fn) -> torch.Tensor:
    return torch.stack([fn(x[i], i) for i in range(x.shape[0])])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


N = 24
_g = _gen(123)
FACTORS = torch.cat([torch.arange(1, 11) * 0.9 / 10 + 0.05, torch.rand(N - 10, generator=_g, dtype=torch.float64) * 2])
BITS = torch.randint(0, 9, (N,), generator=_g)
THRESHOLDS = torch.randint(0, 256, (N,), generator=_g).double()
HUES = torch.rand(N, generator=_g, dtype=torch.float64) - 0.5
ANGLES = torch.cat([torch.tensor([0.0, 90.0, 180.0, -90.0, 30.0, -30.0]), torch.rand(N - 6, generator=_g) * 360 - 180])
_SIGNS = torch.where(torch.rand(N, generator=_g) < 0.5, -1.0, 1.0).double()
SHEARS = torch.randint(1, 11, (N,), generator=_g).double() * 0.3 / 10 * _SIGNS  # FixMatch's +-0.03..0.3
SHIFTS = torch.randint(-9, 10, (N,), generator=_g).double()

POINTWISE = {
    "autocontrast": (lambda x: A.autocontrast(x), lambda im, i: F.autocontrast(im)),
    "equalize": (lambda x: A.equalize(x), lambda im, i: F.equalize(im)),
    "identity": (lambda x: A.identity(x), lambda im, i: im),
    "posterize": (lambda x: A.posterize(x, BITS), lambda im, i: F.posterize(im, int(BITS[i]))),
    "solarize": (lambda x: A.solarize(x, THRESHOLDS), lambda im, i: F.solarize(im, float(THRESHOLDS[i]))),
    "brightness": (lambda x: A.adjust_brightness(x, FACTORS), lambda im, i: F.adjust_brightness(im, float(FACTORS[i]))),
    "saturation": (lambda x: A.adjust_saturation(x, FACTORS), lambda im, i: F.adjust_saturation(im, float(FACTORS[i]))),
    "contrast": (lambda x: A.adjust_contrast(x, FACTORS), lambda im, i: F.adjust_contrast(im, float(FACTORS[i]))),
    "sharpness": (lambda x: A.adjust_sharpness(x, FACTORS), lambda im, i: F.adjust_sharpness(im, float(FACTORS[i]))),
    "hue": (lambda x: A.adjust_hue(x, HUES), lambda im, i: F.adjust_hue(im, float(HUES[i]))),
}


def _shear_deg(s: float) -> float:
    return math.degrees(math.atan(s))


GEOMETRIC = {
    "rotate": (lambda x, f: A.rotate(x, ANGLES, fill=f), lambda im, i, f: F.rotate(im, float(ANGLES[i]), fill=f)),
    # PIL (1, s, 0, 0, 1, 0) == F.affine shear [atan(s) in degrees, 0] about the top-left corner
    "shear_x": (
        lambda x, f: A.shear_x(x, SHEARS, fill=f),
        lambda im, i, f: F.affine(im, 0.0, [0, 0], 1.0, [_shear_deg(float(SHEARS[i])), 0.0], fill=f, center=[0, 0]),
    ),
    "shear_y": (
        lambda x, f: A.shear_y(x, SHEARS, fill=f),
        lambda im, i, f: F.affine(im, 0.0, [0, 0], 1.0, [0.0, _shear_deg(float(SHEARS[i]))], fill=f, center=[0, 0]),
    ),
    "translate_x": (
        lambda x, f: A.translate_x(x, SHIFTS, fill=f),
        lambda im, i, f: F.affine(im, 0.0, [float(SHIFTS[i]), 0.0], 1.0, [0.0, 0.0], fill=f),
    ),
    "translate_y": (
        lambda x, f: A.translate_y(x, SHIFTS, fill=f),
        lambda im, i, f: F.affine(im, 0.0, [0.0, float(SHIFTS[i])], 1.0, [0.0, 0.0], fill=f),
    ),
}


# ----------------------------------------------------------------------------- low-level ops


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(POINTWISE))
def test_pointwise_op_equals_torchvision_per_sample(name, channels):
    x = _images(N, channels)
    mine_fn, ref_fn = POINTWISE[name]
    out = mine_fn(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape and out.device == x.device
    assert torch.equal(out, _per_sample(x, ref_fn))  # bit-exact


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_geometric_op_equals_torchvision_per_sample(name, channels):
    x = _images(N, channels, size=17)
    mine_fn, ref_fn = GEOMETRIC[name]
    for fill in (128, [10, 20, 30][:channels]):
        out = mine_fn(x, fill)
        assert out.dtype == torch.uint8 and out.shape == x.shape
        assert torch.equal(out, _per_sample(x, lambda im, i: ref_fn(im, i, fill)))  # bit-exact


def test_geometric_ops_agree_with_pil_as_used_by_fixmatch():
    """The released PIL calls, which pass no fill (PIL's default 0): ShearX (1, s, 0, 0, 1, 0) ==
    shear_x(s), TranslateX (1, 0, v, 0, 1, 0) == translate_x(-v), img.rotate(a) == rotate(a), each
    with this project's default fill."""
    Image = pytest.importorskip("PIL.Image")
    x = _images(8, 3, size=32) // 2 + 100  # no black pixels, so a wrong fill cannot hide

    def pil_affine(coeffs):
        def one(im, i):
            p = Image.fromarray(im.permute(1, 2, 0).numpy())
            p = p.rotate(coeffs) if isinstance(coeffs, int) else p.transform(p.size, Image.AFFINE, coeffs)
            return torch.from_numpy(np.array(p)).permute(2, 0, 1)

        return _per_sample(x, one)

    cases = []
    for s in (-0.3, -0.12, 0.09, 0.21, 0.3):
        cases.append((A.shear_x(x, s), pil_affine((1, s, 0, 0, 1, 0))))
        cases.append((A.shear_y(x, s), pil_affine((1, 0, 0, s, 1, 0))))
    for a in (-30, -17, 6, 24):
        cases.append((A.rotate(x, a), pil_affine(a)))
    for v in (-9, -2, 3, 9):
        cases.append((A.translate_x(x, -v), pil_affine((1, 0, v, 0, 1, 0))))
        cases.append((A.translate_y(x, -v), pil_affine((1, 0, 0, 0, 1, v))))
    mismatch = sum((mine != ref).any(1).sum().item() for mine, ref in cases) / (len(cases) * 8 * 32 * 32)
    assert mismatch < 0.005  # only nearest-neighbour ties at exact half pixels differ


def test_resized_crop_matches_torchvision_within_one_level():
    x = _images(N, 3, size=32)
    g = _gen(1)
    top, left = torch.randint(0, 10, (N,), generator=g), torch.randint(0, 10, (N,), generator=g)
    h, w = torch.randint(5, 23, (N,), generator=g), torch.randint(5, 23, (N,), generator=g)
    out = A.resized_crop(x, top, left, h, w, 24)
    box = torch.stack([top, left, h, w], 1).tolist()
    ref = _per_sample(x, lambda im, i: F.resized_crop(im, *box[i], [24, 24], antialias=False))
    assert out.shape == (N, 3, 24, 24) and out.dtype == torch.uint8
    assert (out.int() - ref.int()).abs().max() <= 1


def test_cutout_box_size_and_fill_on_zero_image():
    n, size, s = 400, 8, 20
    x = torch.zeros(n, 3, s, s, dtype=torch.uint8)
    out = A.cutout(x, size, _gen(0), fill=127)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    painted = out != 0
    assert torch.all(out[painted] == 127)
    assert torch.equal(painted.all(1), painted.any(1))  # same box on every channel
    mask = painted[:, 0]
    rows, cols = mask.any(2), mask.any(1)
    heights, widths = rows.sum(1), cols.sum(1)
    assert torch.equal(mask.sum((1, 2)), heights * widths)  # a filled rectangle
    # FixMatch CutoutAbs: full size unless clipped at the bottom/right border
    first_row = rows.int().argmax(1)
    first_col = cols.int().argmax(1)
    assert torch.equal(heights, torch.clamp(s - first_row, max=size + 1))  # PIL paints size + 1 px
    assert torch.equal(widths, torch.clamp(s - first_col, max=size + 1))
    assert (heights == size + 1).float().mean() > 0.5 and (heights < size + 1).any()
    assert first_row.max() <= s - size // 2  # centre < s, so the box starts before s - size/2


def test_cutout_equals_pil_rectangle_as_released():
    """FixMatch CutoutAbs: x0 = int(max(0, cx - v/2)), x1 = int(min(w, x0 + v)), then
    ImageDraw.rectangle((x0, y0, x1, y1)), which includes x1 and y1: 17 x 17 px for v = 16."""
    Image = pytest.importorskip("PIL.Image")
    ImageDraw = pytest.importorskip("PIL.ImageDraw")
    n, s, v = 64, 32, 16
    x = _images(n, 3, size=s)
    g = _gen(4)
    out = A.cutout(x, v, g, fill=127)
    u = torch.rand((2, n), generator=_gen(4), dtype=torch.float64)  # the same draws: centre x, centre y
    for i in range(n):
        cx, cy = float(u[0, i]) * s, float(u[1, i]) * s
        x0, y0 = int(max(0, cx - v / 2.0)), int(max(0, cy - v / 2.0))
        x1, y1 = int(min(s, x0 + v)), int(min(s, y0 + v))
        im = Image.fromarray(x[i].permute(1, 2, 0).numpy())
        ImageDraw.Draw(im).rectangle((x0, y0, x1, y1), (127, 127, 127))
        assert torch.equal(out[i], torch.from_numpy(np.array(im)).permute(2, 0, 1)), i
    inside = torch.zeros(1, 3, s, s, dtype=torch.uint8)
    painted = (A.cutout(inside, v, _gen(0), fill=127)[0, 0] == 127)
    assert painted.sum() <= 17 * 17
    full = [(A.cutout(inside, v, _gen(k), fill=127)[0, 0] == 127).sum().item() for k in range(40)]
    assert 17 * 17 in full  # an unclipped box is 17 x 17


def test_cutout_per_sample_sizes_and_tensor_fill():
    x = torch.zeros(6, 1, 12, 12, dtype=torch.uint8)
    sizes = torch.tensor([0, 1, 2, 4, 6, 12])
    out = A.cutout(x, sizes, _gen(3), fill=5)
    counts = (out == 5).sum((1, 2, 3))
    assert counts[0] == 0 and counts[-1] > 0  # size 0 paints nothing
    assert torch.all(counts <= (sizes + 1) ** 2) and counts[1] >= 1


@pytest.mark.parametrize("mode", ["constant", "reflect"])
@pytest.mark.parametrize("channels", [1, 3])
def test_random_crop_with_padding_is_pad_then_crop(mode, channels):
    pad, n = 2, 150
    x = _images(n, channels, size=10)
    x[: n // 4 + 2] = torch.randint(0, 256, x[: n // 4 + 2].shape, dtype=torch.uint8, generator=_gen(9))
    out = A.random_crop_with_padding(x, pad, _gen(1), padding_mode=mode, fill=7)
    offsets = []
    for i in range(n):
        padded = F.pad(x[i], [pad], fill=7, padding_mode=mode)
        candidates = [(t, l) for t in range(2 * pad + 1) for l in range(2 * pad + 1)]
        hits = [(t, l) for t, l in candidates if torch.equal(F.crop(padded, t, l, 10, 10), out[i])]
        assert hits, f"sample {i} is not a pad-{pad} crop of its input"
        offsets.append(hits[0])
    assert len(set(offsets)) == (2 * pad + 1) ** 2  # every offset occurs


def test_random_hflip():
    x = _images(200, 3)
    out = A.random_hflip(x, _gen(0), p=0.5)
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(-1)) for i in range(200)])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(200)])
    assert torch.all(flipped | kept) and 60 < flipped.sum() < 140
    assert torch.equal(A.random_hflip(x, _gen(0), p=0.0), x)
    assert torch.equal(A.random_hflip(x, _gen(0), p=1.0), x.flip(-1))


@pytest.mark.parametrize("channels", [1, 3])
def test_random_resized_crop(channels):
    x = _images(10, channels, size=32)
    out = A.random_resized_crop(x, 24, generator=_gen(0))
    assert out.shape == (10, channels, 24, 24) and out.dtype == torch.uint8 and out.device == x.device
    full = A.random_resized_crop(x, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=_gen(0))
    assert torch.equal(full, x)  # the whole image at its own size is returned unchanged
    wide = _images(4, channels, size=32)[..., :20]  # 32x20: out of the ratio range -> fallback path works
    assert A.random_resized_crop(wide, 16, scale=(1.0, 1.0), generator=_gen(0)).shape == (4, channels, 16, 16)


def test_color_jitter_equals_torchvision_sequence():
    x = _images(N, 3)
    out, p = A.color_jitter(x, 0.4, 0.4, 0.4, 0.1, _gen(0), p=1.0, return_params=True)
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)

    def ref(im, i):
        for k in p["order"][i].tolist():
            im = ops[k](im, float(p["factors"][i, k]))
        return im

    assert torch.equal(out, _per_sample(x, ref))
    assert (p["factors"][:, :3] >= 0.6).all() and (p["factors"][:, :3] <= 1.4).all()
    assert (p["factors"][:, 3].abs() <= 0.1).all()
    assert torch.equal(A.color_jitter(x, 0.4, 0.4, 0.4, 0.1, _gen(0), p=0.0), x)
    gray = _images(4, 1)
    assert A.color_jitter(gray, 0.4, 0.4, 0.4, 0.1, _gen(0), p=1.0).shape == gray.shape


def test_random_grayscale():
    x = _images(8, 3)
    assert torch.equal(A.random_grayscale(x, 1.0, _gen(0)), _per_sample(x, lambda im, i: F.rgb_to_grayscale(im, 3)))
    assert torch.equal(A.random_grayscale(x, 0.0, _gen(0)), x)
    one = _images(8, 1)
    assert torch.equal(A.random_grayscale(one, 1.0, _gen(0)), one)


# ----------------------------------------------------------------------------- randomness


def _random_ops():
    return {
        "crop_constant": lambda x, g: A.random_crop_with_padding(x, 4, g),
        "crop_reflect": lambda x, g: A.random_crop_with_padding(x, 4, g, padding_mode="reflect"),
        "hflip": lambda x, g: A.random_hflip(x, g),
        "cutout": lambda x, g: A.cutout(x, 8, g),
        "rrc": lambda x, g: A.random_resized_crop(x, 16, generator=g),
        "color_jitter": lambda x, g: A.color_jitter(x, 0.4, 0.4, 0.4, 0.1, g, p=0.8),
        "grayscale": lambda x, g: A.random_grayscale(x, 0.5, g),
        "randaugment": lambda x, g: A.randaugment_fixmatch(x, g),
    }


@pytest.mark.parametrize("name", sorted(_random_ops()))
def test_per_sample_randomness_and_reproducibility(name):
    fn = _random_ops()[name]
    one = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=_gen(5))
    x = one.expand(32, -1, -1, -1).contiguous()
    a = fn(x, _gen(7))
    assert a.dtype == torch.uint8 and a.shape[:2] == x.shape[:2]
    distinct = {tuple(a[i].flatten().tolist()) for i in range(32)}
    assert len(distinct) > 1, "identical inputs got identical outputs: parameters are not per sample"
    assert torch.equal(a, fn(x, _gen(7)))  # same seed, same output
    assert not torch.equal(a, fn(x, _gen(8)))


def test_generator_and_input_errors():
    x = _images(2, 3)
    with pytest.raises(TypeError, match="uint8"):
        A.autocontrast(x.float())
    with pytest.raises(ValueError, match="channels"):
        A.equalize(torch.zeros(1, 2, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="Generator"):
        A.random_hflip(x, 0)
    with pytest.raises(ValueError, match="one parameter per sample"):
        A.adjust_brightness(x, torch.ones(3))
    with pytest.raises(ValueError, match="reflect"):
        A.random_crop_with_padding(x, 16, _gen(), padding_mode="reflect")


# ----------------------------------------------------------------------------- RandAugment (FixMatch)


def test_randaugment_parameter_statistics_match_fixmatch():
    n, n_ops = 20000, 2
    x = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    out, p = A.randaugment_fixmatch(x, _gen(2024), n_ops=n_ops, return_params=True)
    assert out.shape == x.shape
    assert A.FIXMATCH_OPS == (
        "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
        "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY",
    )  # fmt: skip
    alpha = 1e-3
    for k in range(n_ops):
        ops = torch.bincount(p["ops"][:, k], minlength=14)
        mags = torch.bincount(p["magnitudes"][:, k], minlength=11)
        # released np.random.randint(1, 10): magnitudes 1..9, never 0 or 10
        assert len(ops) == 14 and len(mags) == 11 and mags[0] == 0 and mags[10] == 0
        assert (mags[1:10] > 0).all()
        assert stats.chisquare(ops.numpy()).pvalue > alpha
        assert stats.chisquare(mags[1:10].numpy()).pvalue > alpha
        assert stats.binomtest(int(p["applied"][:, k].sum()), n, 0.5).pvalue > alpha
        assert stats.binomtest(int((p["signs"][:, k] > 0).sum()), n, 0.5).pvalue > alpha
    # ops drawn with replacement, independently across slots: P(same op in both slots) = 1/14
    same = int((p["ops"][:, 0] == p["ops"][:, 1]).sum())
    assert stats.binomtest(same, n, 1 / 14).pvalue > alpha
    # cutout of int(0.5 * 4) = 2 -> 3 px (PIL's inclusive rectangle), clipped only at the bottom/right border
    box = p["cutout_box"]
    assert torch.all((box[:, 2] - box[:, 0] <= 3) & (box[:, 3] - box[:, 1] <= 3) & (box[:, :2] >= 0).all(1))
    assert ((box[:, 2] - box[:, 0]) == 3).any()


def _fixmatch_reference(im: torch.Tensor, name: str, v: int, sign: int) -> torch.Tensor:
    """One FixMatch op (kekmodel/FixMatch-pytorch randaugment.py maps) via torchvision on one image;
    geometric ops fill with 0, PIL's default in the released calls."""
    fill = 0
    width = im.shape[-1]
    fp = lambda max_v: float(v) * max_v / 10  # noqa: E731  (_float_parameter)
    ip = lambda max_v: int(v * max_v / 10)  # noqa: E731  (_int_parameter)
    if name == "AutoContrast":
        return F.autocontrast(im)
    if name == "Brightness":
        return F.adjust_brightness(im, fp(0.9) + 0.05)
    if name == "Color":
        return F.adjust_saturation(im, fp(0.9) + 0.05)
    if name == "Contrast":
        return F.adjust_contrast(im, fp(0.9) + 0.05)
    if name == "Equalize":
        return F.equalize(im)
    if name == "Identity":
        return im
    if name == "Posterize":
        return F.posterize(im, ip(4) + 4)
    if name == "Rotate":
        return F.rotate(im, float(sign * ip(30)), fill=fill)
    if name == "Sharpness":
        return F.adjust_sharpness(im, fp(0.9) + 0.05)
    if name in ("ShearX", "ShearY"):
        deg = _shear_deg(sign * fp(0.3))
        shear = [deg, 0.0] if name == "ShearX" else [0.0, deg]
        return F.affine(im, 0.0, [0, 0], 1.0, shear, fill=fill, center=[0, 0])
    if name == "Solarize":
        return F.solarize(im, 256 - ip(256))
    if name in ("TranslateX", "TranslateY"):
        shift = float(sign * int(fp(0.3) * width))
        return F.affine(im, 0.0, [shift, 0.0] if name == "TranslateX" else [0.0, shift], 1.0, [0.0, 0.0], fill=fill)
    raise AssertionError(name)


@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_output_equals_sequential_torchvision_ops(channels):
    n = 160
    x = _images(n, channels, size=16, seed=channels)
    x_before = x.clone()
    out, p = A.randaugment_fixmatch(x, _gen(11), return_params=True)
    assert torch.equal(x, x_before)  # the input is not modified in place
    assert out.dtype == torch.uint8 and out.shape == x.shape and out.device == x.device

    def ref(im, i):
        for k in range(2):
            if p["applied"][i, k]:
                name = A.FIXMATCH_OPS[int(p["ops"][i, k])]
                im = _fixmatch_reference(im, name, int(p["magnitudes"][i, k]), int(p["signs"][i, k]))
        x0, y0, x1, y1 = p["cutout_box"][i].tolist()
        im = im.clone()
        im[:, y0:y1, x0:x1] = 127
        return im

    assert torch.equal(out, _per_sample(x, ref))
    assert set(p["ops"][p["applied"]].tolist()) == set(range(14))  # every op was exercised


# ----------------------------------------------------------------------------- Augmenter

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_augmenter_small_shapes_and_dtype(channels, size):
    mean, std = CIFAR_MEAN[:channels], CIFAR_STD[:channels]
    aug = A.Augmenter("small", size, mean, std)
    x = _images(6, channels, size=size)
    g = _gen(0)
    for view in (aug.weak(x, g), aug.strong(x, g), aug.simclr(x, g), aug.test(x)):
        assert view.shape == (6, channels, size, size) and view.dtype == torch.float32 and view.device == x.device
        assert torch.isfinite(view).all()
    assert torch.allclose(aug.test(x), aug.normalize(x))


def test_augmenter_normalization_on_constant_image():
    aug = A.Augmenter("small", 8, CIFAR_MEAN, CIFAR_STD)
    x = torch.full((2, 3, 8, 8), 200, dtype=torch.uint8)
    expected = torch.tensor([(200 / 255 - m) / s for m, s in zip(CIFAR_MEAN, CIFAR_STD)]).view(1, 3, 1, 1)
    assert torch.allclose(aug.normalize(x), expected.expand(2, 3, 8, 8), atol=1e-6)
    assert torch.allclose(aug.test(x), expected.expand(2, 3, 8, 8), atol=1e-6)
    # weak of a constant image: flip and zero-padded crop only, so values are the constant or the pad 0
    w = aug.weak(x, _gen(0))
    zero = ((0 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)).view(1, 3, 1, 1)
    assert torch.all(torch.isclose(w, expected, atol=1e-6) | torch.isclose(w, zero, atol=1e-6))


def test_augmenter_large_crops_224_from_256():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    aug = A.Augmenter("large", 224, mean, std)
    x = _images(2, 3, size=256)
    g = _gen(0)
    for view in (aug.weak(x, g), aug.strong(x, g), aug.simclr(x, g), aug.test(x)):
        assert view.shape == (2, 3, 224, 224) and view.dtype == torch.float32
    assert torch.allclose(aug.test(x), aug.normalize(x[..., 16:240, 16:240]))


def test_augmenter_errors():
    with pytest.raises(ValueError, match="kind"):
        A.Augmenter("medium", 32, CIFAR_MEAN, CIFAR_STD)
    with pytest.raises(ValueError, match="mean and std"):
        A.Augmenter("small", 32, CIFAR_MEAN, CIFAR_STD[:2])
    aug = A.Augmenter("small", 32, CIFAR_MEAN, CIFAR_STD)
    with pytest.raises(ValueError, match="32x32"):
        aug.weak(_images(2, 3, size=28), _gen())
    with pytest.raises(ValueError, match="channels"):
        aug.test(_images(2, 1, size=32))
    with pytest.raises(ValueError, match="canvas"):
        A.Augmenter("large", 224, CIFAR_MEAN, CIFAR_STD).test(_images(1, 3, size=200), torch.tensor([[201, 100]]))


# ----------------------------------------------------------------------------- ImageNet views (released utils.py)


def _coordinate_image(h: int, w: int, canvas: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-channel image whose pixel (r, c) holds (r, c, 200) in a top-left corner of a canvas of
    255s: each output pixel of a nearest-ish resampling says where in the image it came from."""
    x = torch.full((1, 3, canvas, canvas), 255, dtype=torch.uint8)
    x[0, 0, :h, :w] = torch.arange(h, dtype=torch.uint8)[:, None]
    x[0, 1, :h, :w] = torch.arange(w, dtype=torch.uint8)[None, :]
    x[0, 2, :h, :w] = 200
    return x, torch.tensor([[h, w]])


def test_imagenet_weak_crop_is_drawn_on_the_full_image():
    """RandomResizedCrop(224, scale=(0.5, 1)) of the full (here 120 x 240, 2:1) image: crops reach
    both short ends, which a crop of a central square never does; never the canvas padding."""
    h, w, n = 120, 240, 300
    x, sizes = _coordinate_image(h, w, 250)
    x, sizes = x.expand(n, -1, -1, -1).contiguous(), sizes.expand(n, -1)
    out = A.random_resized_crop(x, 64, scale=(0.5, 1.0), generator=_gen(0), sizes=sizes)
    assert (out[:, 2] >= 199).all()  # every pixel comes from the image, none from the canvas
    cols = out[:, 1].float()
    left, right = cols.amin((1, 2)), cols.amax((1, 2))
    assert (left <= 1).any() and (right >= w - 2).any()
    assert (left < (w - h) / 2).float().mean() > 0.3  # outside the central h x h square
    # torchvision's box law: area fraction in [0.5, 1], aspect in [3/4, 4/3] (box width from the columns)
    width = right - left + 1
    assert (width <= w).all() and (width >= (0.5 * h * w * 0.75) ** 0.5 - 2).all()


def test_imagenet_test_view_is_resize_256_center_crop_224():
    """Resize(256) then CenterCrop(224) of a 140 x 280 image: the centred square of side
    140 * 224 / 256 = 122.5 px, at columns 78.75 .. 201.25 and rows 8.75 .. 131.25."""
    aug = A.Augmenter("large", 224, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
    x, sizes = _coordinate_image(140, 250, 256)
    x[0, 1, :140, :250] = (torch.arange(250) * 255 // 249).to(torch.uint8)[None, :]  # column -> 0..255
    out = aug.test(x, sizes)
    assert out.shape == (1, 3, 224, 224)
    side = 140 * 224 / 256
    c0, c1 = (250 - side) / 2, (250 + side) / 2
    cols = out[0, 1] * 249 / 255
    assert abs(float(cols.min()) - c0) < 1.5 and abs(float(cols.max()) - (c1 - 1)) < 1.5
    rows = out[0, 0]
    assert abs(float(rows.min()) - (140 - side) / 2) < 1.5 and abs(float(rows.max()) - ((140 + side) / 2 - 1)) < 1.5
    # the plain 256 x 256 case is the 224 centre crop, exactly
    sq = _images(2, 3, size=256)
    assert torch.equal(aug.test(sq), aug.normalize(sq[..., 16:240, 16:240]))


def test_imagenet_strong_view_adds_reflect_crop_padding_28(monkeypatch):
    """The strong view = weak (RandomResizedCrop + flip) + RandomCrop(224, padding=28, reflect) +
    RandAugment: with the crop, flip and RandAugment pinned to the identity, it is a reflect-padded
    crop of the image at an offset in 0..56 on each axis."""
    identity = lambda x, *a, **k: x  # noqa: E731
    for name in ("random_resized_crop", "random_hflip", "randaugment_fixmatch"):
        monkeypatch.setattr(A, name, identity)
    aug = A.Augmenter("large", 224, (0.0,) * 3, (1 / 255,) * 3)
    assert aug.strong_padding == 28 and aug.test_resize == 256
    n = 400
    x, _ = _coordinate_image(224, 224, 224)
    x = x.expand(n, -1, -1, -1).contiguous()
    out = aug.strong(x, _gen(5)).round().to(torch.uint8)
    offsets = []
    for i in range(n):
        t = int(out[i, 0, 112, 0]) - 84  # source row of output row 112 = t + 112 - 28
        padded = F.pad(x[i], [28], padding_mode="reflect")
        assert 0 <= t <= 56
        hits = [l for l in range(57) if torch.equal(padded[:, t:t + 224, l:l + 224], out[i])]
        assert hits, i
        offsets.append((t, hits[0]))
    ts = {t for t, _ in offsets}
    assert min(ts) == 0 and max(ts) == 56 and len(set(offsets)) > 300
