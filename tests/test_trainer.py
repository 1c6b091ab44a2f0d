"""End-to-end training on tiny Fashion-MNIST runs: outputs, resume after a kill, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from lps.batching import batch_sizes, epoch_index_batches
from lps.config import build_config
from lps.errors import LPSError
from lps.identity import run_id
from lps.results import RESULT_SCHEMA
from lps.trainer import train

from conftest import needs_fmnist, tiny_overrides

METRIC_COLS = ["acc_seen", "acc_novel", "acc_all", "nmi_novel", "test_acc_seen", "test_acc_novel", "test_acc_all"]


def steps_per_epoch(cfg) -> int:
    from lps.data import prepare_data

    _, split, _ = prepare_data(cfg)
    return batch_sizes(len(split.labeled_idx), len(split.unlabeled_idx), cfg.optim.batch_size)[2]


def test_batch_composition():
    assert batch_sizes(1000, 3000, 512) == (128, 384, 7)
    assert batch_sizes(10, 10000, 512) == (1, 511, 10)
    # released ImageNet script: B - int(B * n_unlab / n); CIFAR: int(B * n_lab / n)
    # 512 * 1000 / 4001 = 127.97 -> CIFAR 127; 512 * 3001 / 4001 = 384.03 -> ImageNet 512 - 384 = 128
    assert batch_sizes(1000, 3001, 512) == (127, 385, 7)
    assert batch_sizes(1000, 3001, 512, large=True) == (128, 384, 7)
    assert batch_sizes(1000, 3000, 512, large=True) == (128, 384, 7)  # exact share: both agree
    g = torch.Generator().manual_seed(0)
    lab, unl = torch.arange(10), torch.arange(10, 15)
    batches = epoch_index_batches(lab, unl, 4, 3, 2, g)
    assert len(batches) == 2 and all(len(b) == 7 for b in batches)
    assert all((b[:4] < 10).all() and (b[4:] >= 10).all() for b in batches)
    assert len(set(torch.cat([b[:4] for b in batches]).tolist())) == 8  # no labeled repeats within an epoch


def test_run_id_ignores_non_scientific_keys(tmp_path):
    a = build_config([], ["train.progress=none", "output_dir=/x"])
    b = build_config([], ["train.progress=log", "output_dir=/y", "train.threads=3"])
    c = build_config([], ["train.seed=1"])
    assert run_id(a) == run_id(b) != run_id(c)


@needs_fmnist
def test_tiny_run_outputs(tmp_path):
    cfg = build_config([], tiny_overrides(tmp_path))
    row = train(cfg)
    run_dir = tmp_path / "runs" / row["run_id"]
    for f in ("config.yaml", "run_info.json", "split.npz", "metrics.jsonl", "checkpoint.pt", "result.parquet"):
        assert (run_dir / f).exists(), f
    df = pd.read_parquet(run_dir / "result.parquet")
    assert list(df.columns) == RESULT_SCHEMA.names and len(df) == 1
    assert df.method[0] == "lps" and df.dataset[0] == "fashion_mnist" and df.epochs[0] == 2
    for c in METRIC_COLS:
        assert 0.0 <= df[c][0] <= 1.0
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    for key in ("loss", "loss_am", "loss_pc", "loss_uc", "entropy_reg", "acc_seen", "acc_novel", "acc_all",
                "kl_pi_hat_pi", "pi_hat", "lr", "images_per_s"):
        assert key in lines[-1], key
    assert abs(sum(lines[-1]["pi_hat"]) - 1) < 1e-3
    info = json.loads((run_dir / "run_info.json").read_text())
    assert {"git_commit", "libraries", "hardware"} <= set(info) and "torch" in info["libraries"]
    # a finished run is not trained again
    again = train(cfg)
    assert again["acc_all"] == row["acc_all"]


@needs_fmnist
def test_same_seed_same_result(tmp_path):
    a = train(build_config([], tiny_overrides(tmp_path / "a")))
    b = train(build_config([], tiny_overrides(tmp_path / "b")))
    assert [a[c] for c in METRIC_COLS] == [b[c] for c in METRIC_COLS]


@needs_fmnist
def test_interrupt_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    ov = dict(**{"optim.epochs": 3})
    ref = train(build_config([], tiny_overrides(tmp_path / "ref", **ov)))
    cfg = build_config([], tiny_overrides(tmp_path / "cut", **ov))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, stop_after_steps=steps_per_epoch(cfg) + 1)  # one step into epoch 2
    ckpt = torch.load(tmp_path / "cut" / "runs" / run_id(cfg) / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    resumed = train(cfg)
    assert [resumed[c] for c in METRIC_COLS] == [ref[c] for c in METRIC_COLS]
    lines = (tmp_path / "cut" / "runs" / run_id(cfg) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]


@needs_fmnist
@pytest.mark.slow
def test_sigkill_then_rerun_resumes(tmp_path):
    """A real kill: SIGKILL the CLI process once an epoch is checkpointed, run the same command again."""
    ov = tiny_overrides(tmp_path, **{"optim.epochs": 4, "data.max_train_per_class": 60})
    ref = train(build_config([], tiny_overrides(tmp_path / "ref", **{"optim.epochs": 4,
                                                                      "data.max_train_per_class": 60})))
    cmd = [sys.executable, "-m", "lps", "train", *ov]
    run_dir = tmp_path / "runs" / run_id(build_config([], ov))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "checkpoint.pt").exists():
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "result.parquet").exists(), "killed too late: the run had finished"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "resuming from epoch" in out.stdout
    row = pd.read_parquet(run_dir / "result.parquet").iloc[0]
    assert [row[c] for c in METRIC_COLS] == [ref[c] for c in METRIC_COLS]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lps", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("override, needle", [
    ("data.dataset=mnist", "unknown dataset"),
    ("method=nope", "unknown method"),
    ("data.label_ratio=0", "label_ratio"),
    ("data.label_ratio=1.5", "label_ratio"),
    ("optim.nope=1", "unknown config key"),
])
def test_cli_bad_input_clear_error_no_output(tmp_path, override, needle):
    out = _cli("train", *tiny_overrides(tmp_path), override)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


@needs_fmnist
def test_mismatched_init_checkpoint(tmp_path):
    from lps.models import CifarResNet18

    bad = tmp_path / "wide.pt"
    torch.save(CifarResNet18(1, 8).state_dict(), bad)
    out = _cli("train", *tiny_overrides(tmp_path), "--init", str(bad))
    assert out.returncode == 2 and "shape mismatch" in out.stderr and "model.width" in out.stderr
    assert not (tmp_path / "runs").exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    out = _cli("train", *tiny_overrides(tmp_path), "--init", str(junk))
    assert out.returncode == 2 and "cannot read backbone checkpoint" in out.stderr
    out = _cli("train", *tiny_overrides(tmp_path), "--init", str(tmp_path / "missing.pt"))
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert not (tmp_path / "runs").exists()


@needs_fmnist
def test_corrupt_checkpoint_on_resume(tmp_path):
    cfg = build_config([], tiny_overrides(tmp_path, **{"optim.epochs": 2}))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, stop_after_steps=steps_per_epoch(cfg) + 1)
    ckpt = tmp_path / "runs" / run_id(cfg) / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(LPSError, match="corrupt"):
        train(cfg)
    assert not (tmp_path / "runs" / run_id(cfg) / "result.parquet").exists()


@needs_fmnist
def test_other_config_in_same_run_folder(tmp_path):
    cfg = build_config([], tiny_overrides(tmp_path, run_name="fixed"))
    train(cfg)
    other = build_config([], tiny_overrides(tmp_path, run_name="fixed", **{"train.seed": 5}))
    with pytest.raises(LPSError, match="different config"):
        train(other)


def test_cli_options_and_overrides_in_any_order(tmp_path):
    out = _cli("show", "data.label_ratio=0.3", "-c", "demo", "optim.lr=0.2")
    assert out.returncode == 0, out.stderr
    assert "label_ratio: 0.3" in out.stdout and "lr: 0.2" in out.stdout
    out = _cli("nope")
    assert out.returncode == 2 and "usage" in out.stderr


def test_run_id_depends_on_initialisation(tmp_path):
    f = tmp_path / "b.pt"
    f.write_bytes(b"abc")
    ids = {run_id(build_config([], [f"model.init={x}"])) for x in ("", "scratch", str(f))}
    assert len(ids) == 3
    g = tmp_path / "copy.pt"
    g.write_bytes(b"abc")  # same content elsewhere: same run
    assert run_id(build_config([], [f"model.init={f}"])) == run_id(build_config([], [f"model.init={g}"]))


@needs_fmnist
def test_gcd_reported_evaluation_uses_the_released_kmeans_budget(tmp_path, monkeypatch):
    """GCD's released final evaluation (k_means.sh) runs 100 restarts x 200 iterations of
    semi-supervised k-means; the per-epoch evaluations the training-time 10 x 10."""
    import lps.methods.gcd as gcd_module

    calls = []
    real = gcd_module.semi_supervised_kmeans

    def spy(u, lf, ly, k, n_init, max_iter, *a, **kw):
        calls.append((n_init, max_iter))
        return real(u, lf, ly, k, 2, 3, *a, **kw)  # keep the test fast

    monkeypatch.setattr(gcd_module, "semi_supervised_kmeans", spy)
    cfg = build_config([], tiny_overrides(tmp_path, **{"optim.epochs": 3}) +
                       ["method=gcd", "method.proj_out_dim=16", "method.proj_hidden_dim=16",
                        "method.proj_bottleneck_dim=8"])
    train(cfg)
    # epochs 1, 2 monitored (unlabeled set only), epoch 3 reported (unlabeled set, then the test split)
    assert calls == [(10, 10)] * 2 + [(100, 200)] * 2


@needs_fmnist
@pytest.mark.parametrize("every", [0, 1])
def test_test_split_evaluated_at_the_last_epoch_or_every_n(tmp_path, every):
    cfg = build_config([], tiny_overrides(tmp_path, **{"optim.epochs": 3, "train.eval_test_every": every}) +
                       ["method=lps"])
    row = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "runs" / row["run_id"] / "metrics.jsonl").read_text().splitlines()]
    has_test = ["test_acc_all" in r for r in lines]
    assert all("acc_all" in r for r in lines)
    assert has_test == ([False, False, True] if every == 0 else [True, True, True])
    assert row["test_acc_all"] == lines[-1]["test_acc_all"]


def test_run_and_pretraining_ids_are_pinned():
    """The ids name folders that users already have on disk: a change of the hashing, of the key set
    or of a default shows here (update the pins only with a note that old runs are retrained)."""
    from pathlib import Path

    from lps.identity import identity_diff, pretrain_dir

    ov = ["data.max_train_per_class=40", "data.max_test_per_class=20", "optim.epochs=2", "pretrain.epochs=1",
          "output_dir=/x/runs", "train.threads=1", "train.progress=none"]
    cfg = build_config(["demo"], ov + ["method=lps"])
    assert run_id(cfg) == "lps-fashion_mnist-seed0-c52551539b"
    assert pretrain_dir(cfg) == Path("/x/pretrain/simclr-fashion_mnist-94e78546ea")
    assert run_id(build_config(["demo"], ov + ["method=fixmatch"])) == "fixmatch-fashion_mnist-seed0-96065822ad"
    other = build_config(["demo"], ov + ["method=lps", "method.margin_C=5", "train.threads=2"])
    assert identity_diff(cfg, other) == ["method"]  # threads are not scientific
