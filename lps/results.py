"""The fixed one-row schema of ``result.parquet`` and its atomic writer.

Columns (types are enforced by ``RESULT_SCHEMA``):

==================  ========  ===========================================================
run_id              string    hash-derived id of the resolved config (``lps.identity.run_id``)
method              string    registry name (``lps``, ``orca``, ...)
dataset             string    ``fashion_mnist``, ``cifar10``, ``cifar100``, ``imagenet100``
seen_class_ratio    float64   fraction of classes that are seen
label_ratio         float64   fraction of seen-class images that are labeled
n_seen              int64     number of seen classes
freeze              string    ``layer4`` (only layer4 + head train) or ``none``
seed                int64     training seed
split_seed          int64     seed of the labeled/unlabeled split
overrides           string    JSON of the method hyperparameters that differ from defaults
acc_seen .. nmi_novel float64 metrics on the unlabeled training images (paper protocol), in [0, 1]
test_acc_seen ..    float64   the same on the held-out test split (NaN when there is none)
epochs              int64     epochs trained
wall_time_s         float64   wall time over all invocations of the run
device              string    device description
git_commit          string    code version ("-dirty" if the tree had changes)
library_versions    string    JSON {package: version}
config              string    JSON of the full resolved config
==================  ========  ===========================================================
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lps.utils import atomic_write

METRICS = ("acc_seen", "acc_novel", "acc_all", "nmi_novel")

RESULT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("method", pa.string()),
        ("dataset", pa.string()),
        ("seen_class_ratio", pa.float64()),
        ("label_ratio", pa.float64()),
        ("n_seen", pa.int64()),
        ("freeze", pa.string()),
        ("seed", pa.int64()),
        ("split_seed", pa.int64()),
        ("overrides", pa.string()),
        *[(m, pa.float64()) for m in METRICS],
        *[(f"test_{m}", pa.float64()) for m in METRICS],
        ("epochs", pa.int64()),
        ("wall_time_s", pa.float64()),
        ("device", pa.string()),
        ("git_commit", pa.string()),
        ("library_versions", pa.string()),
        ("config", pa.string()),
    ]
)


def method_overrides(cfg) -> dict:
    """Method hyperparameters that differ from the defaults of the method's ``Params`` dataclass."""
    params = cfg.method.params
    defaults = dataclasses.asdict(type(params)())
    return {k: v for k, v in dataclasses.asdict(params).items() if defaults.get(k) != v}


def make_result_row(cfg, rid: str, metrics: dict, wall_time_s: float, device: str, git: str, libs: dict,
                    n_seen: int) -> dict:
    from lps.config import to_dict

    def metric(k: str) -> float:
        v = metrics.get(k, math.nan)
        return math.nan if v is None else float(v)

    return {
        "run_id": rid, "method": cfg.method_name, "dataset": cfg.data.dataset,
        "seen_class_ratio": float(cfg.data.seen_class_ratio), "label_ratio": float(cfg.data.label_ratio),
        "n_seen": int(n_seen), "freeze": cfg.model.freeze, "seed": int(cfg.train.seed),
        "split_seed": int(cfg.data.split_seed), "overrides": json.dumps(method_overrides(cfg), sort_keys=True),
        **{m: metric(m) for m in METRICS}, **{f"test_{m}": metric(f"test_{m}") for m in METRICS},
        "epochs": int(cfg.optim.epochs), "wall_time_s": float(wall_time_s), "device": device, "git_commit": git,
        "library_versions": json.dumps(libs, sort_keys=True), "config": json.dumps(to_dict(cfg), sort_keys=True),
    }


def write_result(row: dict, path: str | Path) -> None:
    table = pa.Table.from_pylist([row], schema=RESULT_SCHEMA)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_result_table(path) -> pa.Table:
    """One run's result file; a damaged one is an LPSError saying how to recover."""
    from lps.errors import LPSError

    try:
        return pq.read_table(path, schema=RESULT_SCHEMA)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise LPSError(f"{path} cannot be read ({type(e).__name__}: {str(e)[:160]}); delete it and rerun the "
                       "run: it is rewritten from the run's last checkpoint without training again") from None


def read_result_row(path) -> dict:
    return read_result_table(path).to_pandas().iloc[0].to_dict()


def read_results(paths) -> pd.DataFrame:
    """Concatenate result files into one tidy frame with the fixed schema."""
    tables = [read_result_table(p) for p in paths]
    if not tables:
        return RESULT_SCHEMA.empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()
