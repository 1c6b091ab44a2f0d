"""What names a run and a pretraining: the scientific content of a config, its hash, the folder.

A run id is ``<method>-<dataset>-seed<seed>-<hash>``, the hash of every config key that changes what
the run computes (``NON_SCIENTIFIC`` lists the keys that do not: folders, threads, progress bars,
evaluation batch size...). What the run starts from enters as ``model.init``: the SimCLR pretraining
of its config (whose settings are part of the identity already), random weights, or an external file
by content hash. A pretraining is named by the few keys it depends on (dataset, architecture, width,
stem stride, its own settings and the training subsample), so every run of a dataset shares it.

Plain functions of a :class:`~lps.config.Config`: the trainer, the pretraining, the launcher, the
workflow planner and the figures name folders through them without importing the training loop.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lps.config import Config, flatten, to_dict
from lps.utils import stable_hash

# keys that do not change what a run computes: excluded from the run id and the resume check
NON_SCIENTIFIC = {
    "output_dir", "run_name", "data.data_dir", "data.imagenet_dir", "data.num_workers", "train.device",
    "train.threads", "train.progress", "train.eval_batch_size", "train.eval_test_every", "pretrain.checkpoint",
    "model.init",
}

# settings added after runs were named, with the value that reproduces those runs: a key at that
# value is left out of the identity, so adding a setting renames no existing run
ADDED_DEFAULTS = {"model.frozen_bn": "update"}


def init_identity(init: str) -> str:
    """What a run starts from, for its identity: the SimCLR pretraining of its config (whose settings
    are part of the identity already), random weights, or an external file (by content hash)."""
    if not init:
        return "pretrain"
    if init == "scratch":
        return "scratch"
    path = Path(init)
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return "file:" + h.hexdigest()[:16]
    return "file:" + init


def run_identity(cfg: Config) -> dict:
    """The flattened scientific keys of a run's config (``model.init`` replaced by what it points to)."""
    flat = flatten(to_dict(cfg), keep=("method",))  # method.* hashed as one mapping
    ident = {k: v for k, v in flat.items()
             if k not in NON_SCIENTIFIC and not (k in ADDED_DEFAULTS and ADDED_DEFAULTS[k] == v)}
    ident["model.init"] = init_identity(cfg.model.init)
    return ident


def identity_hash(cfg: Config) -> str:
    """The hash stored in a run's checkpoints: a resume checks it against the config's."""
    return stable_hash(run_identity(cfg))


def run_id(cfg: Config) -> str:
    """The run's folder name under ``output_dir``: ``run_name`` when set, else the hash id."""
    if cfg.run_name:
        return cfg.run_name
    return f"{cfg.method_name}-{cfg.data.dataset}-seed{cfg.train.seed}-{identity_hash(cfg)}"


def run_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / run_id(cfg)


def identity_diff(a: Config, b: Config) -> list[str]:
    """The scientific keys on which two configs differ, sorted."""
    ia, ib = run_identity(a), run_identity(b)
    return sorted(k for k in set(ia) | set(ib) if ia.get(k) != ib.get(k))


def pretrain_identity(cfg: Config) -> dict:
    """The keys a SimCLR pretraining depends on."""
    p = {k: v for k, v in to_dict(cfg.pretrain).items() if k != "checkpoint"}
    ident = {"dataset": cfg.data.dataset, "arch": cfg.model.arch, "width": cfg.model.width,
             "stem_stride": cfg.model.stem_stride, "pretrain": p,
             "max_train_per_class": cfg.data.max_train_per_class}
    if cfg.data.max_train_per_class > 0:
        ident["split_seed"] = cfg.data.split_seed  # the subsample depends on it
    return ident


def pretrain_dir(cfg: Config) -> Path:
    """``<output_dir>/../pretrain/simclr-<dataset>-<hash>``: shared by every run with these keys."""
    name = f"simclr-{cfg.data.dataset}-{stable_hash(pretrain_identity(cfg))}"
    return Path(cfg.output_dir).parent / "pretrain" / name


def resolve_init(cfg: Config) -> str:
    """The backbone file a run starts from: ``model.init`` ("scratch" = random init), else
    ``pretrain.checkpoint``, else the SimCLR backbone of this config's pretraining."""
    if cfg.model.init:
        return cfg.model.init
    if cfg.pretrain.checkpoint:
        return cfg.pretrain.checkpoint
    return str(pretrain_dir(cfg) / "backbone.pt")
