"""The folder of one training run or one pretraining: its lock, its files, resume and commit.

Used by :mod:`lps.trainer` and :mod:`lps.pretrain` alike. A folder holds ``config.yaml`` (the
resolved config), ``run_info.json`` (code version, libraries, hardware, sizes), ``metrics.jsonl``
(one line per finished epoch) and ``checkpoint.pt`` (the last finished epoch).

Crash consistency (a kill, preemption or OOM at any instant):

- Every file is written to a temporary file, fsynced and renamed (``lps.utils.atomic_write``), except
  ``metrics.jsonl``, which is appended and fsynced. Each write passes ``lps.utils.write_point``, where
  the fault-injection test (``tests/test_crash_safety.py``) kills the process, one point at a time.
- The commit point of epoch e is the rename of ``checkpoint.pt`` holding epoch e: the caller's state
  and the metrics history of epochs 0..e (:meth:`RunFolder.commit_epoch`). Epoch e's line is appended
  to ``metrics.jsonl`` before it, so it is never less durable than its checkpoint.
- A resume trusts only the checkpoint (:meth:`RunFolder.open`): it runs under the folder's lock (a
  second process of the same run stops at once), deletes temporary files left by a killed write,
  checks the checkpoint's identity hash and history, and rebuilds ``metrics.jsonl`` from that history
  (dropping a line of an uncommitted epoch, restoring a lost or torn one). The caller redoes the
  uncommitted epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lps.errors import LPSError
from lps.utils import (append_jsonl, atomic_torch_save, atomic_write_text, plain_json, remove_stale_tmp, run_lock,
                       write_jsonl)


@dataclass
class Resumed:
    """What :meth:`RunFolder.open` found: the committed epochs (0 for a new folder), their metrics
    history and the whole checkpoint (``None`` for a new folder)."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    checkpoint: dict | None = None


class RunFolder:
    """One run's folder. ``what`` names it in messages ("run", "pretraining"); ``label`` prefixes
    log lines; ``identity`` is the hash a checkpoint must carry to be resumed here."""

    def __init__(self, path: str | Path, identity: str, what: str = "run", label: str | None = None):
        self.path = Path(path)
        self.identity = identity
        self.what = what
        self.label = label or self.path.name
        self.checkpoint_file = self.path / "checkpoint.pt"
        self.metrics_file = self.path / "metrics.jsonl"
        self.history: list[dict] = []

    def lock(self):
        """Context manager: hold the folder's lock (``lps.utils.run_lock``) while working on it."""
        return run_lock(self.path, self.what)

    def load_checkpoint(self, required: tuple[str, ...] = ("epoch", "identity")) -> dict:
        """The checkpoint, read with ``weights_only`` (a checkpoint runs no code when loaded), with
        clear errors for a corrupt or foreign file."""
        path = self.checkpoint_file
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise LPSError(f"{self.what} checkpoint {path} is corrupt ({type(e).__name__}: {e}); delete it to "
                           f"start the {self.what} over") from None
        for key in required:
            if not isinstance(ckpt, dict) or key not in ckpt:
                raise LPSError(f"checkpoint {path} is not an lps {self.what} checkpoint (no {key!r}); delete it")
        if ckpt["identity"] != self.identity:
            raise LPSError(f"checkpoint {path} belongs to another config; delete {self.path}")
        history = list(ckpt.get("history", []))
        epoch = ckpt["epoch"]
        if len(history) != epoch or any(r.get("epoch") != i for i, r in enumerate(history)):
            raise LPSError(f"checkpoint {path} has no metrics history for epochs 0..{epoch - 1} "
                           f"(written by an older lps?); delete {self.path} to start the {self.what} over")
        return ckpt

    def open(self, config_yaml: str, required: tuple[str, ...] = ("epoch", "identity"),
             resume: bool = True) -> Resumed:
        """Call under :meth:`lock`. Remove temporary files of killed writes; resume from the checkpoint
        if there is one (``resume``), else create the folder and write ``config.yaml``. Rebuilds
        ``metrics.jsonl`` from the committed history."""
        for name in remove_stale_tmp(self.path):
            print(f"[lps] {self.label}: removed {name} (left by a kill during a write)", flush=True)
        found = Resumed()
        if resume and self.checkpoint_file.exists():
            ckpt = self.load_checkpoint(required)
            found = Resumed(epoch=ckpt["epoch"], history=list(ckpt.get("history", [])), checkpoint=ckpt)
            print(f"[lps] {self.label}: resuming from epoch {found.epoch} ({self.checkpoint_file})", flush=True)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path / "config.yaml", config_yaml)
        self.history = list(found.history)
        return found

    def write_info(self, info: dict[str, Any]) -> None:
        """``run_info.json``; then ``metrics.jsonl`` rebuilt from the committed history (the checkpoint
        is the commit point: a line appended after it, or lost or torn by a kill, is repaired here)."""
        atomic_write_text(self.path / "run_info.json", json.dumps(info, indent=2))
        write_jsonl(self.metrics_file, self.history)

    def commit_epoch(self, record: dict, state: dict[str, Any]) -> dict:
        """Finish an epoch: append its metrics line (durable before the commit point), then write the
        checkpoint holding ``state``, the epoch count, the identity and the history (the commit point).
        Returns the record as it reads back from ``metrics.jsonl``."""
        record = plain_json(record)
        append_jsonl(self.metrics_file, record)
        self.history.append(record)
        atomic_torch_save({**state, "epoch": len(self.history), "identity": self.identity,
                           "history": self.history}, self.checkpoint_file)
        return record


def holds_run(path: str | Path, cfg) -> bool:
    """True if the folder holds this same run (resume: its ``config.yaml`` has the same scientific
    identity); LPSError naming the differing keys if it holds another config."""
    from lps.config import build_config
    from lps.identity import identity_diff

    cfg_file = Path(path) / "config.yaml"
    if not cfg_file.exists():
        return False
    import yaml

    try:
        old = build_config(base=yaml.safe_load(cfg_file.read_text()))
    except Exception as e:  # noqa: BLE001
        raise LPSError(f"{cfg_file} cannot be read ({e}); delete {path} to start the run over") from None
    diff = identity_diff(old, cfg)
    if diff:
        raise LPSError(f"{path} holds a run with a different config (keys {diff[:6]}); "
                       "choose another run_name or delete that folder")
    return True
