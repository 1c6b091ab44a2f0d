"""SimCLR pretraining of the backbone (Chen et al. 2020): two SimCLR views per image, an MLP
projector, NT-Xent at temperature ``pretrain.temperature``, SGD with a cosine schedule.

One pretraining serves every run on the same dataset and architecture. Its folder
(``<output_dir>/../pretrain/<id>``) holds ``config.yaml``, ``metrics.jsonl``, a per-epoch
``checkpoint.pt`` (resumed automatically) and the final ``backbone.pt`` that ``lps train`` loads.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from lps import losses
from lps.config import Config, config_to_yaml, to_dict
from lps.data.augment import Augmenter
from lps.data.datasets import load_dataset
from lps.data.splits import subsample_per_class
from lps.errors import LPSError
from lps.models import build_backbone, resolve_arch, use_channels_last
from lps.runtime import autocast, cosine_factor, resolve_device, setup_runtime
from lps.utils import (append_jsonl, atomic_torch_save, atomic_write_text, derive_seed, git_commit,
                       hardware_info, library_versions, make_generator, plain_json, remove_stale_tmp, run_lock,
                       seed_everything, stable_hash, write_jsonl)


def pretrain_identity(cfg: Config) -> dict:
    p = {k: v for k, v in to_dict(cfg.pretrain).items() if k != "checkpoint"}
    ident = {"dataset": cfg.data.dataset, "arch": cfg.model.arch, "width": cfg.model.width,
             "stem_stride": cfg.model.stem_stride, "pretrain": p,
             "max_train_per_class": cfg.data.max_train_per_class}
    if cfg.data.max_train_per_class > 0:
        ident["split_seed"] = cfg.data.split_seed  # the subsample depends on it
    return ident


def pretrain_dir(cfg: Config) -> Path:
    name = f"simclr-{cfg.data.dataset}-{stable_hash(pretrain_identity(cfg))}"
    return Path(cfg.output_dir).parent / "pretrain" / name


class SimCLRModel(nn.Module):
    def __init__(self, backbone: nn.Module, proj_dim: int):
        super().__init__()
        d = backbone.out_dim
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                                       nn.Linear(d, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def pretrain(cfg: Config) -> Path:
    """Run (or resume, or reuse) SimCLR pretraining; return the path of ``backbone.pt``."""
    out_dir = pretrain_dir(cfg)
    final = out_dir / "backbone.pt"
    if final.exists():
        print(f"[lps] pretraining already done: {final}", flush=True)
        return final
    p = cfg.pretrain
    device = resolve_device(cfg.train.device)
    setup_runtime(device, cfg.train.threads, cfg.train.deterministic)
    data = load_dataset(cfg.data)
    pool = torch.as_tensor(subsample_per_class(data.train_y, cfg.data.max_train_per_class, cfg.data.split_seed))
    if len(pool) < 2:
        raise LPSError("SimCLR needs at least two training images")
    seed_everything(derive_seed(p.seed, "pretrain-init"))
    arch = resolve_arch(cfg.model.arch, data.kind)
    model = SimCLRModel(build_backbone(arch, data.channels, cfg.model.width, cfg.model.stem_stride), p.proj_dim).to(device)
    channels_last = use_channels_last(model, device, cfg.train.channels_last)
    base_lr = p.lr * p.batch_size / 256
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=p.momentum, weight_decay=p.weight_decay, **fused)
    augmenter = Augmenter(data.kind, data.image_size, data.mean, data.std)
    images = data.train.to(device) if device.type == "cuda" else data.train
    batch_size = min(p.batch_size, len(pool))
    steps = len(pool) // batch_size
    if p.max_steps_per_epoch > 0:
        steps = min(steps, p.max_steps_per_epoch)

    with run_lock(out_dir, "pretraining"):
        if final.exists():  # finished by another process meanwhile
            return final
        for name in remove_stale_tmp(out_dir):
            print(f"[lps] pretraining: removed {name} (left by a kill during a write)", flush=True)
        ckpt_file = out_dir / "checkpoint.pt"
        ident = stable_hash(pretrain_identity(cfg))
        start, history = 0, []
        if ckpt_file.exists():
            try:
                ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
                if ckpt.get("identity") != ident:
                    raise LPSError(f"{ckpt_file} belongs to another pretraining config; delete {out_dir}")
                model.load_state_dict(ckpt["model"])
                opt.load_state_dict(ckpt["optimizer"])
                start = ckpt["epoch"]
                history = list(ckpt.get("history", []))
                if len(history) != start:
                    raise LPSError(f"{ckpt_file} has no metrics history (written by an older lps?); delete {out_dir}")
            except LPSError:
                raise
            except Exception as e:  # noqa: BLE001
                raise LPSError(f"pretraining checkpoint {ckpt_file} is corrupt ({e}); delete it to start over") from None
            print(f"[lps] resuming SimCLR pretraining from epoch {start}", flush=True)
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / "config.yaml", config_to_yaml(cfg))
        atomic_write_text(out_dir / "run_info.json", json.dumps({
            "git_commit": git_commit(), "libraries": library_versions(), "hardware": hardware_info(device),
            "command": sys.argv, "n_images": len(pool), "steps_per_epoch": steps, "arch": arch}, indent=2))
        # the checkpoint is the commit point of an epoch: metrics.jsonl is rebuilt from its history
        write_jsonl(out_dir / "metrics.jsonl", history)

        model.train()
        for epoch in range(start, p.epochs):
            t0 = time.time()
            lr = base_lr * cosine_factor(epoch, p.epochs)
            for g in opt.param_groups:
                g["lr"] = lr
            seed_everything(derive_seed(p.seed, "pretrain-epoch", epoch))
            g_idx = make_generator(derive_seed(p.seed, "pretrain-batches", epoch))
            g_aug = make_generator(derive_seed(p.seed, "pretrain-augment", epoch), device)
            perm = pool[torch.randperm(len(pool), generator=g_idx)]
            index_batches = [perm[s * batch_size:(s + 1) * batch_size] for s in range(steps)]
            total = 0.0
            for x, sizes in images.batches(index_batches, device):
                v1, v2 = augmenter.simclr(x, g_aug, sizes), augmenter.simclr(x, g_aug, sizes)
                if channels_last:
                    v1 = v1.contiguous(memory_format=torch.channels_last)
                    v2 = v2.contiguous(memory_format=torch.channels_last)
                with autocast(device, p.precision):
                    z = model(torch.cat([v1, v2]))
                za, zb = z.float().chunk(2)
                loss = losses.unsupervised_contrastive_loss(za, zb, p.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
            dt = time.time() - t0
            rec = {"epoch": epoch, "lr": lr, "loss": total / max(steps, 1), "images_per_s": steps * batch_size / dt,
                   "epoch_time_s": dt}
            rec = plain_json(rec)
            append_jsonl(out_dir / "metrics.jsonl", rec)  # durable before the commit point
            history.append(rec)
            atomic_torch_save({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                               "identity": ident, "history": history}, ckpt_file)  # commit point of the epoch
            if cfg.train.progress != "none":
                print(f"[lps] simclr epoch {epoch + 1}/{p.epochs} | loss {rec['loss']:.4f} | "
                      f"{rec['images_per_s']:.0f} img/s", flush=True)
        atomic_torch_save(model.backbone.state_dict(), final)
        return final
