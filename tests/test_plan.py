"""The workflow's planner (lps.plan) without Snakemake: cells, layering, run ids, deduplication,
errors that name the place, the figure registry, and the committed run counts."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lps.figures import FIGURES
from lps.identity import run_id
from lps.plan import PlanError, cell_args, dry_run_jobs, plan, yaml_scalar

REPO = Path(__file__).resolve().parents[1]


def load_set(name: str) -> dict:
    """The set with the schema's defaults, as common.smk plans it."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("run_counts", str(REPO / "scripts" / "run-counts"))
    spec = importlib.util.spec_from_loader("run_counts", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod.load_set(name)


@pytest.fixture(scope="module")
def paper():
    return load_set("paper")


@pytest.fixture(scope="module")
def demo():
    return load_set("demo")


def test_paper_set_plans_the_dry_runs_jobs(paper):
    p = plan(paper)
    jobs = dry_run_jobs(p)
    # the same numbers tests/test_workflow.py reads from `snakemake -n --profile profiles/slurm`
    assert jobs == {"prepare_data": 3, "pretrain": 3, "train": 432, "collect": 1, "run_counts": 1, "table": 9,
                    "figure": 4, "convergence": 1, "spent": 1, "all": 1}
    assert {r["dataset"] for r in p.runs.values()} == {"cifar10", "cifar100", "imagenet100"}
    assert p.unregistered == []


def test_cells_that_resolve_to_one_config_are_one_run(paper):
    p = plan(paper)
    t5 = p.study_cells["table5"]
    eta1 = {c["run_id"] for c in t5 if c["variant"] == "eta1=1.0" and c["seed"] == 0}
    eta2 = {c["run_id"] for c in t5 if c["variant"] == "eta2=1.0" and c["seed"] == 0}
    assert len(eta1) == 1 and eta1 == eta2  # both are LPS's default point
    cells = sum(len(c) for c in p.study_cells.values())
    assert cells > len(p.runs)  # shared cells are trained once


def test_layers_later_wins(demo):
    data = copy.deepcopy(demo)
    data["defaults"] = {"optim.epochs": 3, "method.margin_C": 7}
    data["datasets"]["fashion_mnist"]["overrides"] = {"optim.epochs": 4}
    data["methods"]["lps"]["overrides"] = {"method.margin_C": 8}
    args = cell_args(data, {"optim.epochs": 2, "optim.lr": 0.5}, "lps", "fashion_mnist", 0.5, 0.5, "layer4", 1,
                     {"method.margin_C": 9})
    d = dict(a.split("=", 1) for a in args)
    assert d["optim.epochs"] == "4" and d["optim.lr"] == "0.5" and d["method.margin_C"] == "9"
    assert d["train.seed"] == "1" and d["method.name"] == "lps"
    assert args == sorted(args)


@pytest.mark.parametrize("value, text", [(True, "true"), (5e-05, "5.0e-05"), ("", ""), ([0, 1], "[0, 1]"),
                                         ("layer4", "layer4"), ("1", "'1'")])
def test_yaml_scalar_reads_back(value, text):
    assert yaml_scalar(value) == text
    if text:
        assert yaml.safe_load(text) == value


def test_run_ids_come_from_the_resolved_config(demo):
    from lps.config import build_config

    p = plan(demo)
    cell = next(c for c in p.study_cells["table1"] if c["method"] == "lps" and c["seed"] == 0)
    assert cell["run_id"] == run_id(build_config([], p.runs[cell["run_id"]]["args"]))
    # the demo set starts from lps demo's config: its seed-0 LPS run is `lps demo`'s
    assert cell["run_id"] == run_id(build_config(["demo"], ["method=lps"]))


@pytest.mark.parametrize("mutate, named", [
    (lambda s: s["tables"]["table1"]["grid"].update(method=["lps", "lsp"]), "tables.table1.grid.method"),
    (lambda s: s["tables"]["table4"]["variants"].update(bad={"method.margin_c": 0}), "method.margin_c"),
    (lambda s: s["tables"]["table7"].update(sweeps=[{"key": "method.margin_C", "values": [1, 1]}]),
     "variant names must be unique"),
    (lambda s: s["figures"]["fig2"].update(dataset="cifar11"), "figures.fig2.dataset"),
    (lambda s: s.update(tables={}, figures={}), "nothing to run"),
])
def test_errors_name_the_place(demo, mutate, named):
    data = copy.deepcopy(demo)
    mutate(data)
    with pytest.raises(PlanError, match=named.replace(".", r"\.")):
        plan(data)


def test_figure_registry_plans_the_cells(demo):
    p = plan(demo)
    spec = demo["figures"]["fig6"]
    points = len(spec["seen_class_ratio"]) + len(spec["label_ratio"])
    seeds = spec.get("seeds", demo["seeds"])
    assert len(p.study_cells["fig6"]) == len(spec["methods"]) * points * len(seeds)
    assert {c["variant"] for c in p.study_cells["fig6"]} == {"novel_classes", "label_ratio"}
    assert {c["seed"] for c in p.study_cells["fig5"]} == {demo["seeds"][0]}  # one seed unless given
    assert set(p.figures) <= set(FIGURES)
    assert all(kind.caption.startswith(f"Fig. {name[3:]}:") for name, kind in FIGURES.items())


def test_committed_run_counts_are_current():
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "run-counts"), "--check"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
