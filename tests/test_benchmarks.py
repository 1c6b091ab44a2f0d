"""The throughput benchmark (``benchmarks/throughput.py``) and its reference-style pipeline
(``benchmarks/reference_pipeline.py``): a tiny CPU run of the whole benchmark, and the reference's
PIL RandAugment against this project's batched one. No timing assertions."""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_fmnist
from lps.data import augment as A

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import reference_pipeline as ref  # noqa: E402

TINY = [
    "--device", "cpu", "--cifar-batch", "8", "--cifar-images", "64", "--width", "4",
    "--imagenet-batch", "4", "--imagenet-crop", "32", "--imagenet-resize", "40", "--jpeg-size", "60x48",
    "--jpeg-files", "4", "--eval-batch", "16", "--steps", "1", "--repeats", "1", "--warmup", "1",
    "--workers", "1", "--threads", "1", "--matmul-n", "128",
]


@pytest.mark.slow
def test_benchmark_runs_on_cpu_and_prints_both_pipelines(tmp_path):
    out_json = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH / "throughput.py"), *TINY, "--json", str(out_json)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert text.startswith("command: ") and "throughput.py --device cpu" in text.splitlines()[0]
    assert "| workload | batch | (a) reference-style | (b) this project | (b)/(a) |" in text
    for dataset in ("CIFAR-100", "ImageNet-100"):
        for workload in ("augmentation only", "LPS training step", "evaluation forward"):
            row = next(line for line in text.splitlines() if line.startswith(f"| {dataset} {workload}"))
            assert re.search(r"\| \d+\.\d\dx \|$", row), row  # both rates and their ratio
    assert "% of peak" in text and "measured fp32 matmul" in text
    assert "CIFAR-100 full LPS run" in text and "ImageNet-100 one epoch" in text
    assert "uint8 memmap cache" in text and "PIL decode" in text
    summary = json.loads(out_json.read_text())
    for r in summary["results"]:
        for key in ("aug", "step", "eval"):
            assert r[f"{key}_ref"]["median"] > 0 and r[f"{key}_proj"]["median"] > 0
        assert r["flops"]["step_per_row"] > 0
        # the frozen layers run no backward: the step costs less than 3 x (fwd + 2 x fwd)
        assert 3 * r["flops"]["forward_per_row"] < r["flops"]["step_per_row"] < 9 * r["flops"]["forward_per_row"]


def test_benchmark_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--sections", "cifar,gpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--sections" in proc.stderr


def test_reference_randaugment_draws_from_the_project_pool():
    names = [name for name, _op, _max_v, _bias in ref.FIXMATCH_AUGMENT_POOL]
    assert len(names) == 14 and names == list(A.FIXMATCH_OPS)
    assert [(n, m, b) for n, _op, m, b in ref.FIXMATCH_AUGMENT_POOL] == list(A.FIXMATCH_POOL)


def _image(seed: int, mode: str = "RGB", size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _sign_after(seed: int) -> int:
    random.seed(seed)
    return -1 if random.random() < 0.5 else 1


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Posterize", "Solarize"])
def test_reference_ops_equal_the_batched_ops(name):
    """Same op, magnitude and sign: the PIL reference op equals the project's batched op (PIL's
    default black fill for the geometric ops)."""
    op = {n: (fn, m, b) for n, fn, m, b in ref.FIXMATCH_AUGMENT_POOL}[name]
    img = _image(1)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].contiguous()
    for v in (1, 5, 9):
        for seed in range(4):
            s = _sign_after(seed)
            random.seed(seed)
            got = torch.from_numpy(np.array(op[0](img, v=v, max_v=op[1], bias=op[2]))).permute(2, 0, 1)[None]
            fv = v * op[1] / 10 + op[2]
            expected = {
                "Rotate": lambda: A.rotate(x, s * int(v * 30 / 10), fill=0),
                "ShearX": lambda: A.shear_x(x, s * fv, fill=0),
                "ShearY": lambda: A.shear_y(x, s * fv, fill=0),
                "TranslateX": lambda: A.translate_x(x, -s * int(fv * 32), fill=0),
                "TranslateY": lambda: A.translate_y(x, -s * int(fv * 32), fill=0),
                "Posterize": lambda: A.posterize(x, int(v * 4 / 10) + 4),
                "Solarize": lambda: A.solarize(x, 256 - int(v * 256 / 10)),
            }[name]()
            assert torch.equal(got, expected), (name, v, seed)


def test_reference_randaugment_magnitudes_and_cutout():
    ra = ref.RandAugmentMC(n=2, m=10, cutout=16)
    random.seed(0)
    np.random.seed(0)
    draws = []
    orig = np.random.randint
    np.random.randint = lambda lo, hi: draws.append((lo, hi)) or orig(lo, hi)
    try:
        outs = [ra(_image(i)) for i in range(20)]
    finally:
        np.random.randint = orig
    assert draws == [(1, 10)] * 40  # two magnitudes per image, 1..9 (NumPy's bound is exclusive)
    for out in outs:
        a = np.asarray(out)
        assert out.size == (32, 32) and out.mode == "RGB"
        assert (a == 127).all(axis=2).sum() >= 9 * 9  # the grey square (PIL includes the end pixel), >= 9 px a side
    gray = ref.RandAugmentMC(cutout=8)(_image(3, "L"))
    assert gray.mode == "L" and gray.size == (32, 32)


def test_reference_views_and_training_step():
    from lps.data.datasets import CIFAR_MEAN, CIFAR_STD
    from lps.methods.base import MethodContext
    from lps.methods.lps import LPS, LPSParams
    from lps.models import OpenWorldModel, apply_freeze, build_backbone

    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(12) % 5
    ds = ref.ArrayImageDataset(images, labels, ref.cifar_transforms(CIFAR_MEAN, CIFAR_STD)["train"])
    loader = ref.reference_loader(ds, [list(range(8))], workers=0)
    (v1, v2, v3), y = next(iter(loader))
    assert v1.shape == v2.shape == v3.shape == (8, 3, 32, 32) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)  # independent random views

    torch.manual_seed(0)
    model = OpenWorldModel(build_backbone("resnet18_cifar", 3, 4), 10)
    apply_freeze(model, "layer4")
    ctx = MethodContext(num_classes=10, n_seen=5, n_labeled=2, n_unlabeled=6, epochs=1, steps_per_epoch=1,
                        feat_dim=model.backbone.out_dim, device=torch.device("cpu"))
    method = LPS(LPSParams(), ctx)
    opt = ref.make_reference_optimizer([p for p in model.parameters() if p.requires_grad])
    before = model.head.weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    logged = ref.reference_training_step(method, model, opt, [v1, v2, v3], y[:2], 2, torch.device("cpu"), g)
    assert np.isfinite(logged["loss"]) and not torch.equal(before, model.head.weight)
    method.fuse_views = True
    with pytest.raises(ValueError, match="one forward pass per view"):
        ref.reference_training_step(method, model, opt, [v1, v2, v3], y[:2], 2, torch.device("cpu"), g)


@needs_fmnist
def test_cpu_demo_benchmark_prints_every_variant_and_part():
    proc = subprocess.run([sys.executable, str(BENCH / "cpu_demo.py"), "--steps", "1", "--warmup", "0", "--repeats", "1",
                           "--variants", "nchw,channels_last,stem2", "data.max_train_per_class=12",
                           "optim.batch_size=16", "pretrain.batch_size=16", "model.width=4"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for part in ("train", "pretrain", "eval"):
        assert f"## {part}: images/s" in proc.stdout
    assert proc.stdout.count("ratio  1.00") >= 3 and proc.stdout.count("stem2") >= 3
    bad = subprocess.run([sys.executable, str(BENCH / "cpu_demo.py"), "--variants", "nchw,fast"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "fast" in bad.stderr
