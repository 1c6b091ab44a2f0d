"""One typed configuration tree: YAML files, then ``key=value`` overrides.

Every key is a dataclass field, so an unknown key or a value of the wrong type is an error that
names the key. Method hyperparameters live under ``method:`` and are checked against the chosen
method's own dataclass (``lps/methods/<name>.py``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from lps.errors import LPSError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"  # fashion_mnist | cifar10 | cifar100 | imagenet100
    data_dir: str = ""  # "" -> $LPS_DATA_DIR, else ./data
    seen_class_ratio: float = 0.5  # first round(K * ratio) classes are seen (REFERENCE.md)
    label_ratio: float = 0.5  # fraction of seen-class images that are labeled, in (0, 1]
    split_seed: int = 0  # seed of the labeled/unlabeled draw (the released code hard-codes 0)
    max_train_per_class: int = 0  # > 0: keep that many training images per class (CPU-sized runs)
    max_test_per_class: int = 0  # > 0: same for the test split
    imagenet_dir: str = ""  # ImageNet train folder (one sub-folder per WNID), for imagenet100
    num_workers: int = 8  # DataLoader workers (ImageNet-100 only)


@dataclass
class ModelConfig:
    arch: str = "auto"  # auto | resnet18_cifar | resnet50 ("auto": resnet50 for imagenet100)
    width: int = 64  # base width of the CIFAR ResNet-18 (64 = the standard model)
    stem_stride: int = 1  # stride of the CIFAR ResNet-18's first conv (1 = the paper's model; 2: ~4x fewer FLOPs)
    freeze: Literal["layer4", "none"] = "layer4"  # layer4: only layer4 and the head train
    frozen_bn: Literal["update", "fixed"] = "update"  # BatchNorm statistics of the frozen layers: update in
    # train mode (the released code) or keep the pretrained ones (fixed: a frozen trunk is then a fixed function)
    head_scale: float = 10.0  # cosine classifier scale
    init: str = ""  # backbone state_dict to start from; "" -> the SimCLR checkpoint of `pretrain`
    init_strict: bool = True  # missing backbone keys in `init` are an error


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 200
    batch_size: int = 512
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool = True  # channels_last memory format (CUDA and CPU: faster convolutions on both;
    # on the CPU only where torch's kernels are safe for the model: lps.models.use_channels_last)
    compile: bool = False
    fuse_views: bool = False  # one forward pass over all views (BatchNorm statistics shared across views)
    deterministic: bool = True  # deterministic kernels (exact resume on CPU)
    max_steps_per_epoch: int = 0  # > 0 caps the steps of an epoch (smoke tests)
    eval_every: int = 1  # evaluate the unlabeled training images every N epochs (and always the last)
    eval_test_every: int = 0  # the held-out test split every N epochs; 0: the last epoch only
    eval_batch_size: int = 1024
    threads: int = 0  # > 0 sets torch CPU threads
    progress: Literal["auto", "bar", "log", "none"] = "auto"


@dataclass
class PretrainConfig:
    """SimCLR pretraining of the backbone (once per dataset and architecture)."""

    epochs: int = 200
    batch_size: int = 512
    lr: float = 0.5  # SGD, scaled as lr * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 0.5  # NT-Xent tau
    proj_dim: int = 128
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # of the pretraining (part of its identity), as train.precision
    seed: int = 0
    max_steps_per_epoch: int = 0
    checkpoint: str = ""  # set by the CLI/workflow: the backbone file written by `lps pretrain`


@dataclass
class MethodSpec:
    """``method:`` of a resolved config: the registry name and the hyperparameters, typed once as the
    method's ``Params`` dataclass (validated there). Serialises as ``{"name": ..., <param>: ...}``
    (:func:`to_dict`, ``config.yaml``, the run identity); ``spec["margin_C"]`` reads a parameter."""

    name: str
    params: Any

    def __getitem__(self, key: str) -> Any:
        if key == "name":
            return self.name
        try:
            return getattr(self.params, key)
        except AttributeError:
            raise KeyError(key) from None


@dataclass
class Config:
    # a MethodSpec once build_config resolved it; the plain ``{"name": ...}`` mapping before
    method: Any = field(default_factory=lambda: {"name": "lps"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    output_dir: str = "results/runs"
    run_name: str = ""  # "" -> derived from the resolved config

    @property
    def method_name(self) -> str:
        return self.method["name"]


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass with type checking


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise LPSError(f"config key {key!r}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arg, key)
            except LPSError as e:
                errors.append(str(e))
        raise LPSError(f"config key {key!r}: {value!r} does not fit {_type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise LPSError(f"config key {key!r}: expected a list, got {value!r}")
        (arg,) = get_args(tp)[:1] or (Any,)
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise LPSError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise LPSError(f"config key {key!r}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise LPSError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # 1e3
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise LPSError(f"config key {key!r}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 5e-4 and 1e9 as strings; they mean numbers
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise LPSError(f"config key {key!r}: expected a finite number, got {value!r}")
            return float(value)
        raise LPSError(f"config key {key!r}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        raise LPSError(f"config key {key!r}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise LPSError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {prefix!r}" if prefix else ""
        raise LPSError(
            f"unknown config key {'.'.join(filter(None, [prefix, unknown[0]]))!r}{where}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], ".".join(filter(None, [prefix, k]))) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    if isinstance(obj, MethodSpec):
        return {"name": obj.name, **to_dict(obj.params)}
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------
# YAML + overrides


def flatten(d: dict, prefix: str = "", keep: tuple[str, ...] = ()) -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; a mapping under a key in ``keep`` stays one value."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and k not in keep:
            out.update(flatten(v, key, keep))
        else:
            out[key] = v
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise LPSError(f"override {text!r} is not of the form key=value (e.g. optim.lr=0.05)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise LPSError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise LPSError(f"override {text!r}: cannot parse the value: {e}") from None
    return key.split("."), value


def overrides_to_dict(overrides: list[str]) -> dict:
    out: dict = {}
    for text in overrides:
        path, value = parse_override(text)
        if path == ["method"] and isinstance(value, str):  # `method=orca` is short for method.name
            path = ["method", "name"]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LPSError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        named = CONFIG_DIR / f"{path}.yaml"
        if named.exists():
            path = named
        else:
            raise LPSError(f"config file {str(path)!r} not found (built-in configs: "
                           f"{', '.join(p.stem for p in sorted(CONFIG_DIR.glob('*.yaml')))})")
    if path.is_dir():
        raise LPSError(f"config file {str(path)!r} is a folder; give a YAML file (-c FILE.yaml)")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as e:
            raise LPSError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise LPSError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def build_config(files: list[str] | None = None, overrides: list[str] | None = None,
                 base: dict | None = None) -> Config:
    """Defaults <- each YAML file in turn <- ``key=value`` overrides, validated."""
    data: dict = dict(base or {})
    for f in files or []:
        data = deep_merge(data, load_yaml(f))
    data = deep_merge(data, overrides_to_dict(overrides or []))
    method = data.get("method", {"name": "lps"})
    if isinstance(method, str):
        method = {"name": method}
    if isinstance(method, dict):
        method = {"name": "lps", **method}
    data["method"] = method
    data = apply_published_optim(data)
    cfg = from_dict(Config, data)
    cfg.method = resolve_method_params(cfg.method)
    validate_config(cfg)
    return cfg


def apply_published_optim(data: dict) -> dict:
    """Fill the ``optim`` keys the config leaves unset from the method's ``published_optim`` for the
    dataset's kind (ORCA's MultiStep schedule, OpenNCD's Adam, GCD's weight decay and batch, ...).

    Every key given by a file, an experiment set or the command line wins. When the config sets
    ``optim.epochs`` but not ``optim.milestones``, published milestones are rescaled to the run's
    length (``round(m * epochs / published epochs)``): ORCA's [140, 180] of 200 epochs is [4, 5]
    in a 6-epoch run.
    """
    from lps.data.datasets import DATASET_KINDS
    from lps.methods import METHODS

    method = data.get("method")
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        return data
    try:
        cls = METHODS.get(method["name"])
    except LPSError:
        return data  # reported with the list of methods by resolve_method_params
    given = data.get("optim", {})
    data_section = data.get("data")
    dataset = data_section.get("dataset", DataConfig.dataset) if isinstance(data_section, dict) else DataConfig.dataset
    published = dict(cls.published_optim.get(DATASET_KINDS.get(dataset, "small"), {}))
    if not published or not isinstance(given, dict):
        return data
    epochs, pub_epochs = given.get("epochs"), published.get("epochs", OptimConfig.epochs)
    if ("milestones" in published and "milestones" not in given and isinstance(epochs, int)
            and not isinstance(epochs, bool) and epochs > 0 and epochs != pub_epochs):
        published["milestones"] = [int(round(m * epochs / pub_epochs)) for m in published["milestones"]]
    return {**data, "optim": {**published, **given}}


def resolve_method_params(method: dict) -> MethodSpec:
    """The method's ``Params`` from the given keys (the rest its dataclass defaults), each checked."""
    from lps.methods import METHODS

    if "name" not in method:
        raise LPSError("config key 'method.name' is missing (e.g. method.name=lps)")
    cls = METHODS.get(method["name"])
    params = {k: v for k, v in method.items() if k != "name"}
    return MethodSpec(method["name"], from_dict(cls.Params, params, prefix="method"))


def validate_config(cfg: Config) -> None:
    from lps.data.datasets import DATASETS

    d = cfg.data
    DATASETS.get(d.dataset)
    if not (0.0 < d.label_ratio <= 1.0):
        raise LPSError(f"config key 'data.label_ratio' must be in (0, 1], got {d.label_ratio}")
    if not (0.0 < d.seen_class_ratio < 1.0):
        raise LPSError(f"config key 'data.seen_class_ratio' must be in (0, 1), got {d.seen_class_ratio}")
    for key, value in (("optim.epochs", cfg.optim.epochs), ("optim.batch_size", cfg.optim.batch_size),
                       ("model.width", cfg.model.width), ("pretrain.batch_size", cfg.pretrain.batch_size)):
        if value <= 0:
            raise LPSError(f"config key {key!r} must be positive, got {value}")
    for key, value in (("train.eval_every", cfg.train.eval_every),
                       ("train.eval_batch_size", cfg.train.eval_batch_size)):
        if value < 1:
            raise LPSError(f"config key {key!r} must be >= 1, got {value}")
    for key, value in (("optim.momentum", cfg.optim.momentum), ("optim.weight_decay", cfg.optim.weight_decay),
                       ("pretrain.momentum", cfg.pretrain.momentum),
                       ("pretrain.weight_decay", cfg.pretrain.weight_decay),
                       ("data.split_seed", d.split_seed), ("data.max_train_per_class", d.max_train_per_class),
                       ("data.max_test_per_class", d.max_test_per_class), ("data.num_workers", d.num_workers),
                       ("train.seed", cfg.train.seed), ("train.threads", cfg.train.threads),
                       ("train.eval_test_every", cfg.train.eval_test_every),
                       ("train.max_steps_per_epoch", cfg.train.max_steps_per_epoch),
                       ("pretrain.seed", cfg.pretrain.seed),
                       ("pretrain.max_steps_per_epoch", cfg.pretrain.max_steps_per_epoch)):
        if value < 0:
            raise LPSError(f"config key {key!r} must be >= 0, got {value}")
    if cfg.optim.momentum >= 1 or cfg.pretrain.momentum >= 1:
        raise LPSError("config keys 'optim.momentum' and 'pretrain.momentum' must be below 1")
    if cfg.optim.gamma <= 0 or any(m < 0 for m in cfg.optim.milestones):
        raise LPSError("config keys 'optim.gamma' must be positive and 'optim.milestones' >= 0")
    if cfg.pretrain.lr <= 0:
        raise LPSError(f"config key 'pretrain.lr' must be positive, got {cfg.pretrain.lr}")
    if cfg.run_name and (not _RUN_NAME.fullmatch(cfg.run_name) or ".." in cfg.run_name):
        raise LPSError(f"config key 'run_name' must be a plain folder name (letters, digits, _ . = + -), "
                       f"got {cfg.run_name!r}")
    if cfg.pretrain.epochs < 0:
        raise LPSError(f"config key 'pretrain.epochs' must be >= 0, got {cfg.pretrain.epochs}")
    if cfg.optim.lr <= 0:
        raise LPSError(f"config key 'optim.lr' must be positive, got {cfg.optim.lr}")
    if cfg.pretrain.temperature <= 0:
        raise LPSError(f"config key 'pretrain.temperature' must be positive, got {cfg.pretrain.temperature}")
    if cfg.model.arch not in ("auto", "resnet18_cifar", "resnet50"):
        raise LPSError(f"config key 'model.arch': unknown architecture {cfg.model.arch!r} "
                       "(auto, resnet18_cifar, resnet50)")


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
