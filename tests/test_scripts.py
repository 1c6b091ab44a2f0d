"""scripts/slurm-cluster install waits (bounded) for an apt/dpkg lock held by another process."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = "sl"  # a tiny Debian package, installed and removed again by the test

HOLD = """
import fcntl, sys, time
fs = [open(p, "a") for p in ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock")]
for f in fs:
    fcntl.lockf(f, fcntl.LOCK_EX)  # the locks apt and dpkg take (fcntl, not flock)
print("held", flush=True)
time.sleep(float(sys.argv[1]))
"""


def _installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return "install ok installed" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("apt-get") is None, reason="needs root and apt-get")
def test_install_waits_for_apt_lock():
    if _installed(PKG):
        pytest.skip(f"{PKG} is installed already; the test installs and removes it")
    hold_s = 6
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(hold_s)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        r = subprocess.run([str(ROOT / "scripts" / "slurm-cluster"), "install"], capture_output=True, text=True,
                           timeout=600, env=dict(os.environ, LPS_SLURM_EXTRA_PACKAGES=PKG, LPS_APT_LOCK_TIMEOUT="300"))
        waited = time.time() - t0
        assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
        assert _installed(PKG) and waited >= hold_s - 2, waited
    finally:
        holder.kill()
        holder.wait()
        subprocess.run(["apt-get", "remove", "-y", "-q", PKG], capture_output=True, timeout=300)
