"""Training loop for every OpenSSL method: batches, optimiser, schedule, precision, evaluation,
``metrics.jsonl``, checkpoints with automatic resume, and the final ``result.parquet``.

A run folder (``<output_dir>/<run_id>``, named by ``lps.identity.run_id``) holds:

- ``config.yaml``   the resolved config (the run id is a hash of its scientific content)
- ``run_info.json`` code version, library versions, hardware, split sizes, init report
- ``split.npz``     labeled and unlabeled training indices (auditable)
- ``metrics.jsonl`` one line per epoch
- ``checkpoint.pt`` the last finished epoch (model, method state, optimiser, schedule)
- ``result.parquet`` one row, written when the run completes (schema: ``lps.results``)
- ``.lock``         who is training the run (pid, host); ``flock``-ed while a process works on it

Starting the same run again resumes from ``checkpoint.pt``; a finished run returns its result. The
folder's lock, resume and per-epoch commit point are ``lps.run_folder`` (shared with the SimCLR
pretraining, its crash-consistency contract documented there). ``result.parquet`` is written last,
from the committed history, so a kill before it only repeats that write.

Only the entry points (``lps.cli``, the launcher's job) import this module, for :func:`train`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lps import losses
from lps.batching import batch_sizes, epoch_index_batches
from lps.config import Config, config_to_yaml
from lps.data import prepare_data
from lps.data.augment import Augmenter
from lps.data.datasets import ImageData
from lps.data.splits import OpenWorldSplit
from lps.errors import LPSError
from lps.evaluation import openssl_metrics
from lps.identity import identity_hash, resolve_init, run_id
from lps.methods import METHODS, Method, MethodContext
from lps.methods.base import Batch
from lps.models import apply_freeze, build_model, embed, load_init, set_train_mode, use_channels_last
from lps.optim import lr_factor, make_optimizer, optimization_step
from lps.results import make_result_row, read_result_row, write_result
from lps.run_folder import RunFolder, holds_run
from lps.runtime import resolve_device, setup_runtime
from lps.utils import derive_seed, device_label, git_commit, hardware_info, library_versions, make_generator, \
    seed_everything

# --------------------------------------------------------------------------------------------
# evaluation


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
    holds_run(run_dir, cfg)
    result_file = run_dir / "result.parquet"
    if result_file.exists():
        print(f"[lps] {rid}: already complete ({result_file})", flush=True)
        return read_result_row(result_file)

    # everything that can fail on user input happens before the run folder is written
    data, split, test_idx = prepare_data(cfg)
    method_cls = METHODS.get(cfg.method_name)
    params = cfg.method.params
    seed_everything(derive_seed(cfg.train.seed, "init"))
    m = cfg.model
    model = build_model(m.arch, data.kind, data.channels, data.num_classes, m.width, m.stem_stride, m.head_scale)
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
    optimizer = make_optimizer(params_to_train, cfg.optim, device)
    augmenter = Augmenter(data.kind, data.image_size, data.mean, data.std)
    train_images = data.train.to(device) if device.type == "cuda" else data.train
    forward_model = torch.compile(model) if cfg.train.compile else model

    folder = RunFolder(run_dir, identity_hash(cfg), "run", rid)
    with folder.lock():
        if result_file.exists():  # finished by another process while this one was loading
            return read_result_row(result_file)
        resumed = folder.open(config_to_yaml(cfg), required=("epoch", "model", "method", "optimizer", "identity"),
                              resume=holds_run(run_dir, cfg))
        start_epoch = resumed.epoch
        unlabeled_probs = None  # softmax on the unlabeled set from the last evaluation
        if resumed.checkpoint is not None:
            ckpt = resumed.checkpoint
            try:
                model.load_state_dict(ckpt["model"])
                method.load_state_dict(ckpt["method"])
                optimizer.load_state_dict(ckpt["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise LPSError(f"checkpoint {folder.checkpoint_file} does not match this model/method: {e}; "
                               "delete it") from None
            unlabeled_probs = ckpt.get("unlabeled_probs")
        else:
            split.save(run_dir / "split.npz")
        history = folder.history
        folder_info = {
            "run_id": rid, "git_commit": git_commit(), "libraries": library_versions(),
            "hardware": hardware_info(device), "command": sys.argv, "init": init_report,
            "n_labeled": n_lab, "n_unlabeled": n_unl, "n_test": int(len(test_idx)), "n_seen": split.n_seen,
            "batch_labeled": b_lab, "batch_unlabeled": b_unl, "steps_per_epoch": steps,
            "started_at_epoch": start_epoch,
        }
        folder.write_info(folder_info)

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
                lr = cfg.optim.lr * lr_factor(cfg.optim, epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                method.on_epoch_start(epoch, model, unlabeled_probs)
                seed_everything(derive_seed(cfg.train.seed, "epoch", epoch))
                g_idx = make_generator(derive_seed(cfg.train.seed, "batches", epoch))
                g_aug = make_generator(derive_seed(cfg.train.seed, "augment", epoch), device)
                index_batches = epoch_index_batches(labeled, unlabeled, b_lab, b_unl, steps, g_idx)
                set_train_mode(model, cfg.model.freeze, cfg.model.frozen_bn)
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
                record = folder.commit_epoch(record, {  # the epoch's commit point
                    "model": model.state_dict(), "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                    "unlabeled_probs": unlabeled_probs})
                last_metrics = record
                progress.log(_epoch_line(rid, record, cfg.optim.epochs))
        finally:
            progress.close()

        if not method_cls.trains or "acc_all" not in last_metrics:
            last_metrics, _ = evaluate_sets(model, method, data, split, test_idx, augmenter, device, cfg,
                                            channels_last=channels_last)
        row = make_result_row(cfg, rid, last_metrics, wall_time_s=_total_wall(run_dir, t_start, history_at_start),
                              device=device_label(device), git=folder_info["git_commit"],
                              libs=folder_info["libraries"],
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
