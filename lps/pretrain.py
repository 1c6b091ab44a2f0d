"""SimCLR pretraining of the backbone (Chen et al. 2020): two SimCLR views per image, an MLP
projector, NT-Xent at temperature ``pretrain.temperature``, SGD with a cosine schedule.

One pretraining serves every run on the same dataset and architecture. Its folder
(``<output_dir>/../pretrain/<id>``) holds ``config.yaml``, ``metrics.jsonl``, a per-epoch
``checkpoint.pt`` (resumed automatically) and the final ``backbone.pt`` that ``lps train`` loads.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from lps import losses
from lps.config import Config, config_to_yaml
from lps.data.augment import Augmenter
from lps.data.datasets import load_dataset
from lps.data.splits import subsample_per_class
from lps.errors import LPSError
from lps.identity import pretrain_dir, pretrain_identity
from lps.models import SimCLRModel, build_backbone, resolve_arch, use_channels_last
from lps.run_folder import RunFolder
from lps.runtime import autocast, cosine_factor, resolve_device, setup_runtime
from lps.utils import atomic_torch_save, derive_seed, git_commit, hardware_info, library_versions, make_generator, \
    seed_everything, stable_hash


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

    folder = RunFolder(out_dir, stable_hash(pretrain_identity(cfg)), "pretraining", "pretraining")
    with folder.lock():
        if final.exists():  # finished by another process meanwhile
            return final
        resumed = folder.open(config_to_yaml(cfg), required=("epoch", "model", "optimizer", "identity"))
        start = resumed.epoch
        if resumed.checkpoint is not None:
            try:
                model.load_state_dict(resumed.checkpoint["model"])
                opt.load_state_dict(resumed.checkpoint["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise LPSError(f"pretraining checkpoint {folder.checkpoint_file} does not match this model: {e}; "
                               "delete it") from None
        folder.write_info({
            "git_commit": git_commit(), "libraries": library_versions(), "hardware": hardware_info(device),
            "command": sys.argv, "n_images": len(pool), "steps_per_epoch": steps, "arch": arch})

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
            rec = folder.commit_epoch(rec, {"model": model.state_dict(), "optimizer": opt.state_dict()})
            if cfg.train.progress != "none":
                print(f"[lps] simclr epoch {epoch + 1}/{p.epochs} | loss {rec['loss']:.4f} | "
                      f"{rec['images_per_s']:.0f} img/s", flush=True)
        atomic_torch_save(model.backbone.state_dict(), final)
        return final
