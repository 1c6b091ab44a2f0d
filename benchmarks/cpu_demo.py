#!/usr/bin/env python
"""The demo model on the CPU, variants side by side in one process: training (LPS: three views,
conv1..layer3 frozen) and SimCLR pretraining (two views, every layer trains), in images per
second, plus the evaluation forward; optionally the top ops by self time (``--profile``).

Each variant is a set of switches applied to the same config (``lps/configs/demo.yaml`` unless
``-c``/overrides say otherwise); timings alternate between the variants ``--repeats`` times, so a
noisy machine affects them alike, and the median is reported with the ratio to the first variant.
Variants (``--variants``, comma separated):

- ``nchw``: the default memory format (the trainer before ``train.channels_last`` applied to CPUs);
- ``channels_last``: model and views in channels_last (the trainer's default, ``train.channels_last``);
- ``stem2``: channels_last and a stride-2 first convolution (``model.stem_stride=2``): a different
  model (every stage at half the resolution), so its accuracy has to be measured separately.

Example (2 cores; one thread per variant as in two parallel demo jobs)::

    python benchmarks/cpu_demo.py --threads 1 --steps 6 --repeats 3 --profile
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/cpu_demo.py   # an AVX2-only CPU
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lps import losses  # noqa: E402
from lps.config import build_config  # noqa: E402
from lps.data.augment import Augmenter  # noqa: E402
from lps.methods import METHODS, Batch, MethodContext  # noqa: E402
from lps.batching import batch_sizes, epoch_index_batches  # noqa: E402
from lps.data import prepare_data  # noqa: E402
from lps.models import SimCLRModel, apply_freeze, build_backbone, build_model, embed, resolve_arch, \
    use_channels_last  # noqa: E402
from lps.optim import make_optimizer, optimization_step  # noqa: E402
from lps.utils import library_versions  # noqa: E402

VARIANTS = {"nchw": {"channels_last": False, "stem_stride": 1},
            "channels_last": {"channels_last": True, "stem_stride": 1},
            "stem2": {"channels_last": True, "stem_stride": 2}}
CPU = torch.device("cpu")


def _cl(v: torch.Tensor, on: bool) -> torch.Tensor:
    return v.contiguous(memory_format=torch.channels_last) if on else v


class Workload:
    def __init__(self, args):
        self.cfg = build_config(["demo"] + args.config, ["method=lps", "model.init=scratch"] + args.overrides)
        self.data, self.split, self.test_idx = prepare_data(self.cfg)
        self.aug = Augmenter(self.data.kind, self.data.image_size, self.data.mean, self.data.std)
        n_lab, n_unl = len(self.split.labeled_idx), len(self.split.unlabeled_idx)
        self.b_lab, self.b_unl, self.steps = batch_sizes(n_lab, n_unl, self.cfg.optim.batch_size)
        g = torch.Generator().manual_seed(0)
        lab, unl = torch.as_tensor(self.split.labeled_idx), torch.as_tensor(self.split.unlabeled_idx)
        self.index_batches = epoch_index_batches(lab, unl, self.b_lab, self.b_unl, self.steps, g)
        self.ctx = MethodContext(num_classes=self.data.num_classes, n_seen=self.split.n_seen, n_labeled=n_lab,
                                 n_unlabeled=n_unl, epochs=self.cfg.optim.epochs, steps_per_epoch=self.steps,
                                 feat_dim=0, device=CPU)
        self.arch = resolve_arch(self.cfg.model.arch, self.data.kind)

    def _model(self, switches: dict, simclr: bool = False) -> tuple[torch.nn.Module, bool]:
        """The training (or SimCLR) model of a variant, seeded, in its memory format."""
        torch.manual_seed(0)
        if simclr:
            backbone = build_backbone(self.arch, self.data.channels, self.cfg.model.width, switches["stem_stride"])
            model = SimCLRModel(backbone, self.cfg.pretrain.proj_dim)
        else:
            self.cfg.model.stem_stride = switches["stem_stride"]
            m, d = self.cfg.model, self.data
            model = build_model(m.arch, d.kind, d.channels, d.num_classes, m.width, m.stem_stride, m.head_scale)
            apply_freeze(model, self.cfg.model.freeze)
            self.ctx.feat_dim = model.backbone.out_dim
        cl = use_channels_last(model, CPU, switches["channels_last"])  # as the trainer decides
        if switches["channels_last"] and not cl:
            print("# channels_last not applied: a strided 1x1 convolution has input channels that are not a "
                  "multiple of 16 (lps.models.use_channels_last)", flush=True)
        return model, cl

    def train_fn(self, switches: dict):
        model, cl = self._model(switches)
        cls = METHODS.get("lps")
        method = cls(self.cfg.method.params, self.ctx)
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad], self.cfg.optim, CPU)
        g = torch.Generator().manual_seed(1)
        state = {"i": 0}

        def step() -> int:
            idx = self.index_batches[state["i"] % len(self.index_batches)]
            state["i"] += 1
            x = self.data.train.x[idx]
            views = [_cl(f(x, g), cl) for f in (self.aug.weak, self.aug.weak, self.aug.strong)]
            y = torch.as_tensor(self.data.train_y[idx[: self.b_lab].numpy()])
            optimization_step(method, model, opt, Batch(views=views, y_lb=y, n_lb=self.b_lab, idx=idx, generator=g),
                              CPU, "fp32")
            return len(idx)

        return step

    def pretrain_fn(self, switches: dict):
        model, cl = self._model(switches, simclr=True)
        p = self.cfg.pretrain
        opt = torch.optim.SGD(model.parameters(), lr=p.lr * p.batch_size / 256, momentum=p.momentum,
                              weight_decay=p.weight_decay)
        g = torch.Generator().manual_seed(2)
        n = len(self.data.train.x)
        state = {"i": 0}

        def step() -> int:
            start = (state["i"] * p.batch_size) % max(1, n - p.batch_size)
            state["i"] += 1
            x = self.data.train.x[start:start + p.batch_size]
            v1, v2 = _cl(self.aug.simclr(x, g), cl), _cl(self.aug.simclr(x, g), cl)
            z = model(torch.cat([v1, v2]))
            za, zb = z.chunk(2)
            loss = losses.unsupervised_contrastive_loss(za, zb, p.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return len(x)

        return step

    def eval_fn(self, switches: dict):
        model, cl = self._model(switches)
        idx = self.split.unlabeled_idx

        def step() -> int:
            embed(model, self.data.train, idx, self.aug.test, CPU, self.cfg.train.eval_batch_size, "fp32", cl)
            return len(idx)

        return step


def measure(fns: dict, steps: int, warmup: int, repeats: int) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # alternate: machine noise hits every variant alike
            t0, n = time.perf_counter(), 0
            for _ in range(steps):
                n += fn()
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def top_ops(fn, steps: int, k: int = 10) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=k)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", action="append", default=[], help="extra lps config file")
    ap.add_argument("--variants", default="nchw,channels_last,stem2")
    ap.add_argument("--parts", default="train,pretrain,eval")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="top 10 ops by self CPU time per part and variant")
    ap.add_argument("overrides", nargs="*", help="lps config overrides (key=value)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    print(f"# cpu_demo: {' '.join(sys.argv)}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}, "
          f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '(default)')}, "
          f"capability in use: {torch.backends.cpu.get_cpu_capability()}; {library_versions()}")
    w = Workload(args)
    print(f"# demo config: width {w.cfg.model.width}, {w.data.image_size}x{w.data.image_size}x{w.data.channels}, "
          f"batch {w.cfg.optim.batch_size} (train, 3 views) / {w.cfg.pretrain.batch_size} (SimCLR, 2 views), "
          f"{len(w.split.unlabeled_idx)} unlabeled images evaluated")
    for part in [p for p in args.parts.split(",") if p]:
        make = {"train": w.train_fn, "pretrain": w.pretrain_fn, "eval": w.eval_fn}[part]
        fns = {v: make(VARIANTS[v]) for v in variants}
        steps = 1 if part == "eval" else args.steps
        rates = measure(fns, steps, 1 if part == "eval" else args.warmup, args.repeats)
        base = statistics.median(rates[variants[0]])
        print(f"\n## {part}: images/s (median of {args.repeats}, each window {steps} step(s))")
        for v in variants:
            med = statistics.median(rates[v])
            print(f"  {v:15s} {med:8.1f}   ratio {med / base:5.2f}   windows {[round(r, 1) for r in rates[v]]}")
        if args.profile:
            for v in variants:
                print(f"\n### {part} / {v}: top ops by self CPU time ({steps} step(s))")
                print(top_ops(fns[v], steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
