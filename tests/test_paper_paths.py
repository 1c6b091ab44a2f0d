"""The paper set's own paths: torch/torchvision imports, CIFAR-10/100 and ImageNet-100 in their real
on-disk formats (synthetic, nothing downloaded), the CIFAR ResNet-18 and ResNet-50, `lps pretrain` /
`lps train` of LPS and of one method of each family, and one slice of the `paper` experiment set
through the workflow (one Table 1 cell per dataset, one seed)."""

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lps.config import build_config
from lps.data.datasets import load_cifar10, load_cifar100, load_dataset, load_imagenet100
from lps.errors import LPSError

from lps.data.synthetic import write_cifar, write_imagenet

ROOT = Path(__file__).resolve().parent.parent
# one method of each family compared in the paper: semi-supervised (FixMatch), novel class discovery
# (RankStats), open-world SSL (ORCA), and the SimCLR + k-means baseline; LPS itself runs through the CLI
FAMILY_METHODS = ["fixmatch", "rankstats", "orca", "simclr_kmeans"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paper_data")
    write_cifar(root, "cifar10", train_per_class=6, test_per_class=2)
    write_cifar(root, "cifar100", train_per_class=2, test_per_class=1)
    write_imagenet(root / "imagenet", train_per_class=2, val_per_class=1)
    return root


def dataset_overrides(dataset: str, root: Path) -> list[str]:
    o = [f"data.dataset={dataset}", f"data.data_dir={root}"]
    if dataset == "imagenet100":
        o += [f"data.imagenet_dir={root / 'imagenet' / 'train'}", "data.num_workers=1"]
    return o


def test_cifar_loaders_read_torchvision_layout(data_root):
    c10 = load_cifar10(str(data_root))
    assert tuple(c10.train.x.shape) == (60, 3, 32, 32) and tuple(c10.test.x.shape) == (20, 3, 32, 32)
    assert sorted(set(c10.train_y.tolist())) == list(range(10)) and c10.class_names[0] == "class_0"
    assert c10.kind == "small" and c10.num_classes == 10
    # the released code normalises both CIFAR sets with the CIFAR-100 statistics
    cifar100_stats = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    c100 = load_cifar100(str(data_root))
    assert (c10.mean, c10.std) == cifar100_stats and (c100.mean, c100.std) == cifar100_stats
    assert tuple(c100.train.x.shape) == (200, 3, 32, 32) and c100.num_classes == 100
    # the CHW layout matches the published format: row k of `data` = 1024 R, then G, then B values
    raw = pickle.load(open(data_root / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="latin1")
    assert (c10.train.x[0].reshape(-1).numpy() == raw["data"][0]).all() and c10.train_y[0] == raw["labels"][0]
    # the folder is also found one level down (<data_dir>/cifar10/cifar-10-batches-py)
    nested = data_root / "nested"
    write_cifar(nested / "cifar10", "cifar10", train_per_class=1, test_per_class=1)
    assert len(load_cifar10(str(nested)).train_y) == 10


def test_cifar_pickle_cannot_run_code(tmp_path):
    d = write_cifar(tmp_path, "cifar10", train_per_class=1, test_per_class=1)
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(d / "data_batch_2", "wb") as fh:
        pickle.dump({"data": Payload(), "labels": [0]}, fh)
    with pytest.raises(LPSError, match="refusing to load"):
        load_cifar10(str(tmp_path))
    assert not marker.exists()


def test_imagenet100_loader(data_root):
    d = load_imagenet100(str(data_root / "imagenet" / "train"), num_workers=0)
    assert d.num_classes == 100 and len(d.train) == 200 and len(d.test) == 100 and d.image_size == 224
    assert d.class_names == sorted(d.class_names) and d.kind == "large"

    x, sizes = next(d.train.batches([torch.tensor([0, 1, 199])], torch.device("cpu")))
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 3, 320, 320)
    # each whole image at its own size (24..47 px here, not enlarged) at the canvas' top-left corner
    from PIL import Image

    for i, k in enumerate([0, 1, 199]):
        with Image.open(d.train.files[k]) as im:
            w, h = im.size
            ref = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        assert sizes[i].tolist() == [h, w]
        assert torch.equal(x[i, :, :h, :w], ref) and not x[i, :, h:].any() and not x[i, :, :, w:].any()


def test_imagenet_files_shrink_into_the_canvas(tmp_path):
    """A 640 x 480 JPEG is stored whole at 320 x 240 (aspect kept, longer side = canvas)."""
    from PIL import Image

    from lps.data.datasets import ImageFiles, fit_in_canvas

    assert fit_in_canvas(640, 480, 320) == (320, 240) and fit_in_canvas(100, 500, 320) == (64, 320)
    assert fit_in_canvas(30, 40, 320) == (30, 40)
    arr = np.zeros((480, 640, 3), dtype=np.uint8)
    arr[:, :320] = 250  # left half bright
    Image.fromarray(arr).save(tmp_path / "a.JPEG", quality=95)
    x, sizes = next(ImageFiles([str(tmp_path / "a.JPEG")], 320, 0).batches([torch.tensor([0])], torch.device("cpu")))
    assert sizes.tolist() == [[240, 320]] and x.shape == (1, 3, 320, 320)
    assert x[0, :, :240, :150].float().mean() > 240 and x[0, :, :240, 170:320].float().mean() < 10
    assert not x[0, :, 240:].any()


def test_missing_data_says_where_to_put_what(tmp_path, monkeypatch):
    monkeypatch.setenv("LPS_DOWNLOAD_TIMEOUT", "3")
    with pytest.raises(LPSError) as e:
        load_cifar10(str(tmp_path))
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and str(tmp_path) in msg and "data_batch_1" in msg and "Fix:" in msg
    with pytest.raises(LPSError, match="imagenet_dir.*\n.*Fix:"):
        load_imagenet100("")
    (tmp_path / "train" / "n01558993").mkdir(parents=True)
    with pytest.raises(LPSError, match="99 of the 100 class folders are missing"):
        load_imagenet100(str(tmp_path / "train"))


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "lps", *args], capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-3000:])
    return r


SIZE = ["optim.epochs=1", "optim.batch_size=16", "train.max_steps_per_epoch=1", "pretrain.epochs=1",
        "pretrain.batch_size=16", "pretrain.max_steps_per_epoch=1", "train.progress=none", "train.threads=2",
        "train.eval_batch_size=64"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset,arch", [("cifar10", "resnet18_cifar"), ("cifar100", "resnet18_cifar"),
                                          ("imagenet100", "resnet50")])
def test_pretrain_and_train_each_family(tmp_path, data_root, dataset, arch):
    from lps.trainer import train

    common = dataset_overrides(dataset, data_root) + SIZE + [f"output_dir={tmp_path / 'runs'}"]
    if dataset == "imagenet100":
        common += ["data.max_test_per_class=1"]
    out = _cli("pretrain", *common).stdout.strip().splitlines()[-1]
    assert Path(out).is_file() and f"simclr-{dataset}-" in out
    _cli("train", *common, "method=lps")
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    cfg = yaml.safe_load((runs[0] / "config.yaml").read_text())
    assert cfg["model"]["arch"] in (arch, "auto") and cfg["data"]["dataset"] == dataset
    info = json.loads((runs[0] / "run_info.json").read_text())
    assert info["libraries"]["torchvision"]
    n, n_lab, bs = info["n_labeled"] + info["n_unlabeled"], info["n_labeled"], 16
    # labeled rows per batch as released: ImageNet B - int(B * n_unlab / n), CIFAR int(B * n_lab / n)
    expect = bs - int(bs * info["n_unlabeled"] / n) if dataset == "imagenet100" else int(bs * n_lab / n)
    assert info["batch_labeled"] == max(1, expect)
    df = pd.read_parquet(runs[0] / "result.parquet")
    assert df.method[0] == "lps" and df.dataset[0] == dataset and df.epochs[0] == 1
    # the model really is the paper's backbone for this dataset
    from lps.models import resolve_arch

    assert resolve_arch(cfg["model"]["arch"], load_dataset(build_config([], common).data).kind) == arch
    for m in FAMILY_METHODS:
        row = train(build_config([], common + [f"method={m}"]))
        assert row["method"] == m and 0.0 <= row["acc_all"] <= 1.0, row
        assert not math.isnan(row["nmi_novel"]), row


def paper_slice(tmp_path: Path, seeds=(0,)) -> Path:
    """The `paper` experiment set cut to one Table 1 cell per dataset (LPS, 50% labeled), given seeds,
    at smoke-test size; everything else (datasets, methods, protocol defaults) as in paper.yaml."""
    s = yaml.safe_load((ROOT / "workflow" / "config" / "paper.yaml").read_text())
    s["seeds"] = list(seeds)
    size = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in SIZE[:6])}
    size.update({"data.max_train_per_class": 2, "data.max_test_per_class": 1})
    s["defaults"].update(size)
    for d in s["datasets"].values():  # a dataset's own overrides (ImageNet-100: 90 epochs) win over defaults
        d.setdefault("overrides", {}).update({k: v for k, v in size.items() if k in d["overrides"]})
    s["tables"] = {"table1": dict(s["tables"]["table1"])}
    s["tables"]["table1"]["grid"] = {"method": ["lps"], "dataset": ["cifar10", "cifar100", "imagenet100"],
                                     "label_ratio": [0.5]}
    s["figures"] = {}
    f = tmp_path / "paper_slice.yaml"
    f.write_text(yaml.safe_dump(s, sort_keys=False))
    return f


def _snakemake(tmp_path: Path, experiment_set: Path, data: Path, results: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(ROOT / "profiles" / "local"), "-s",
           str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores", "2", "--config",
           f"experiment_set={experiment_set}", f"results_dir={results}", f"data_dir={data}",
           f"imagenet_dir={data / 'imagenet' / 'train'}", "local_threads=2", "num_workers=1", "report_html="]
    env = dict(os.environ, LPS_DOWNLOAD_TIMEOUT="3")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)


@pytest.mark.slow
def test_paper_set_slice_through_workflow(tmp_path, data_root):
    results = tmp_path / "results"
    r = _snakemake(tmp_path, paper_slice(tmp_path), data_root, results)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])
    t = pd.read_parquet(results / "tables" / "table1.parquet")
    assert list(t.method) == ["LPS"]
    for label, paper_all in (("CIFAR-10", 92.4), ("CIFAR-100", 54.3), ("ImageNet-100", 84.5)):
        assert t[f"{label} All n"][0] == 1 and 0 <= t[f"{label} All mean"][0] <= 100, label
        assert t[f"{label} All paper"][0] == paper_all, label  # the paper's Table 1 value beside it
    assert (results / "tables" / "table1.md").exists() and (results / "tables" / "table1.csv").exists()
    runs = pd.read_parquet(results / "runs.parquet")
    assert len(runs) == 3 and set(runs.dataset) == {"cifar10", "cifar100", "imagenet100"}
    manifests = {d: json.loads((results / "data" / f"{d}.json").read_text()) for d in set(runs.dataset)}
    assert manifests["imagenet100"]["num_classes"] == 100 and manifests["cifar100"]["n_train"] == 200


@pytest.mark.slow
def test_paper_set_missing_data_fails_before_any_job(tmp_path):
    empty = tmp_path / "no_data"
    empty.mkdir()
    results = tmp_path / "results"
    r = _snakemake(tmp_path, paper_slice(tmp_path), empty, results)
    assert r.returncode != 0
    # snakemake stops at the first failed prepare_data jobs (two run at once here); each says what is
    # missing, where it was looked for, and the fix, and snakemake shows that log
    logs = {p.stem: p.read_text() for p in (results / "logs" / "prepare_data").glob("*.log")}
    assert logs, r.stderr[-3000:]
    for name, text in logs.items():
        assert "Fix:" in text, (name, text)
        if name.startswith("cifar"):
            assert str(empty) in text and ("cifar-10-batches-py" in text or "cifar-100-python" in text), text
        else:
            assert "imagenet_dir" in text, text
    assert "Fix:" in r.stdout + r.stderr
    assert not (results / "pretrain").exists() and not (results / "runs").exists()
