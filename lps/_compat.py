"""Import-time compatibility fixes.

torchvision wheels on PyPI are CUDA builds. Paired with a CPU-only torch of the
same release, their compiled extension cannot load, and ``import torchvision``
then fails while registering fake kernels for ``torchvision::nms``/``qnms``.
``lps`` uses torchvision only for datasets and the pure-tensor functional
transforms, none of which need the extension, so when the extension is missing
the two operator schemas are declared here (without kernels) before torchvision
is imported. Calling ``torchvision.ops.nms`` would still fail loudly.
"""

from __future__ import annotations

import importlib.util


def ensure_torchvision_importable() -> None:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        return
    try:
        torch.ops.torchvision.nms  # noqa: B018  (already registered: nothing to do)
        return
    except (AttributeError, RuntimeError):
        pass
    import os

    so = os.path.join(os.path.dirname(spec.origin), "_C.so")
    try:
        torch.ops.load_library(so)
        return
    except (OSError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # keep the library object alive for the process lifetime
    globals()["_torchvision_stub_lib"] = lib


ensure_torchvision_importable()
