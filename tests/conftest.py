import os
import re
import shutil
import subprocess

import numpy as np
import pytest

FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def have_fashion_mnist() -> bool:
    from lps.data.datasets import FASHION_MNIST_FILES, resolve_data_dir

    dirs = [resolve_data_dir(""), resolve_data_dir("") / "fashion_mnist", os.path.dirname(FMNIST)]
    return any(all(os.path.exists(os.path.join(d, f)) for f in FASHION_MNIST_FILES.values()) for d in dirs)


needs_fmnist = pytest.mark.skipif(not have_fashion_mnist(),
                                  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def tiny_overrides(tmp_path, **extra) -> list[str]:
    """A run that takes a few seconds on CPU: 30 images per class, width 4, 2 epochs."""
    base = {
        "output_dir": str(tmp_path / "runs"),
        "data.max_train_per_class": 30, "data.max_test_per_class": 10,
        "model.width": 4, "optim.epochs": 2, "optim.batch_size": 64,
        "pretrain.epochs": 1, "pretrain.batch_size": 64, "train.progress": "none", "train.threads": 1,
        "model.init": "scratch",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def slurm_cluster_problem() -> str | None:
    """Why the local SLURM cluster cannot run the tests (None when it can): client tools on PATH,
    slurmctld up, and a usable node with gres gpu."""
    def run(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)

    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM client tools (sinfo/sbatch) not on PATH; run scripts/slurm-cluster install"
    try:
        ping = run("scontrol", "ping")
        if " is UP" not in ping.stdout:
            first = ((ping.stdout + ping.stderr).strip().splitlines() or ["no output"])[0]
            return f"slurmctld not up (`scontrol ping`: {first[:160]}); run scripts/slurm-cluster start"
        info = run("sinfo", "-h", "-N", "-o", "%T %G")
    except (subprocess.TimeoutExpired, OSError) as e:
        return f"SLURM not responding ({e}); run scripts/slurm-cluster start"
    # "idle*" (trailing *) = node not responding
    if info.returncode != 0 or not re.search(r"^(idle|mixed|allocated|completing) \S*gpu", info.stdout, re.M):
        return f"no usable SLURM node with gres gpu (sinfo: {(info.stdout + info.stderr).strip()[:200]!r})"
    return None


def require_slurm_cluster() -> None:
    """Skip the calling test when the cluster is not usable; fail instead with LPS_REQUIRE_SLURM=1 (CI)."""
    problem = slurm_cluster_problem()
    if problem:
        if os.environ.get("LPS_REQUIRE_SLURM") == "1":
            pytest.fail(f"LPS_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)
