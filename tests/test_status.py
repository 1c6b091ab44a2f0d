"""``lps status`` and ``lps plan`` on a results folder built by hand (no SLURM, no training): the states
from run folders, job records and rule logs; the time-left estimate; the per-table counts; the cost plan;
and that neither command imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lps.status import cost_plan, format_status, read_status, summarize


def make_results(root: Path) -> Path:
    """Five runs of two tables: done, started (interrupted), failed (the launcher's error in its log),
    waiting, and one done run shared by both tables; one pretraining, done."""
    runs = {
        "lps-a": {"method": "lps", "dataset": "fashion_mnist", "seed": 0, "pretrain": "simclr-x", "epochs": 4,
                  "studies": ["table1", "table4"]},
        "lps-b": {"method": "lps", "dataset": "fashion_mnist", "seed": 1, "pretrain": "simclr-x", "epochs": 4,
                  "studies": ["table1"]},
        "orca-a": {"method": "orca", "dataset": "fashion_mnist", "seed": 0, "pretrain": "simclr-x", "epochs": 4,
                   "studies": ["table1"]},
        "orca-b": {"method": "orca", "dataset": "fashion_mnist", "seed": 1, "pretrain": "simclr-x", "epochs": 4,
                   "studies": ["table1"]},
        "gcd-a": {"method": "gcd", "dataset": "fashion_mnist", "seed": 0, "pretrain": "simclr-x", "epochs": 4,
                  "studies": ["table4"]},
    }
    man = {"experiment_set": "tiny.yaml", "runs": runs,
           "pretrain": {"simclr-x": {"dataset": "fashion_mnist", "epochs": 2}},
           "studies": {"table1": "table", "table4": "table"}}
    (root / "plan.json").write_text(json.dumps(man))

    def epochs(run: str, times: list[float], kind: str = "runs") -> Path:
        d = root / kind / run
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i, "epoch_time_s": t}) + "\n"
                                                 for i, t in enumerate(times)))
        return d

    (epochs("simclr-x", [30.0, 30.0], "pretrain") / "backbone.pt").write_bytes(b"x")
    (epochs("lps-a", [10.0, 10.0, 10.0, 10.0]) / "result.parquet").write_bytes(b"x")
    epochs("lps-b", [12.0])  # interrupted after one epoch: 3 left at its own 12 s
    epochs("orca-a", [20.0, 20.0])
    (root / "logs" / "train").mkdir(parents=True)
    (root / "logs" / "train" / "orca-a.log").write_text(
        "[lps.launch] train with ...\nlps.launch: error: run orca-a: SLURM job 17 FAILED (exit 1:0)\n")
    return root


def test_states_counts_and_time_left(tmp_path):
    man, rows, answered = read_status(make_results(tmp_path), slurm=False)
    by = {st.run: st for st in rows}
    assert {k: v.state for k, v in by.items()} == {
        "simclr-x": "done", "lps-a": "done", "lps-b": "started", "orca-a": "failed", "orca-b": "waiting",
        "gcd-a": "waiting"}
    assert "SLURM job 17 FAILED" in by["orca-a"].detail
    assert by["lps-b"].left_s == 3 * 12.0  # its own epoch time
    assert by["orca-b"].left_s == 4 * 20.0  # orca-a's epoch time (same method and dataset)
    assert by["gcd-a"].left_s == 4 * 12.0  # never measured: median over the dataset's runs (10, 12, 20)
    groups = {g["study"]: g for g in summarize(rows)}
    assert groups["table1"]["runs"] == 4 and groups["table1"]["done"] == 1
    assert groups["table1"]["failed"] == 1 and groups["table1"]["started"] == 1 and groups["table1"]["waiting"] == 1
    assert groups["table4"]["done"] == 1 and groups["table4"]["waiting"] == 1  # lps-a is in both tables
    assert groups["table1"]["elapsed_s"] == 40 + 12 + 40
    text = format_status(man, rows, answered, slurm_asked=False)
    assert "failed:" in text and "orca-a" in text and str(tmp_path / "logs" / "train" / "orca-a.log") in text


def test_cost_plan_per_table(tmp_path):
    text = cost_plan(make_results(tmp_path), jobs=2)
    line = next(ln for ln in text.splitlines() if ln.startswith("table1"))
    # 4 jobs, 16 epochs; lps 11 s (median of 10, 12) x 4 x 2 + orca 20 s x 4 x 2 = 248 s
    assert line.split()[1:4] == ["4", "16", "0.1"], line  # 248 s = 0.07 device-hours
    assert "~" not in line
    t4 = next(ln for ln in text.splitlines() if ln.startswith("table4"))
    assert "~gcd/fashion_mnist" in t4  # never measured: costed from the other methods on its dataset


def test_cli_reads_results_without_torch(tmp_path):
    make_results(tmp_path)
    code = ("import sys; from lps.cli import main; rc = main(['status', sys.argv[1], '--no-slurm']); "
            "rc |= main(['plan', sys.argv[1]]); assert 'torch' not in sys.modules, 'torch imported'; "
            "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "table1" in r.stdout and "device-h" in r.stdout


def test_missing_plan_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lps.cli", "status", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "plan.json not found" in r.stderr and "snakemake -n" in r.stderr


@pytest.mark.slow
def test_calibration_costs_the_plan(tmp_path):
    """lps plan --calibrate on a planned set: one short run per method/dataset and the pretraining, on
    synthetic CIFAR-10 in the real format (full size), extrapolated to full epochs; lps plan then costs
    every table from it."""
    from lps.calibrate import calibrate
    from lps.plan import plan
    from lps.status import write_manifest

    set_config = {"experiment_set": "cal.yaml", "seeds": [0, 1], "defaults": {
        "data.max_train_per_class": 20, "data.max_test_per_class": 5, "model.width": 4, "optim.epochs": 50,
        "optim.batch_size": 64, "pretrain.epochs": 10, "pretrain.batch_size": 64},
        "datasets": {"cifar10": {"label": "CIFAR-10"}}, "methods": {"lps": {}, "orca": {}},
        "tables": {"table1": {"paper_table": 1, "grid": {"method": ["lps", "orca"]}}}}
    from snakemake.utils import validate

    validate(set_config, str(Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"))
    res = tmp_path / "results"
    write_manifest(plan(set_config), res)
    path = calibrate(res, steps=2, device="cpu", log=lambda *_: None)
    calib = json.loads(path.read_text())
    assert set(calib["epoch_s"]) == {"pretrain|simclr|cifar10", "train|lps|cifar10", "train|orca|cifar10"}
    assert all(v > 0 for v in calib["epoch_s"].values())
    # 100 labeled of 200 (10 classes x 20, half seen, half of those labeled): 32 labeled per batch of 64
    info = json.loads(next((res / "calibration" / "runs").glob("lps-*/run_info.json")).read_text())
    assert info["steps_per_epoch"] == 2 and info["n_labeled"] // info["batch_labeled"] == 3
    text = cost_plan(res, jobs=2)
    assert "calibrated on: cpu" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("table1"))
    expected = 2 * 50 * (calib["epoch_s"]["train|lps|cifar10"] + calib["epoch_s"]["train|orca|cifar10"]) / 3600
    assert line.split()[3] == f"{expected:.1f}", (line, expected)
    assert "?" not in line
