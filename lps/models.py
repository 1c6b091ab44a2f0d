"""Backbones (CIFAR ResNet-18 with a width multiplier, ResNet-50), the cosine classifier, the OpenSSL and
SimCLR models, freezing, memory format, and ``embed`` (a model's logits and features of a set of images)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lps.errors import LPSError
from lps.runtime import autocast


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18, CIFAR variant: 3x3 stride-1 stem, no max-pool, [2,2,2,2] BasicBlocks at
    width x (1, 2, 4, 8), global average pool. ``width=64`` is the standard model.
    ``stem_stride=2`` (CPU-sized runs only) halves the resolution of every stage, ~4x fewer FLOPs."""

    def __init__(self, in_channels: int = 3, width: int = 64, stem_stride: int = 1):
        super().__init__()
        if stem_stride not in (1, 2):
            raise LPSError(f"model.stem_stride must be 1 or 2, got {stem_stride}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes, layers = width, []
        in_planes = width
        for i, stride in enumerate((1, 2, 2, 2)):
            p = width * (2**i)
            layers.append(nn.Sequential(BasicBlock(in_planes, p, stride), BasicBlock(p, p, 1)))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_dim = in_planes
        del planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class ResNet50(nn.Module):
    """torchvision ResNet-50 without its classifier (feature dim 2048), for 224-px ImageNet-100."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        from torchvision.models import resnet50

        m = resnet50(weights=None)
        if in_channels != 3:
            m.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = m.conv1, m.bn1, m.relu, m.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = m.layer1, m.layer2, m.layer3, m.layer4
        self.out_dim = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def normed_linear_init(in_dim: int, num_classes: int) -> torch.Tensor:
    """The released ``NormedLinear`` initialisation (LPS/ORCA ``models/resnet_s.py``): a weight of
    shape ``[in_dim, num_classes]`` drawn ``uniform_(-1, 1)``, each class column renormalised to
    norm 1 (``renorm_(2, 1, 1e-5).mul_(1e5)``). Returned transposed, ``[num_classes, in_dim]``, so
    the same torch random state gives the released values. PyTorch's default Linear init would start
    the class vectors at norm ~0.58, and a normalised head's effective learning rate scales as
    ``1 / |w|^2`` (about 3x the released head's early on)."""
    w = torch.empty(in_dim, num_classes).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
    return w.t().contiguous()


class CosineClassifier(nn.Module):
    """``logits = scale * normalize(feat) @ normalize(W)``, no bias (ORCA/LPS head, scale 10).
    Every class vector starts at norm 1 (:func:`normed_linear_init`, as released)."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = 10.0):
        super().__init__()
        self.weight = nn.Parameter(normed_linear_init(in_dim, num_classes))
        self.scale = scale

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(feat, dim=1) @ F.normalize(self.weight, dim=1).t()


class OpenWorldModel(nn.Module):
    """Backbone + cosine head over all K = seen + novel classes. ``forward`` returns (logits, feat)."""

    def __init__(self, backbone: nn.Module, num_classes: int, head_scale: float = 10.0):
        super().__init__()
        self.backbone = backbone
        self.head = CosineClassifier(backbone.out_dim, num_classes, head_scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.backbone(x)
        return self.head(feat), feat


def resolve_arch(arch: str, dataset_kind: str) -> str:
    if arch == "auto":
        return "resnet50" if dataset_kind == "large" else "resnet18_cifar"
    return arch


def build_backbone(arch: str, in_channels: int, width: int = 64, stem_stride: int = 1) -> nn.Module:
    if arch == "resnet18_cifar":
        return CifarResNet18(in_channels, width, stem_stride)
    if stem_stride != 1:
        raise LPSError(f"model.stem_stride applies to resnet18_cifar only, not {arch!r}")
    if arch == "resnet50":
        return ResNet50(in_channels)
    raise LPSError(f"unknown architecture {arch!r} (resnet18_cifar, resnet50)")


def build_model(arch: str, dataset_kind: str, in_channels: int, num_classes: int, width: int = 64,
                stem_stride: int = 1, head_scale: float = 10.0) -> OpenWorldModel:
    """The OpenSSL model of a run: backbone (``arch`` "auto" picks by ``dataset_kind``) + cosine head
    over all classes."""
    backbone = build_backbone(resolve_arch(arch, dataset_kind), in_channels, width, stem_stride)
    return OpenWorldModel(backbone, num_classes, head_scale)


class SimCLRModel(nn.Module):
    """Backbone + SimCLR's MLP projector (Linear, BN, ReLU, Linear to ``proj_dim``)."""

    def __init__(self, backbone: nn.Module, proj_dim: int):
        super().__init__()
        d = backbone.out_dim
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                                       nn.Linear(d, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


@torch.no_grad()
def embed(model: nn.Module, source, idx, transform: Callable, device: torch.device, batch_size: int,
          precision: str, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and backbone features (float32, CPU) of the images ``idx`` of ``source`` (an image store
    with ``batches``) with ``transform`` (the test transform), in eval mode; ``channels_last``: inputs
    in that memory format, for a model converted to it (what ``use_channels_last`` returned)."""
    was_training = model.training
    model.eval()
    logits, feats = [], []
    chunks = [torch.as_tensor(idx[i:i + batch_size]) for i in range(0, len(idx), batch_size)]
    for x, sizes in source.batches(chunks, device):
        v = transform(x, sizes)
        if channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            z, f = model(v)
        logits.append(z.float().cpu())
        feats.append(f.float().cpu())
    model.train(was_training)
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, 0)
    return torch.cat(logits), torch.cat(feats)


def use_channels_last(model: nn.Module, device: torch.device, wanted: bool) -> bool:
    """Convert ``model`` to channels_last where that is ``wanted`` (``train.channels_last``) and safe;
    return whether it was, i.e. the memory format its inputs must take. On the CPU, oneDNN's
    backward of a strided 1x1 convolution in channels_last with fewer input channels than its block
    (8 on AVX2, 16 on AVX-512) writes past its workspace: segfaults, aborts, hangs or silently wrong
    weight gradients (oneDNN issue 6035; measured with torch 2.14.1 on an AVX2 CPU for 2, 4 and 6
    channels, none for 8 and 16). A model with such a convolution whose input channels are not a
    multiple of 16 (CIFAR ResNet-18 at widths that are not multiples of 16) stays in the default
    format on the CPU: correct, ~1.2x slower there."""
    ok = wanted and (device.type != "cpu" or not any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels % 16
        for m in model.modules()))
    if ok:
        model.to(memory_format=torch.channels_last)
    return ok


FROZEN_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")


def apply_freeze(model: OpenWorldModel, policy: str) -> None:
    """``layer4``: conv1, bn1, layer1-3 get requires_grad False (their BatchNorm statistics still
    update in train mode, as in the released code); ``none``: every layer trains."""
    if policy not in ("layer4", "none"):
        raise LPSError(f"unknown freeze policy {policy!r} (layer4, none)")
    for name, p in model.backbone.named_parameters():
        p.requires_grad_(not (policy == "layer4" and name.startswith(FROZEN_PREFIXES)))


def set_train_mode(model: nn.Module, policy: str, frozen_bn: str) -> None:
    """``model.train()``; with ``frozen_bn="fixed"`` and the ``layer4`` policy, the BatchNorm layers of
    the frozen stages stay in eval mode: they normalise with the pretrained running statistics and do
    not update them (``"update"``: every BatchNorm tracks the training batches, as released)."""
    if frozen_bn not in ("update", "fixed"):
        raise LPSError(f"unknown model.frozen_bn {frozen_bn!r} (update, fixed)")
    model.train()
    if frozen_bn == "fixed" and policy == "layer4":
        backbone = model.backbone if hasattr(model, "backbone") else model
        for name, mod in backbone.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and (name + ".").startswith(FROZEN_PREFIXES):
                mod.eval()


_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


def load_backbone_state(backbone: nn.Module, state: dict, source: str, strict: bool = True) -> dict:
    """Load a backbone state_dict from a SimCLR checkpoint or an external file.

    Common wrapper prefixes (``module.``, ``backbone.``, ``encoder.``) are stripped. Keys of a
    classifier or projection head (``fc.``, ``linear.``, ``head.``, ``projector.``) are unexpected and
    reported. Missing backbone keys, or shape mismatches, raise an LPSError listing them (missing
    keys only warn when ``strict`` is False). Returns ``{"missing": [...], "unexpected": [...]}``.
    """
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise LPSError(f"{source} does not hold a state_dict (a mapping of parameter names to tensors)")
    if "backbone" in state and isinstance(state["backbone"], dict):
        state = state["backbone"]
    elif "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    clean = {}
    for k, v in state.items():
        for pre in _PREFIXES:
            if k.startswith(pre):
                k = k[len(pre):]
                break
        clean[k] = v
    own = backbone.state_dict()
    unexpected = sorted(k for k in clean if k not in own)
    missing = sorted(k for k in own if k not in clean)
    mismatched = [f"{k}: file {tuple(clean[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in clean and hasattr(clean[k], "shape") and clean[k].shape != own[k].shape]
    if mismatched:
        raise LPSError(f"{source} does not match the backbone: {len(mismatched)} shape mismatches, e.g. "
                       + "; ".join(mismatched[:5]) + " (check model.arch and model.width)")
    if missing and strict:
        raise LPSError(f"{source} lacks {len(missing)} backbone keys, e.g. {missing[:5]} "
                       "(wrong architecture? set model.init_strict=false to load it anyway)")
    backbone.load_state_dict({k: v for k, v in clean.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def load_init(model: OpenWorldModel, init: str, strict: bool) -> dict:
    """Load the backbone a run starts from (``lps.identity.resolve_init``; "scratch" keeps the random
    init). Returns the init report for ``run_info.json``."""
    if init == "scratch":
        return {"source": "scratch", "missing": [], "unexpected": []}
    from pathlib import Path

    path = Path(init)
    if not path.exists():
        raise LPSError(f"backbone checkpoint {init} does not exist; run `lps pretrain` with the same config "
                       "first, pass --init FILE, or use --init scratch")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise LPSError(f"cannot read backbone checkpoint {init}: {type(e).__name__}: {e} "
                       "(corrupt file? delete it and pretrain again)") from None
    report = load_backbone_state(model.backbone, state, str(path), strict=strict)
    if report["missing"] or report["unexpected"]:
        import sys

        print(f"[lps] init from {path}: {len(report['missing'])} missing keys {report['missing'][:5]}, "
              f"{len(report['unexpected'])} unexpected keys {report['unexpected'][:5]}", file=sys.stderr)
    return {"source": str(path), **report}
