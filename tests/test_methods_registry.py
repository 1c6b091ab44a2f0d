"""One test over every registered method: a new method file is covered with no list to keep."""

import numpy as np
import pytest
import torch

from lps.config import build_config
from lps.data.augment import Augmenter
from lps.evaluation import openssl_metrics
from lps.methods import METHODS, Batch, MethodContext
from lps.models import CifarResNet18, OpenWorldModel, apply_freeze

K, N_SEEN, N_LB, N_ULB = 4, 2, 6, 10


def make(name: str, freeze: str = "layer4", seed: int = 0):
    torch.manual_seed(seed)
    cfg = build_config([], [f"method={name}"])
    cls = METHODS.get(name)
    params = cfg.method.params
    model = OpenWorldModel(CifarResNet18(1, 4), K)
    apply_freeze(model, freeze)
    ctx = MethodContext(num_classes=K, n_seen=N_SEEN, n_labeled=N_LB * 3, n_unlabeled=N_ULB * 3, epochs=5,
                        steps_per_epoch=3, feat_dim=model.backbone.out_dim, device=torch.device("cpu"))
    method = cls(params, ctx)
    return cls, model, method


def make_batch(cls, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (N_LB + N_ULB, 1, 16, 16), dtype=torch.uint8, generator=g)
    aug = Augmenter("small", 16, (0.5,), (0.25,))
    fns = {"weak": aug.weak, "strong": aug.strong, "simclr": aug.simclr}
    views = [fns[v](x, g) for v in cls.views]
    y_lb = torch.arange(N_LB) % N_SEEN
    return Batch(views=views, y_lb=y_lb, n_lb=N_LB, idx=torch.arange(N_LB + N_ULB), generator=g)


def step(name: str, freeze: str = "layer4", seed: int = 0):
    cls, model, method = make(name, freeze, seed)
    method.on_epoch_start(0, model, None)
    out = method.training_step(model, make_batch(cls, seed))
    return model, method, out


TRAINING = [n for n in METHODS.names() if METHODS.get(n).trains]


@pytest.mark.parametrize("name", METHODS.names())
def test_has_documented_params(name):
    import dataclasses

    cls = METHODS.get(name)
    assert cls.__doc__ or __import__(cls.__module__).__doc__
    assert dataclasses.is_dataclass(cls.Params)
    cls.Params()  # defaults are valid


@pytest.mark.parametrize("freeze", ["layer4", "none"])
@pytest.mark.parametrize("name", TRAINING)
def test_training_step_finite_loss_and_gradients(name, freeze):
    model, method, out = step(name, freeze)
    loss = out["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    for k, v in out.items():
        assert torch.as_tensor(v).numel() == 1 and torch.isfinite(torch.as_tensor(v, dtype=torch.float)), k
    loss.backward()
    params = [(n, p) for n, p in list(model.named_parameters()) + list(method.named_parameters()) if p.requires_grad]
    missing = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient reaches {missing[:5]}"
    assert any(p.grad.abs().sum() > 0 for _, p in params)


@pytest.mark.parametrize("name", TRAINING)
def test_training_step_under_bf16_autocast(name):
    """The trainer's bf16 autocast (the CUDA default; CPU bf16 here): a step in the first and in
    the last epoch, so the statistics a method keeps late in a run (OpenNCD's grouping counts,
    ...) are updated under autocast too, with a finite loss and gradients."""
    cls, model, method = make(name, "layer4", 0)
    for epoch in (0, method.ctx.epochs - 1):
        method.on_epoch_start(epoch, model, None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = method.training_step(model, make_batch(cls, epoch))
        assert torch.isfinite(out["loss"].float())
        out["loss"].backward()
    params = [p for p in list(model.parameters()) + list(method.parameters()) if p.requires_grad]
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in params)


@pytest.mark.parametrize("name", TRAINING)
def test_same_seed_same_loss(name):
    a = step(name, seed=3)[2]["loss"].item()
    b = step(name, seed=3)[2]["loss"].item()
    assert a == b


@pytest.mark.parametrize("name", METHODS.names())
def test_evaluation_returns_all_metrics(name):
    cls, model, method = make(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 16, 16, generator=g)
    model.eval()
    with torch.no_grad():
        logits, feats = model(x)
        lab_logits, lab_feats = model(x[:12])
    method.before_evaluation(lambda: (lab_logits, lab_feats, torch.arange(12) % N_SEEN))
    pred = np.asarray(method.predict(logits, feats))
    assert pred.shape == (40,) and np.issubdtype(pred.dtype, np.integer)
    y = np.arange(40) % K
    m = openssl_metrics(y, pred, N_SEEN)
    assert set(m) == {"acc_seen", "acc_novel", "acc_all", "nmi_novel"}
    assert all(0.0 <= v <= 1.0 for v in m.values())


@pytest.mark.parametrize("name", METHODS.names())
def test_state_roundtrip(name):
    """Method state lives in buffers/parameters: a state_dict round trip restores it exactly."""
    _, _, method = make(name)
    _, _, fresh = make(name, seed=1)
    import io

    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)  # through a file, as checkpoints are: tensors only
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    for (k, a), (_, b) in zip(method.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
