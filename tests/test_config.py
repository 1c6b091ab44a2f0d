import pytest

from lps.config import build_config, config_to_yaml, overrides_to_dict
from lps.errors import LPSError


def test_defaults_and_overrides():
    cfg = build_config(["demo"], ["optim.lr=0.05", "method=lps", "method.tau=0.3", "train.seed=3"])
    assert cfg.optim.lr == 0.05 and cfg.train.seed == 3
    assert cfg.method["name"] == "lps" and cfg.method["tau"] == 0.3 and cfg.method["margin_C"] == 10.0
    assert cfg.data.dataset == "fashion_mnist"


def test_roundtrip_yaml(tmp_path):
    import yaml

    cfg = build_config(["demo"], ["method.eta1=0"])
    again = build_config(base=yaml.safe_load(config_to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("override, needle", [
    (["foo=1"], "'foo'"),
    (["data.nope=1"], "'data.nope'"),
    (["method.nope=1"], "'method.nope'"),
    (["optim.lr=abc"], "'optim.lr'"),
    (["optim.epochs=2.5"], "'optim.epochs'"),
    (["model.freeze=all"], "'model.freeze'"),
    (["train.deterministic=maybe"], "'train.deterministic'"),
    (["data.label_ratio=0"], "'data.label_ratio'"),
    (["data.label_ratio=1.01"], "'data.label_ratio'"),
    (["data.dataset=mnist"], "unknown dataset 'mnist'"),
    (["method=nope"], "unknown method 'nope'"),
    (["method.tau=-1"], "'method.tau'"),
    (["method.lambda_seen=1.5"], "'method.lambda_seen'"),
    (["novalue"], "key=value"),
])
def test_bad_config_names_the_key(override, needle):
    with pytest.raises(LPSError) as e:
        build_config(["demo"], override)
    assert needle in str(e.value)


def test_label_ratio_one_is_allowed():
    assert build_config([], ["data.label_ratio=1"]).data.label_ratio == 1.0


def test_override_parsing():
    assert overrides_to_dict(["a.b=1", "a.c=[1, 2]", "d=x"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    assert overrides_to_dict(["method=orca"]) == {"method": {"name": "orca"}}


def test_missing_config_file():
    with pytest.raises(LPSError, match="not found"):
        build_config(["does/not/exist.yaml"])
