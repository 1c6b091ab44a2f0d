"""The launcher's files in ``<jobs-dir>``: job records (``<run>.job.json``, written atomically), the
per-run submit lock (``<run>.lock``), submitit's result pickle and log paths of a job."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from lps.launch.job import say

def atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        say(f"ignoring unreadable job record {path} ({e})")
        return None


@contextlib.contextmanager
def run_lock(path: Path, run: str):
    """Exclusive ``flock`` on ``path`` (released when the process ends, whatever the cause)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"{run}: another launcher holds {path}; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fh.close()


def read_result(path: Path) -> tuple[str, object] | None:
    """submitit's result pickle: ("success", value) or ("error", traceback text); None if absent."""
    if not path.exists():
        return None
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except Exception as e:  # noqa: BLE001  (a truncated file on a slow file system: read it again later)
        say(f"cannot read {path} yet ({type(e).__name__}: {e})")
        return None


@dataclass
class Paths:
    folder: Path
    job_id: str

    @property
    def stdout(self) -> Path:
        return self.folder / f"{self.job_id}_0_log.out"

    @property
    def stderr(self) -> Path:
        return self.folder / f"{self.job_id}_0_log.err"

    @property
    def result(self) -> Path:
        return self.folder / f"{self.job_id}_0_result.pkl"

