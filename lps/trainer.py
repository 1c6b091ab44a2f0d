"""Training loop for every OpenSSL method: batches, optimiser, schedule, precision, evaluation,
``metrics.jsonl``, atomic checkpoints with automatic resume, and the final ``result.parquet``.

A run folder (``<output_dir>/<run_id>``) holds:

- ``config.yaml``   the resolved config (the run id is a hash of its scientific content)
- ``run_info.json`` code version, library versions, hardware, split sizes, init report
- ``split.npz``     labeled and unlabeled training indices (auditable)
- ``metrics.jsonl`` one line per epoch
- ``checkpoint.pt`` the last finished epoch (model, method state, optimiser, schedule)
- ``result.parquet`` one row, written when the run completes (schema: ``lps.results``)

- ``.lock``         who is training the run (pid, host); ``flock``-ed while a process works on it

Starting the same run again resumes from ``checkpoint.pt``; a finished run returns its result.

Crash consistency (a kill, preemption or OOM at any instant):

- Every file is written to a temporary file, fsynced and renamed (``lps.utils.atomic_write``), except
  ``metrics.jsonl``, which is appended and fsynced. Each write passes ``lps.utils.write_point``, where
  the fault-injection test (``tests/test_crash_safety.py``) kills the process, one point at a time.
- The commit point of epoch e is the rename of ``checkpoint.pt`` holding epoch e: model, method and
  optimiser state, and the metrics history of epochs 0..e. Epoch e's line is appended to
  ``metrics.jsonl`` before it, so it is never less durable than its checkpoint.
- A resume trusts only the checkpoint. It takes the run's lock (a second process of the same run
  stops at once), deletes temporary files left by a killed write, rebuilds ``metrics.jsonl`` from
  the checkpoint's history (dropping a line of an uncommitted epoch, restoring a lost or torn one),
  and redoes the uncommitted epoch. ``result.parquet`` is written last, from the committed history,
  so a kill before it only repeats that write.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lps import losses
from lps.config import Config, config_to_yaml, to_dict
from lps.data.augment import Augmenter
from lps.data.datasets import ImageData, load_dataset
from lps.data.splits import OpenWorldSplit, open_world_split
from lps.errors import LPSError
from lps.evaluation import openssl_metrics
from lps.methods import METHODS, Batch, Method, MethodContext
from lps.models import (OpenWorldModel, apply_freeze, build_backbone, load_backbone_state, resolve_arch,
                        use_channels_last)
from lps.results import make_result_row, read_result_row, write_result
from lps.runtime import autocast, cosine_factor, resolve_device, setup_runtime
from lps.utils import (append_jsonl, atomic_torch_save, atomic_write_text, derive_seed, device_label,
                       git_commit, hardware_info, library_versions, make_generator, plain_json, remove_stale_tmp,
                       run_lock, seed_everything, stable_hash, write_jsonl)

# keys that do not change what a run computes: excluded from the run id and the resume check
NON_SCIENTIFIC = {
    "output_dir", "run_name", "data.data_dir", "data.imagenet_dir", "data.num_workers", "train.device",
    "train.threads", "train.progress", "train.eval_batch_size", "train.eval_test_every", "pretrain.checkpoint",
    "model.init",
}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and k != "method":
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def init_identity(init: str) -> str:
    """What a run starts from, for its identity: the SimCLR pretraining of its config (whose settings
    are part of the identity already), random weights, or an external file (by content hash)."""
    if not init:
        return "pretrain"
    if init == "scratch":
        return "scratch"
    path = Path(init)
    if path.is_file():
        import hashlib

        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return "file:" + h.hexdigest()[:16]
    return "file:" + init


def run_identity(cfg: Config) -> dict:
    flat = _flatten(to_dict(cfg))
    ident = {k: v for k, v in flat.items() if k not in NON_SCIENTIFIC}
    ident["model.init"] = init_identity(cfg.model.init)
    return ident


def run_id(cfg: Config) -> str:
    if cfg.run_name:
        return cfg.run_name
    return f"{cfg.method_name}-{cfg.data.dataset}-seed{cfg.train.seed}-{stable_hash(run_identity(cfg))}"


# --------------------------------------------------------------------------------------------
# batching


def batch_sizes(n_lab: int, n_unlab: int, batch_size: int, large: bool = False) -> tuple[int, int, int]:
    """Labeled part of a batch (at least 1), the rest unlabeled; an epoch is one pass over the
    labeled set with drop_last (REFERENCE.md). As released: CIFAR (``large`` False)
    ``int(B * n_lab / n)``; ImageNet (``large``, the released ImageNet script)
    ``B - int(B * n_unlab / n)``, one more whenever ``B * n_lab / n`` is not an integer."""
    n = n_lab + n_unlab
    b_lab = batch_size - int(batch_size * n_unlab / n) if large else int(batch_size * n_lab / n)
    b_lab = max(1, b_lab)
    b_lab = min(b_lab, n_lab)
    b_unl = max(1, batch_size - b_lab)
    return b_lab, b_unl, max(1, n_lab // b_lab)


def epoch_index_batches(labeled: torch.Tensor, unlabeled: torch.Tensor, b_lab: int, b_unl: int,
                        steps: int, g: torch.Generator) -> list[torch.Tensor]:
    """Index batches for one epoch: labeled rows first, then unlabeled rows (the unlabeled set is
    cycled through fresh permutations)."""
    lab_perm = labeled[torch.randperm(len(labeled), generator=g)]
    need = steps * b_unl
    reps = math.ceil(need / len(unlabeled))
    unl_perm = torch.cat([unlabeled[torch.randperm(len(unlabeled), generator=g)] for _ in range(reps)])
    return [torch.cat([lab_perm[s * b_lab:(s + 1) * b_lab], unl_perm[s * b_unl:(s + 1) * b_unl]])
            for s in range(steps)]


# --------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def embed(model: torch.nn.Module, source, idx: np.ndarray, transform: Callable, device: torch.device,
          batch_size: int, precision: str, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and backbone features (float32, CPU) of the images ``idx`` with the test transform
    (``channels_last``: inputs in that memory format, for a model converted to it)."""
    was_training = model.training
    model.eval()
    logits, feats = [], []
    chunks = [torch.as_tensor(idx[i:i + batch_size]) for i in range(0, len(idx), batch_size)]
    for x, sizes in source.batches(chunks, device):
        v = transform(x, sizes)
        if channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            z, f = model(v)
        logits.append(z.float().cpu())
        feats.append(f.float().cpu())
    model.train(was_training)
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, 0)
    return torch.cat(logits), torch.cat(feats)


def evaluate_sets(model, method: Method, data: ImageData, split: OpenWorldSplit, test_idx: np.ndarray,
                  augmenter: Augmenter, device, cfg: Config, final: bool = True,
                  with_test: bool = True, *, channels_last: bool) -> tuple[dict, torch.Tensor]:
    """Metrics on the unlabeled training images (the paper's transductive protocol) and, with
    ``with_test``, on the held-out test split (``test_`` prefix). Also returns the unlabeled softmax
    outputs. ``final``: the evaluation reported in result.parquet (``Method.final_evaluation``).
    ``channels_last``: the model's memory format (what ``use_channels_last`` returned)."""
    method.final_evaluation = final
    try:
        return _evaluate_sets(model, method, data, split, test_idx, augmenter, device, cfg, with_test, channels_last)
    finally:
        method.final_evaluation = False


def _evaluate_sets(model, method: Method, data: ImageData, split: OpenWorldSplit, test_idx: np.ndarray,
                   augmenter: Augmenter, device, cfg: Config, with_test: bool,
                   channels_last: bool) -> tuple[dict, torch.Tensor]:
    out: dict = {}
    cache: dict = {}

    def labeled() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if "lab" not in cache:
            zl, fl = embed(model, data.train, split.labeled_idx, augmenter.test, device, cfg.train.eval_batch_size,
                           cfg.train.precision, channels_last)
            cache["lab"] = (zl, fl, torch.as_tensor(data.train_y[split.labeled_idx]))
        return cache["lab"]

    method.before_evaluation(labeled)
    z, f = embed(model, data.train, split.unlabeled_idx, augmenter.test, device, cfg.train.eval_batch_size,
                 cfg.train.precision, channels_last)
    y = data.train_y[split.unlabeled_idx]
    out.update(openssl_metrics(y, method.predict(z, f), split.n_seen))
    probs = F.softmax(z, 1)
    # estimated vs true class distribution of the unlabeled set (Fig. 4)
    pi_hat = probs.mean(0)
    pi = torch.bincount(torch.as_tensor(y), minlength=split.num_classes).float()
    pi = pi / pi.sum()
    out["kl_pi_hat_pi"] = float(losses.kl_divergence(pi_hat, pi))
    out["pi_hat"] = [round(float(v), 5) for v in pi_hat]
    if with_test and len(test_idx):
        zt, ft = embed(model, data.test, test_idx, augmenter.test, device, cfg.train.eval_batch_size,
                       cfg.train.precision, channels_last)
        m = openssl_metrics(data.test_y[test_idx], method.predict(zt, ft), split.n_seen)
        out.update({f"test_{k}": v for k, v in m.items()})
    return out, probs


# --------------------------------------------------------------------------------------------
# setup shared with pretraining and the CLI


def prepare_data(cfg: Config) -> tuple[ImageData, OpenWorldSplit, np.ndarray]:
    data = load_dataset(cfg.data)
    split = open_world_split(data.train_y, data.num_classes, cfg.data.seen_class_ratio, cfg.data.label_ratio,
                             cfg.data.split_seed, cfg.data.max_train_per_class)
    from lps.data.splits import subsample_per_class

    test_idx = subsample_per_class(data.test_y, cfg.data.max_test_per_class, cfg.data.split_seed)
    return data, split, test_idx


def build_model(cfg: Config, data: ImageData) -> OpenWorldModel:
    arch = resolve_arch(cfg.model.arch, data.kind)
    return OpenWorldModel(build_backbone(arch, data.channels, cfg.model.width, cfg.model.stem_stride), data.num_classes,
                          cfg.model.head_scale)


def resolve_init(cfg: Config) -> str:
    """The backbone file a run starts from: ``model.init`` ("scratch" = random init), else the
    SimCLR checkpoint of this config's pretraining."""
    if cfg.model.init:
        return cfg.model.init
    if cfg.pretrain.checkpoint:
        return cfg.pretrain.checkpoint
    from lps.pretrain import pretrain_dir

    return str(pretrain_dir(cfg) / "backbone.pt")


def load_init(model: OpenWorldModel, init: str, strict: bool) -> dict:
    if init == "scratch":
        return {"source": "scratch", "missing": [], "unexpected": []}
    path = Path(init)
    if not path.exists():
        raise LPSError(f"backbone checkpoint {init} does not exist; run `lps pretrain` with the same config "
                       "first, pass --init FILE, or use --init scratch")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise LPSError(f"cannot read backbone checkpoint {init}: {type(e).__name__}: {e} "
                       "(corrupt file? delete it and pretrain again)") from None
    report = load_backbone_state(model.backbone, state, str(path), strict=strict)
    if report["missing"] or report["unexpected"]:
        print(f"[lps] init from {path}: {len(report['missing'])} missing keys {report['missing'][:5]}, "
              f"{len(report['unexpected'])} unexpected keys {report['unexpected'][:5]}", file=sys.stderr)
    return {"source": str(path), **report}


def make_optimizer(params, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    fused = {"fused": True} if device.type == "cuda" else {}
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, **fused)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, **fused)


def lr_factor(cfg: Config, epoch: int) -> float:
    o = cfg.optim
    if o.schedule == "cosine":
        return cosine_factor(epoch, o.epochs)
    if o.schedule == "multistep":
        return o.gamma ** sum(epoch >= m for m in o.milestones)
    return 1.0


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, mode: str, total: int, desc: str):
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.mode = "none" if mode == "none" else ("bar" if use_bar else "log")
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()}, refresh=False)

    def log(self, text: str) -> None:
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------


def optimization_step(method: Method, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
                      device: torch.device, precision: str) -> dict[str, torch.Tensor]:
    """One optimiser step: the method's losses under autocast, backward, step. Returns the method's
    outputs; raises FloatingPointError when the loss is not finite."""
    with autocast(device, precision):
        out = method.training_step(model, batch)
    loss = out["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return out


def check_run_dir(run_dir: Path, cfg: Config) -> bool:
    """True if the folder holds this same run (resume); error if it holds a different config."""
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        return False
    import yaml

    from lps.config import build_config

    try:
        old = build_config(base=yaml.safe_load(cfg_file.read_text()))
    except Exception as e:  # noqa: BLE001
        raise LPSError(f"{cfg_file} cannot be read ({e}); delete {run_dir} to start the run over") from None
    if run_identity(old) != run_identity(cfg):
        diff = sorted(k for k in set(run_identity(old)) | set(run_identity(cfg))
                      if run_identity(old).get(k) != run_identity(cfg).get(k))
        raise LPSError(f"{run_dir} holds a run with a different config (keys {diff[:6]}); "
                       "choose another run_name or delete that folder")
    return True


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise LPSError(f"checkpoint {path} is corrupt ({type(e).__name__}: {e}); delete it to restart "
                       "the run from scratch") from None
    for key in ("epoch", "model", "method", "optimizer", "identity"):
        if not isinstance(ckpt, dict) or key not in ckpt:
            raise LPSError(f"checkpoint {path} is not an lps training checkpoint (no {key!r}); delete it")
    return ckpt


def train(cfg: Config, stop_after_steps: int = 0) -> dict:
    """Train and evaluate one run; resume if its folder holds a checkpoint. Returns the result row.

    ``stop_after_steps`` (tests only) raises KeyboardInterrupt after that many optimiser steps of
    this invocation, mimicking a kill mid-epoch.
    """
    t_start = time.time()
    device = resolve_device(cfg.train.device)
    setup_runtime(device, cfg.train.threads, cfg.train.deterministic)
    rid = run_id(cfg)
    run_dir = Path(cfg.output_dir) / rid
    resuming = check_run_dir(run_dir, cfg)
    result_file = run_dir / "result.parquet"
    if result_file.exists():
        print(f"[lps] {rid}: already complete ({result_file})", flush=True)
        return read_result_row(result_file)

    # everything that can fail on user input happens before the run folder is written
    data, split, test_idx = prepare_data(cfg)
    method_cls = METHODS.get(cfg.method_name)
    params = method_cls.Params(**{k: v for k, v in cfg.method.items() if k != "name"})
    seed_everything(derive_seed(cfg.train.seed, "init"))
    model = build_model(cfg, data)
    init_report = load_init(model, resolve_init(cfg), cfg.model.init_strict)
    apply_freeze(model, cfg.model.freeze)
    n_lab, n_unl = len(split.labeled_idx), len(split.unlabeled_idx)
    b_lab, b_unl, steps = batch_sizes(n_lab, n_unl, cfg.optim.batch_size, large=data.kind == "large")
    if cfg.train.max_steps_per_epoch > 0:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    ctx = MethodContext(num_classes=data.num_classes, n_seen=split.n_seen, n_labeled=n_lab, n_unlabeled=n_unl,
                        epochs=cfg.optim.epochs, steps_per_epoch=steps, feat_dim=model.backbone.out_dim,
                        device=device, seed=cfg.train.seed)
    method = method_cls(params, ctx)
    method.fuse_views = cfg.train.fuse_views
    model.to(device)
    method.to(device)
    channels_last = use_channels_last(model, device, cfg.train.channels_last)
    params_to_train = [p for p in list(model.parameters()) + list(method.parameters()) if p.requires_grad]
    optimizer = make_optimizer(params_to_train, cfg, device)
    augmenter = Augmenter(data.kind, data.image_size, data.mean, data.std)
    train_images = data.train.to(device) if device.type == "cuda" else data.train
    forward_model = torch.compile(model) if cfg.train.compile else model

    with run_lock(run_dir, "run"):
        if result_file.exists():  # finished by another process while this one was loading
            return read_result_row(result_file)
        resuming = check_run_dir(run_dir, cfg)
        for name in remove_stale_tmp(run_dir):
            print(f"[lps] {rid}: removed {name} (left by a kill during a write)", flush=True)
        start_epoch = 0
        unlabeled_probs = None  # softmax on the unlabeled set from the last evaluation
        ckpt_file = run_dir / "checkpoint.pt"
        history: list[dict] = []
        if resuming and ckpt_file.exists():
            ckpt = load_checkpoint(ckpt_file)
            if ckpt["identity"] != stable_hash(run_identity(cfg)):
                raise LPSError(f"checkpoint {ckpt_file} belongs to another config; delete {run_dir}")
            try:
                model.load_state_dict(ckpt["model"])
                method.load_state_dict(ckpt["method"])
                optimizer.load_state_dict(ckpt["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise LPSError(f"checkpoint {ckpt_file} does not match this model/method: {e}; delete it") from None
            start_epoch = ckpt["epoch"]
            unlabeled_probs = ckpt.get("unlabeled_probs")
            history = list(ckpt.get("history", []))
            if len(history) != start_epoch or any(r.get("epoch") != i for i, r in enumerate(history)):
                raise LPSError(f"checkpoint {ckpt_file} has no metrics history for epochs 0..{start_epoch - 1} "
                               f"(written by an older lps?); delete {run_dir} to start the run over")
            print(f"[lps] {rid}: resuming from epoch {start_epoch} ({ckpt_file})", flush=True)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
            split.save(run_dir / "split.npz")
        info = {
            "run_id": rid, "git_commit": git_commit(), "libraries": library_versions(),
            "hardware": hardware_info(device), "command": sys.argv, "init": init_report,
            "n_labeled": n_lab, "n_unlabeled": n_unl, "n_test": int(len(test_idx)), "n_seen": split.n_seen,
            "batch_labeled": b_lab, "batch_unlabeled": b_unl, "steps_per_epoch": steps,
            "started_at_epoch": start_epoch,
        }
        atomic_write_text(run_dir / "run_info.json", json.dumps(info, indent=2))
        # the checkpoint is the commit point: metrics.jsonl is rebuilt from its history (a line appended
        # after it, or a line lost or torn by a kill, is repaired here)
        write_jsonl(run_dir / "metrics.jsonl", history)

        labeled = torch.as_tensor(split.labeled_idx)
        unlabeled = torch.as_tensor(split.unlabeled_idx)
        view_fns = {"weak": augmenter.weak, "strong": augmenter.strong, "simclr": augmenter.simclr}
        total_steps_done = 0
        last_metrics: dict = history[-1] if history else {}
        history_at_start = list(history)
        if not method_cls.trains:
            start_epoch = cfg.optim.epochs  # nothing to optimise: evaluate the initial model only
        progress = Progress(cfg.train.progress, (cfg.optim.epochs - start_epoch) * steps, rid)
        try:
            for epoch in range(start_epoch, cfg.optim.epochs):
                t_epoch = time.time()
                lr = cfg.optim.lr * lr_factor(cfg, epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                method.on_epoch_start(epoch, model, unlabeled_probs)
                seed_everything(derive_seed(cfg.train.seed, "epoch", epoch))
                g_idx = make_generator(derive_seed(cfg.train.seed, "batches", epoch))
                g_aug = make_generator(derive_seed(cfg.train.seed, "augment", epoch), device)
                index_batches = epoch_index_batches(labeled, unlabeled, b_lab, b_unl, steps, g_idx)
                model.train()
                sums: dict[str, float] = {}
                n_images = 0
                for idx, (x, sizes) in zip(index_batches, train_images.batches(index_batches, device)):
                    y_lb = torch.as_tensor(data.train_y[idx[:b_lab].numpy()], device=device)
                    views = [view_fns[v](x, g_aug, sizes) for v in method_cls.views]
                    if channels_last:
                        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                    batch = Batch(views=views, y_lb=y_lb, n_lb=b_lab, idx=idx.to(device), generator=g_aug)
                    try:
                        out = optimization_step(method, forward_model, optimizer, batch, device, cfg.train.precision)
                    except FloatingPointError as e:
                        raise LPSError(f"{rid}: {e} at epoch {epoch}; lower optim.lr or check data") from None
                    loss = out["loss"]
                    for k, v in out.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                    n_images += len(idx)
                    total_steps_done += 1
                    progress.update(1, loss=float(loss.detach()))
                    if stop_after_steps and total_steps_done >= stop_after_steps:
                        raise KeyboardInterrupt("stop_after_steps reached")
                train_time = time.time() - t_epoch
                record = {"epoch": epoch, "lr": lr, **{k: v / max(len(index_batches), 1) for k, v in sums.items()},
                          "images_per_s": n_images / max(train_time, 1e-9), "train_time_s": train_time}
                if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.optim.epochs:
                    last = epoch + 1 == cfg.optim.epochs
                    every = cfg.train.eval_test_every
                    metrics, unlabeled_probs = evaluate_sets(model, method, data, split, test_idx, augmenter, device,
                                                             cfg, final=last,
                                                             with_test=last or (every > 0 and (epoch + 1) % every == 0),
                                                             channels_last=channels_last)
                    record.update(metrics)
                record["epoch_time_s"] = time.time() - t_epoch
                record = plain_json(record)  # as read back from metrics.jsonl
                append_jsonl(run_dir / "metrics.jsonl", record)  # durable before the epoch's commit point
                history.append(record)
                atomic_torch_save({
                    "epoch": epoch + 1, "model": model.state_dict(), "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(), "identity": stable_hash(run_identity(cfg)),
                    "unlabeled_probs": unlabeled_probs, "history": history,
                }, ckpt_file)  # commit point of the epoch
                last_metrics = record
                progress.log(_epoch_line(rid, record, cfg.optim.epochs))
        finally:
            progress.close()

        if not method_cls.trains or "acc_all" not in last_metrics:
            last_metrics, _ = evaluate_sets(model, method, data, split, test_idx, augmenter, device, cfg,
                                            channels_last=channels_last)
        row = make_result_row(cfg, rid, last_metrics, wall_time_s=_total_wall(run_dir, t_start, history_at_start),
                              device=device_label(device), git=info["git_commit"], libs=info["libraries"],
                              n_seen=split.n_seen)
        write_result(row, result_file)
        return row


def _total_wall(run_dir: Path, t_start: float, history: list[dict]) -> float:
    """Wall time of this invocation plus the epochs finished by earlier ones."""
    return (time.time() - t_start) + sum(r.get("epoch_time_s", 0.0) for r in history)


def _epoch_line(rid: str, r: dict, epochs: int) -> str:
    parts = [f"[lps] {rid} epoch {r['epoch'] + 1}/{epochs}", f"loss {r.get('loss', float('nan')):.4f}"]
    for k in ("acc_seen", "acc_novel", "acc_all"):
        if k in r:
            parts.append(f"{k} {100 * r[k]:.1f}")
    parts.append(f"{r['images_per_s']:.0f} img/s")
    return " | ".join(parts)
