"""The installed torch/torchvision pair works with lps in one process (a fresh interpreter each)."""

import subprocess
import sys


def test_lps_then_torchvision_import_in_one_process():
    """`import lps` leaves torch/torchvision as installed: torchvision, its models and its compiled
    operators import and run after lps (the order every lps command uses) and before it."""
    code = ("import lps, torch, torchvision, torchvision.models, torchvision.ops\n"
            "b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]); s = torch.tensor([1., .5])\n"
            "print(torchvision.ops.nms(b, s, 0.5).tolist(), torch.__version__, torchvision.__version__)")
    for src in (code, code.replace("import lps, torch, torchvision,", "import torch, torchvision, lps,")):
        r = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.startswith("[0] "), r.stdout
