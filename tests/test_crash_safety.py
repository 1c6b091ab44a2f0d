"""Crash safety of a run folder: a kill at every write point of training and pretraining, then a
rerun, ends with exactly the uninterrupted run's outputs; checkpoints cannot run code; one process
per run; metrics files never lose data silently; run files honour the umask."""

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lps.errors import LPSError
from lps.utils import append_jsonl, atomic_write_text, read_jsonl, run_lock

from conftest import needs_fmnist, tiny_overrides

HERE = Path(__file__).resolve().parent
TIMING = ("images_per_s", "train_time_s", "epoch_time_s", "wall_time_s")


def _metrics(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert all(lines), path
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def _result(path: Path) -> pd.DataFrame:
    """result.parquet without what differs between two copies of one run: wall time, output folder."""
    df = pd.read_parquet(path).drop(columns=["wall_time_s"])
    cfg = json.loads(df.loc[0, "config"])
    cfg.pop("output_dir")
    df.loc[0, "config"] = json.dumps(cfg, sort_keys=True)
    return df


def _faults(tmp_path: Path, kind: str, points: list[int], overrides: list[str]) -> dict:
    out = tmp_path / f"{kind}_{points[0]}.json"
    r = subprocess.run([sys.executable, str(HERE / "fault_worker.py"), kind, str(out), *map(str, points), "--",
                        *overrides], capture_output=True, text=True, timeout=1200, cwd=HERE,
                       env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
    assert r.returncode == 0, r.stderr[-3000:]
    return {int(k): v for k, v in json.loads(out.read_text()).items()}


def _only_dir(p: Path) -> Path:
    dirs = [d for d in p.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@needs_fmnist
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "pretrain"])
def test_kill_at_every_write_point_then_rerun_matches(tmp_path, kind):
    ov = tiny_overrides(tmp_path, **({"pretrain.epochs": 2} if kind == "pretrain" else {}))
    ref = _faults(tmp_path, kind, [0], ov)[0]
    assert ref["rerun_rc"] == 0
    points = [line.split("\t", 1)[1] for line in Path(ref["run_root"], "write_points.tsv").read_text().splitlines()]
    # every write of the job passes a point: temp write/fsync/rename of each file, each append
    assert any("metrics.jsonl: half a line appended" in p for p in points), points
    assert any("checkpoint.pt: renamed" in p for p in points), points
    assert len(points) >= 20, points
    res = _faults(tmp_path, kind, list(range(1, len(points) + 1)), ov)
    print(f"{kind}: {len(points)} write points killed and rerun")
    sub = "runs" if kind == "train" else "pretrain"
    ref_dir = _only_dir(Path(ref["run_root"]) / sub)
    for k, r in res.items():
        assert r["killed"], (k, points[k - 1], r)  # the kill happened at that point
        assert r["rerun_rc"] == 0, (k, points[k - 1], r)
        d = _only_dir(Path(r["run_root"]) / sub)
        assert _metrics(d / "metrics.jsonl") == _metrics(ref_dir / "metrics.jsonl"), (k, points[k - 1])
        assert not list(d.glob(".*.tmp")), (k, points[k - 1])
        if kind == "train":
            a, b = (_result(x / "result.parquet") for x in (d, ref_dir))
            pd.testing.assert_frame_equal(a, b, obj=f"result after a kill at {points[k - 1]}")
        else:
            sa = torch.load(d / "backbone.pt", weights_only=True)
            sb = torch.load(ref_dir / "backbone.pt", weights_only=True)
            assert sa.keys() == sb.keys() and all(torch.equal(sa[n], sb[n]) for n in sa), points[k - 1]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@needs_fmnist
def test_planted_checkpoint_cannot_run_code(tmp_path):
    from lps.config import build_config
    from lps.trainer import train

    cfg = build_config([], tiny_overrides(tmp_path, **{"optim.epochs": 1}))
    row = train(cfg)
    run_dir = tmp_path / "runs" / row["run_id"]
    (run_dir / "result.parquet").unlink()
    marker = tmp_path / "payload_ran"
    torch.save({"epoch": 1, "model": _Payload(marker), "method": {}, "optimizer": {}, "identity": "x"},
               run_dir / "checkpoint.pt")
    with pytest.raises(LPSError, match="corrupt"):
        train(cfg)
    assert not marker.exists()
    # figures (t-SNE) load a run's checkpoint too
    from lps.figures import extract_features

    with pytest.raises(LPSError):
        extract_features(run_dir)
    assert not marker.exists()


def test_run_lock_names_holder_and_is_taken_over_when_stale(tmp_path):
    code = ("import sys, time; from lps.utils import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                         cwd=HERE.parent)
    try:
        assert p.stdout.readline().strip() == "locked"
        t0 = time.time()
        with pytest.raises(LPSError, match=rf"already running \(pid {p.pid} on host"):
            with run_lock(tmp_path):
                pass
        assert time.time() - t0 < 5  # at once, no waiting
    finally:
        p.kill()
        p.wait()
    # the holder died (SIGKILL): its lock file is still there, and is taken over
    assert f"pid {p.pid}" in (tmp_path / ".lock").read_text()
    with run_lock(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()


@needs_fmnist
def test_second_train_of_same_run_exits_at_once(tmp_path):
    ov = tiny_overrides(tmp_path, **{"optim.epochs": 30})
    cmd = [sys.executable, "-m", "lps", "train", *ov]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "runs").glob("*/.lock")) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=HERE.parent)
        assert r.returncode == 2 and "already running" in r.stderr and f"pid {first.pid}" in r.stderr, r.stderr
    finally:
        first.kill()
        first.wait()


def test_read_jsonl_repairs_torn_last_line_and_names_bad_lines(tmp_path, capsys):
    f = tmp_path / "m.jsonl"
    append_jsonl(f, {"epoch": 0})
    append_jsonl(f, {"epoch": 1})
    with open(f, "a") as fh:
        fh.write('{"epoch": 2, "lo')  # a kill mid-append
    with pytest.warns(UserWarning, match="torn last line"):
        assert read_jsonl(f, repair=True) == [{"epoch": 0}, {"epoch": 1}]
    assert f.read_text() == '{"epoch": 0}\n{"epoch": 1}\n'
    f.write_text('{"epoch": 0}\n{"epoch": 1, oops\n{"epoch": 2}\n')
    with pytest.raises(LPSError, match=r"m.jsonl, line 2"):
        read_jsonl(f)
    f.write_bytes(b'{"epoch": 0}\n\xff\xfe\x00garbage\n')
    with pytest.raises(LPSError, match=r"line 2"):
        read_jsonl(f)


def test_run_files_honour_umask(tmp_path):
    old = os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o664
        os.umask(0o022)
        atomic_write_text(tmp_path / "b.txt", "x")
        assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


@needs_fmnist
def test_corrupt_result_file_says_how_to_recover(tmp_path):
    from lps.config import build_config
    from lps.results import read_results
    from lps.trainer import train

    cfg = build_config([], tiny_overrides(tmp_path, **{"optim.epochs": 1}))
    row = train(cfg)
    result = tmp_path / "runs" / row["run_id"] / "result.parquet"
    result.write_bytes(b"PAR1 not really")
    for call in (lambda: train(cfg), lambda: read_results([result])):
        with pytest.raises(LPSError, match="cannot be read.*delete it and rerun"):
            call()
    result.unlink()  # the advice works: the result is rewritten from the checkpoint, identical
    again = train(cfg)
    assert again["acc_all"] == row["acc_all"] and again["epochs"] == row["epochs"]
