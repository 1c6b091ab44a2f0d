import pytest
import torch

from lps.errors import LPSError
from lps.models import (CifarResNet18, CosineClassifier, OpenWorldModel, apply_freeze, build_backbone,
                        load_backbone_state)


def test_cifar_resnet18_shapes_and_standard_size():
    m = CifarResNet18(3, 64)
    assert m.out_dim == 512
    n = sum(p.numel() for p in m.parameters())
    assert 11_000_000 < n < 11_300_000  # the standard CIFAR ResNet-18 backbone (~11.17M)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert CifarResNet18(1, 8)(torch.randn(2, 1, 28, 28)).shape == (2, 64)


def test_cosine_head_formula():
    head = CosineClassifier(4, 3, scale=10.0)
    f = torch.randn(5, 4)
    expect = 10 * torch.nn.functional.normalize(f, dim=1) @ torch.nn.functional.normalize(head.weight, dim=1).t()
    torch.testing.assert_close(head(f), expect)
    assert head(f).abs().max() <= 10 + 1e-5


def test_freeze_policies():
    m = OpenWorldModel(CifarResNet18(1, 4), 10)
    apply_freeze(m, "layer4")
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert all(n.startswith(("backbone.layer4", "head")) for n in trainable)
    assert any(n.startswith("backbone.layer4") for n in trainable) and "head.weight" in trainable
    apply_freeze(m, "none")
    assert all(p.requires_grad for p in m.parameters())
    with pytest.raises(LPSError):
        apply_freeze(m, "everything")


def test_load_backbone_state_reports_keys():
    src = CifarResNet18(1, 4)
    dst = CifarResNet18(1, 4)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["fc.weight"] = torch.zeros(3)
    rep = load_backbone_state(dst, state, "x.pt")
    assert rep["unexpected"] == ["fc.weight"] and rep["missing"] == []
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)


def test_load_backbone_state_errors():
    dst = CifarResNet18(1, 4)
    with pytest.raises(LPSError, match="shape mismatch"):
        load_backbone_state(dst, CifarResNet18(1, 8).state_dict(), "wide.pt")
    partial = {k: v for k, v in CifarResNet18(1, 4).state_dict().items() if not k.startswith("layer4")}
    with pytest.raises(LPSError, match="lacks"):
        load_backbone_state(dst, partial, "partial.pt")
    rep = load_backbone_state(dst, partial, "partial.pt", strict=False)
    assert rep["missing"] and all(k.startswith("layer4") for k in rep["missing"])
    with pytest.raises(LPSError, match="state_dict"):
        load_backbone_state(dst, [1, 2], "list.pt")


def test_resnet50_builds():
    m = build_backbone("resnet50", 3)
    assert m.out_dim == 2048
    with pytest.raises(LPSError):
        build_backbone("vgg", 3)


def test_cosine_head_init_is_the_released_normed_linear():
    """Released NormedLinear: weight [in, out] ~ U(-1, 1), each class column renormed to norm 1."""
    torch.manual_seed(3)
    head = CosineClassifier(512, 10)
    torch.manual_seed(3)
    released = torch.empty(512, 10).uniform_(-1, 1)
    released = released / released.norm(dim=0, keepdim=True)  # renorm_(2, 1, 1e-5).mul_(1e5) == unit columns
    norms = head.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(10), rtol=0, atol=1e-6)
    torch.testing.assert_close(head.weight, released.t(), rtol=1e-6, atol=1e-6)
    assert head.weight.abs().max() <= 1  # a uniform(-1, 1) draw shrunk, never grown
    model = OpenWorldModel(CifarResNet18(1, 4), 7)
    torch.testing.assert_close(model.head.weight.norm(dim=1), torch.ones(7), rtol=0, atol=1e-6)


def test_channels_last_only_where_the_cpu_kernels_are_safe():
    """CPU: channels_last is refused for a CIFAR ResNet-18 whose strided 1x1 shortcut has input
    channels that are not a multiple of 16 (widths 4, 6, 8, 12: oneDNN's channels_last backward there
    writes past its workspace), kept for widths 16, 32, 64 and for ResNet-50; other devices and
    `wanted=False` pass through."""
    from lps.models import use_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for width, ok in ((4, False), (6, False), (8, False), (12, False), (16, True), (32, True), (64, True)):
        m = build_backbone("resnet18_cifar", 1, width)
        assert use_channels_last(m, cpu, True) is ok, width
        assert use_channels_last(m, cuda, True) is True and use_channels_last(m, cpu, False) is False
    assert use_channels_last(build_backbone("resnet50", 3), cpu, True) is True


def test_frozen_bn_fixed_keeps_pretrained_statistics():
    """model.frozen_bn=fixed: the frozen stages' BatchNorm layers stay in eval mode (their running
    statistics do not move) while layer4's track the batch; update (the default) moves both."""
    import torch

    from lps.models import apply_freeze, build_model, set_train_mode

    def stats_after_step(frozen_bn: str):
        torch.manual_seed(0)
        m = build_model("resnet18_cifar", "small", 1, 4, 4, 1, 10.0)
        apply_freeze(m, "layer4")
        before = {k: v.clone() for k, v in m.state_dict().items() if "running_mean" in k}
        set_train_mode(m, "layer4", frozen_bn)
        m(torch.randn(8, 1, 28, 28) * 3 + 1)
        after = m.state_dict()
        return {k: not torch.equal(before[k], after[k]) for k in before}

    fixed, update = stats_after_step("fixed"), stats_after_step("update")
    assert all(update.values())
    assert not any(moved for k, moved in fixed.items() if not k.startswith(("backbone.layer4", "layer4")))
    assert all(moved for k, moved in fixed.items() if k.startswith("backbone.layer4"))
    with pytest.raises(Exception, match="frozen_bn"):
        set_train_mode(build_model("resnet18_cifar", "small", 1, 4, 4, 1, 10.0), "layer4", "sometimes")
