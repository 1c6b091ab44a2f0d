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
    (["train.eval_every=0"], "'train.eval_every'"),
    (["train.eval_batch_size=0"], "'train.eval_batch_size'"),
    (["optim.momentum=-0.9"], "'optim.momentum'"),
    (["optim.weight_decay=-0.0001"], "'optim.weight_decay'"),
    (["data.split_seed=-1"], "'data.split_seed'"),
    (["data.max_train_per_class=-5"], "'data.max_train_per_class'"),
    (["optim.lr=.nan"], "'optim.lr'"),
    (["optim.lr=.inf"], "'optim.lr'"),
    (["method.tau=.nan"], "'method.tau'"),
    (["run_name=/some/abs/path"], "'run_name'"),
    (["run_name=../up"], "'run_name'"),
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


def test_exponent_numbers_mean_numbers(tmp_path):
    """YAML 1.1 (PyYAML) reads 5e-4 and 1e9 as strings; on the command line and in files they are numbers."""
    cfg = build_config([], ["optim.weight_decay=5e-4", "optim.lr=1E-1", "method.tau=4e-1", "optim.epochs=1e1"])
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.lr == 0.1 and cfg.method["tau"] == 0.4
    assert cfg.optim.epochs == 10
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  weight_decay: 5e-4\n")
    assert build_config([str(f)]).optim.weight_decay == 5e-4
    with pytest.raises(LPSError, match="'optim.lr'"):
        build_config([], ["optim.lr=5e-4x"])


def test_config_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LPSError, match="is a folder"):
        build_config([str(tmp_path)])


def test_bad_values_fail_before_any_run_folder(tmp_path):
    import subprocess
    import sys

    for o in ("train.eval_every=0", "train.eval_batch_size=0", f"run_name={tmp_path / 'abs'}"):
        r = subprocess.run([sys.executable, "-m", "lps", "train", f"output_dir={tmp_path / 'runs'}", o],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr and o.split("=")[0] in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "abs").exists()


def test_published_optimiser_comes_with_the_method():
    """Each method starts from the optimiser and schedule it was released with; any optim key the
    config sets wins; a set that only shortens the run gets the milestones rescaled."""
    from lps.config import to_dict

    orca = build_config([], ["method=orca", "data.dataset=cifar10"]).optim
    assert (orca.schedule, orca.milestones, orca.gamma, orca.epochs, orca.lr) == ("multistep", [140, 180], 0.1, 200, 0.1)
    orca_in = build_config([], ["method=orca", "data.dataset=imagenet100"]).optim  # released orca_imagenet.py
    assert (orca_in.schedule, orca_in.milestones, orca_in.epochs, orca_in.weight_decay) == ("multistep", [30, 60], 90, 1e-4)
    ncd = build_config([], ["method=openncd"]).optim
    assert (ncd.optimizer, ncd.lr, ncd.weight_decay, ncd.epochs, ncd.milestones) == ("adam", 2e-3, 0.0, 150, [90, 120])
    gcd = build_config([], ["method=gcd"]).optim
    assert (gcd.weight_decay, gcd.batch_size, gcd.schedule) == (5e-5, 128, "cosine")
    lps_c, lps_i = (build_config([], ["method=lps", f"data.dataset={d}"]).optim for d in ("cifar100", "imagenet100"))
    assert (lps_c.weight_decay, lps_c.epochs, lps_c.schedule) == (5e-4, 200, "cosine")
    assert (lps_i.weight_decay, lps_i.epochs) == (1e-4, 90)  # the paper's ImageNet protocol
    # a short run's scale keys: 6 epochs, batch 128 -> OpenNCD keeps Adam 2e-3, milestones 90/150, 120/150 of 6
    demo = build_config([], ["method=openncd", "optim.epochs=6", "optim.batch_size=128"]).optim
    assert (demo.optimizer, demo.lr, demo.epochs, demo.milestones, demo.batch_size) == ("adam", 2e-3, 6, [4, 5], 128)
    assert build_config([], ["method=orca", "optim.epochs=6"]).optim.milestones == [4, 5]  # 4.2, 5.4
    # a key the config sets wins, the others stay published
    o = build_config([], ["method=openncd", "optim.lr=0.01", "optim.milestones=[2]"]).optim
    assert (o.optimizer, o.lr, o.milestones) == ("adam", 0.01, [2])
    assert build_config([], ["method=orca", "optim.schedule=cosine"]).optim.schedule == "cosine"
    # a resolved config reloads to itself (run folders, figures)
    cfg = build_config([], ["method=openncd", "optim.epochs=6"])
    assert to_dict(build_config(base=to_dict(cfg))) == to_dict(cfg)
