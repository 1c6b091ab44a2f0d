"""Atomic file writes, seeding, and the environment record every run folder holds."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def write_point(label: str) -> None:
    """Mark a point between two writes of a run folder, where a kill may fall.

    Used by the fault-injection tests: with ``$LPS_FAULT_LOG`` set, every point passed is appended
    to that file (so the tests enumerate the write points instead of hard-coding them); with
    ``$LPS_FAULT_AT=N`` the N-th point passed (1-based) kills this process with SIGKILL.
    """
    log, at = os.environ.get("LPS_FAULT_LOG"), os.environ.get("LPS_FAULT_AT")
    if not (log or at):
        return
    _FAULT_COUNT[0] += 1
    if log:
        with open(log, "a") as fh:
            fh.write(f"{_FAULT_COUNT[0]}\t{label}\n")
    if at and _FAULT_COUNT[0] == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


_FAULT_COUNT = [0]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then rename it into place.

    A crash at any point leaves either the old file or the new one, never half of one (plus, at
    worst, a ``.<name>.*.tmp`` file that ``remove_stale_tmp`` deletes on the next start). The file
    gets the permissions of a plain ``open()`` (0666 less the umask), so teammates sharing a results
    folder can read it when the umask allows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_point(f"{path.name}: before temp file")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        write_point(f"{path.name}: temp written")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        write_point(f"{path.name}: temp fsynced")
        os.replace(tmp, path)
        write_point(f"{path.name}: renamed")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_tmp(folder: str | os.PathLike) -> list[str]:
    """Delete the ``.<name>.*.tmp`` files an ``atomic_write`` killed mid-way left in ``folder``
    (call it while holding the folder's ``run_lock``). Returns the names removed."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for f in folder.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                removed.append(f.name)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    atomic_write(path, _w)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and fsync it. A kill mid-append leaves a torn last line, which
    ``read_jsonl`` repairs."""
    line = json.dumps(record, default=_json_default) + "\n"
    name = Path(path).name
    write_point(f"{name}: before append")
    with open(path, "a") as fh:
        half = len(line) // 2
        fh.write(line[:half])
        fh.flush()
        write_point(f"{name}: half a line appended")
        fh.write(line[half:])
        fh.flush()
        os.fsync(fh.fileno())
    write_point(f"{name}: line appended")


def plain_json(record: dict) -> dict:
    """``record`` as it reads back from a JSON line (numpy scalars become Python numbers)."""
    return json.loads(json.dumps(record, default=_json_default))


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Replace a JSON-lines file atomically with ``records``, one line each."""
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))


def read_jsonl(path: str | os.PathLike, repair: bool = False) -> list[dict]:
    """The records of a JSON-lines file. A torn last line (no newline: a crash mid-append) is
    dropped with a warning, and cut from the file when ``repair``; any other line that is not a JSON
    object is an LPSError naming the file and line. Nothing is dropped silently."""
    from lps.errors import LPSError

    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn = lines.pop()  # after the last newline: b"" unless the last append was cut
    out, good_len = [], 0
    for i, line in enumerate(lines, 1):
        good_len += len(line) + 1
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LPSError(f"{path}, line {i}: not a JSON record ({type(e).__name__}: {str(e)[:80]}); "
                           "fix or delete the line") from None
        if not isinstance(rec, dict):
            raise LPSError(f"{path}, line {i}: not a JSON object")
        out.append(rec)
    if torn.strip():
        import warnings

        warnings.warn(f"{path}: dropped a torn last line ({len(torn)} bytes, a crash mid-append)", stacklevel=2)
        if repair:
            with open(path, "r+b") as fh:
                fh.truncate(good_len)
                os.fsync(fh.fileno())
    return out


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "run"):
    """Hold an exclusive ``flock`` on ``<folder>/.lock`` (holder's pid, host and start time written in
    it) for the duration; another process gets an LPSError naming the holder at once. The lock dies
    with its process, so a lock file left by a killed process is simply taken over."""
    import fcntl
    import socket
    import time

    from lps.errors import LPSError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise LPSError(f"{folder}: this {what} is already running ({holder}); wait for it to finish or "
                           "stop that process") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        yield
    finally:
        fh.close()


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def stable_hash(obj: Any, n: int = 10) -> str:
    """A short hash of a JSON-serialisable object that is the same on every machine."""
    s = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.sha256(s.encode()).hexdigest()[:n]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from several parts (run seed, epoch, purpose...)."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def git_commit(repo_dir: str | os.PathLike | None = None) -> str:
    """The git commit of the code (with '-dirty' when the tree has changes), or 'unknown'."""
    repo_dir = repo_dir or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_dir, capture_output=True, text=True, timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow", "snakemake", "submitit"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def hardware_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_PARTITION"):
        if var in os.environ:
            info[var.lower()] = os.environ[var]
    return info


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
