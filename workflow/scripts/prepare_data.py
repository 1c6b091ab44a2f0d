"""Load one dataset (the loader downloads CIFAR when it can, checks an ImageNet folder) and write a small
manifest: sizes, classes, per-class counts. Fails with the loader's message (what is missing, how to fix it)."""

import json
import sys
from pathlib import Path

sm = snakemake  # noqa: F821  (injected by snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # messages and tracebacks go to the rule's log

import numpy as np  # noqa: E402


from lps.config import build_config  # noqa: E402
from lps.data.datasets import load_dataset  # noqa: E402
from lps.errors import LPSError  # noqa: E402

cfg = sm.config
dataset = sm.wildcards.dataset
overrides = [f"data.dataset={dataset}", f"data.num_workers={cfg['num_workers']}"]
if cfg.get("data_dir"):
    overrides.append(f"data.data_dir={Path(cfg['data_dir']).absolute()}")
if cfg.get("imagenet_dir"):
    overrides.append(f"data.imagenet_dir={Path(cfg['imagenet_dir']).absolute()}")
try:
    data = load_dataset(build_config([], overrides).data)
except LPSError as e:
    print(f"prepare_data {dataset}: {e}")
    sys.exit(1)
manifest = {
    "dataset": dataset, "num_classes": data.num_classes, "channels": data.channels,
    "image_size": data.image_size, "n_train": int(len(data.train_y)), "n_test": int(len(data.test_y)),
    "train_per_class": np.bincount(data.train_y, minlength=data.num_classes).tolist(),
    "class_names": list(data.class_names),
}
Path(sm.output[0]).write_text(json.dumps(manifest, indent=1) + "\n")
print(f"{dataset}: {manifest['n_train']} training and {manifest['n_test']} test images, {data.num_classes} classes")
