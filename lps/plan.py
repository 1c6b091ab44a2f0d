"""The workflow's planner: an experiment set -> cells -> lps arguments -> run ids, in plain Python.

``workflow/rules/common.smk`` loads and validates the experiment set (Snakemake's config layers and
JSON schema) and calls :func:`plan`; everything else about what runs is here, unit-tested without
Snakemake (``tests/test_plan.py``).

A *cell* is one point of a table or figure for one seed: method, dataset, seen-class ratio, label
ratio, freeze policy, variant (its overrides) and seed. Its lps arguments are the layers
``base_config`` <- ``defaults`` <- dataset <- method <- method x dataset <- the cell's coordinates <-
the variant, as sorted ``key=value`` strings (:func:`cell_args`). Their resolved config names the run
(``lps.identity.run_id``), so two cells that resolve to the same scientific config, however they
spell it (the LPS default point of Tables 1, 2, 4-8, ``eta1: 1.0`` written out, a variant equal to a
method default), are one run, trained once. Canonical override strings as path wildcards would need
their own normalisation rules (defaults, 1 vs 1.0, key order) and a second name for every run folder.

Errors name the place in the experiment set (``tables.table4.grid.method``) and raise
:class:`PlanError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from lps.config import Config, build_config, flatten, from_dict, load_yaml, overrides_to_dict, validate_config
from lps.errors import LPSError
from lps.figures import FIGURES
from lps.identity import pretrain_dir, run_id
from lps.methods import METHODS


class PlanError(LPSError):
    """An experiment set that cannot be planned; the message names where."""


def yaml_scalar(value: Any) -> str:
    """A YAML scalar/list as ``key=value`` text that ``lps.config.parse_override`` reads back unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and (value == "" or yaml.safe_load(value) == value):
        return value
    # YAML's own spelling: 5.0e-05, not JSON's 5e-05 (which YAML 1.1 reads as a string)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def base_settings(set_config: dict) -> dict:
    """The set's ``base_config`` (an lps config file or built-in name) as flat ``key: value`` settings."""
    name = set_config.get("base_config")
    if not name:
        return {}
    try:
        return flatten(load_yaml(name))
    except LPSError as e:
        raise PlanError(f"experiment set {set_config.get('experiment_set', '')}: base_config: {e}") from None


def cell_args(set_config: dict, base: dict, method: str, dataset: str, seen_class_ratio: float,
              label_ratio: float, freeze: str, seed: int, variant_overrides: dict) -> list[str]:
    """The lps ``key=value`` list of one run (layers in the module docstring). Sorted, so equal settings
    give equal lists."""
    m = set_config["methods"][method]
    settings: dict = {}
    for layer in (base, set_config.get("defaults", {}), set_config["datasets"][dataset].get("overrides", {}),
                  m.get("overrides", {}), m.get("dataset_overrides", {}).get(dataset, {})):
        settings.update(layer)
    settings.update({"method.name": method, "data.dataset": dataset, "data.seen_class_ratio": seen_class_ratio,
                     "data.label_ratio": label_ratio, "model.freeze": freeze, "train.seed": seed})
    settings.update(variant_overrides)
    return [f"{k}={yaml_scalar(v)}" for k, v in sorted(settings.items())]


def resolve_args(args: list[str]) -> Config:
    """The config of an lps argument list. A method the registry does not know yet is planned with the
    given keys only (its run id changes once the method exists and fills in its defaults)."""
    name = overrides_to_dict(list(args))["method"]["name"]
    if name in METHODS:
        return build_config([], list(args))
    cfg = from_dict(Config, overrides_to_dict(list(args)))
    validate_config(cfg)
    return cfg


@dataclass
class Plan:
    """Everything the workflow runs and builds, from one experiment set.

    - ``runs``: run id -> ``{"args", "method", "dataset", "seed", "pretrain", "registered"}``;
    - ``pretrain``: pretraining id -> ``{"args", "dataset"}`` (the args of the first run that needs it);
    - ``study_cells``: table or figure name -> its cells (dicts, one per seed), in set order;
    - ``tables``: table name -> its spec for ``lps.tables`` (title, rows, metrics, seeds, ...);
    - ``figures``: figure name -> its spec from the set (only the figures the set asks for).
    """

    set_config: dict
    runs: dict[str, dict] = field(default_factory=dict)
    pretrain: dict[str, dict] = field(default_factory=dict)
    study_cells: dict[str, list[dict]] = field(default_factory=dict)
    tables: dict[str, dict] = field(default_factory=dict)
    figures: dict[str, dict] = field(default_factory=dict)
    _resolved: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return Path(self.set_config.get("experiment_set", "")).stem

    @property
    def unregistered(self) -> list[str]:
        return sorted({r["method"] for r in self.runs.values() if not r["registered"]})

    def resolve(self, args: list[str], where: str) -> tuple[str, str | None, Config]:
        """``(run id, pretraining id or None, config)`` of an lps argument list."""
        key = tuple(args)
        if key not in self._resolved:
            try:
                cfg = resolve_args(args)
            except LPSError as e:
                raise PlanError(f"{where}: {e}") from None
            pre = None if cfg.model.init else pretrain_dir(cfg).name
            self._resolved[key] = (run_id(cfg), pre, cfg)
        return self._resolved[key]

    def add_cell(self, study: str, method: str, dataset: str, seen: float, label: float, freeze: str, seed: int,
                 variant: str, overrides: dict, where: str, base: dict) -> None:
        cfg = self.set_config
        args = cell_args(cfg, base, method, dataset, seen, label, freeze, seed, overrides)
        rid, pre, rcfg = self.resolve(args, f"{where} ({method}, {dataset}, variant {variant or 'default'!r})")
        self.runs.setdefault(rid, {"args": args, "method": method, "dataset": dataset, "seed": seed,
                                   "pretrain": pre, "registered": method in METHODS,
                                   "epochs": rcfg.optim.epochs if method in METHODS and METHODS.get(method).trains
                                   else 0})
        if pre:
            self.pretrain.setdefault(pre, {"args": args, "dataset": dataset, "epochs": rcfg.pretrain.epochs})
        ds = cfg["datasets"][dataset]
        self.study_cells.setdefault(study, []).append({
            "run_id": rid, "method": method, "method_label": cfg["methods"][method].get("label", method),
            "variant": variant, "overrides": ",".join(f"{k}={yaml_scalar(v)}" for k, v in overrides.items()),
            "dataset": dataset, "dataset_label": ds.get("label", dataset),
            "paper_dataset": ds.get("paper_dataset", dataset), "seen_class_ratio": float(seen),
            "label_ratio": float(label), "freeze": freeze, "seed": int(seed),
        })


def check_names(set_config: dict, kind: str, names: list[str], where: str) -> None:
    declared = set_config["methods"] if kind == "method" else set_config["datasets"]
    for n in names:
        if n not in declared:
            raise PlanError(f"{where}: {kind} {n!r} is not declared under `{kind}s:` "
                            f"(declared: {', '.join(declared)})")


def variants(spec: dict, where: str) -> list[tuple[str, dict]]:
    """A table's ``variants`` and ``sweeps`` as ``(name, overrides)``; one unnamed variant if none."""
    out = [(name, dict(o or {})) for name, o in (spec.get("variants") or {}).items()]
    for sw in spec.get("sweeps") or []:
        label = sw.get("label") or sw["key"].split(".")[-1] + "={}"
        out += [(label.replace("{}", str(v)), {sw["key"]: v}) for v in sw["values"]]
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PlanError(f"{where}: variant names must be unique, repeated: {dup}")
    return out or [("", {})]


def grid_cells(set_config: dict, spec: dict, where: str) -> Iterator[tuple[str, str, float, float, str]]:
    """``(method, dataset, seen_class_ratio, label_ratio, freeze)`` of a table's ``grid`` (one or a list)."""
    grids = spec["grid"] if isinstance(spec["grid"], list) else [spec["grid"]]
    for i, g in enumerate(grids):
        gw = f"{where}.grid" + (f"[{i}]" if len(grids) > 1 else "")
        methods = g.get("method", ["lps"])
        datasets = g.get("dataset", list(set_config["datasets"]))
        check_names(set_config, "method", methods, f"{gw}.method")
        check_names(set_config, "dataset", datasets, f"{gw}.dataset")
        for m in methods:
            for d in datasets:
                for s in g.get("seen_class_ratio", [0.5]):
                    for lr in g.get("label_ratio", [0.5]):
                        for fz in g.get("freeze", ["layer4"]):
                            yield m, d, s, lr, fz


def plan(set_config: dict) -> Plan:
    """Plan a validated experiment set (the merged config ``common.smk`` builds: ``seeds``,
    ``methods``, ``datasets``, ``tables``, ``figures``, ``base_config``, ``defaults``)."""
    p = Plan(set_config)
    base = base_settings(set_config)
    seeds = list(set_config["seeds"])
    for name, spec in (set_config.get("tables") or {}).items():
        where = f"tables.{name}"
        table_seeds = spec.get("seeds", seeds)
        table_variants = variants(spec, where)
        for m, d, s, lr, fz in grid_cells(set_config, spec, where):
            for vname, vo in table_variants:
                for seed in table_seeds:
                    p.add_cell(name, m, d, s, lr, fz, seed, vname, vo, where, base)
        p.tables[name] = {"name": name, "title": spec.get("title", name), "paper_table": spec.get("paper_table"),
                          "rows": spec["rows"], "metrics": spec["metrics"], "seeds": list(table_seeds),
                          "experiment_set": p.name}
    for name, kind in FIGURES.items():
        spec = (set_config.get("figures") or {}).get(name)
        if not spec:
            continue
        where = f"figures.{name}"
        check_names(set_config, "method", spec["methods"], f"{where}.methods")
        check_names(set_config, "dataset", [spec["dataset"]], f"{where}.dataset")
        fig_seeds = spec.get("seeds", seeds[:1] if kind.one_seed else seeds)
        for m, s, lr, fz, variant, seed in kind.cells(spec, fig_seeds):
            p.add_cell(name, m, spec["dataset"], s, lr, fz, seed, variant, {}, where, base)
        p.figures[name] = spec
    if not p.runs:
        raise PlanError(f"experiment set {set_config.get('experiment_set', '')}: no tables or figures, nothing to run")
    return p


def dry_run_jobs(p: Plan) -> dict[str, int]:
    """The jobs of a dry run from scratch, per rule (``snakemake -n`` prints the same)."""
    return {"prepare_data": len({r["dataset"] for r in p.runs.values()}), "pretrain": len(p.pretrain),
            "train": len(p.runs), "collect": 1, "run_counts": 1, "table": len(p.tables), "figure": len(p.figures),
            "convergence": 1, "spent": 1, "all": 1}


def run_counts_markdown(p: Plan) -> str:
    """Per study: cells x seeds, the unique runs among them, and how many of those the studies above it
    do not already train; then the deduplicated total and the jobs of a full dry run."""
    seen: set[str] = set()
    lines = [f"# Run counts: experiment set `{p.name}`", "",
             "Runs are identified by `lps.identity.run_id` (a hash of the resolved scientific config), so a "
             "cell shared by several tables or figures is trained once. `unique runs` counts a study's distinct "
             "runs (Table 5's eta1=1.0 and eta2=1.0 are one point), `new` those that no study above it "
             "already trains.", "",
             "| study | cells | seeds | cells x seeds | unique runs | new |", "|---|---:|---:|---:|---:|---:|"]
    for study, cells in p.study_cells.items():
        ids = {c["run_id"] for c in cells}
        n_cells = len({(c["method"], c["dataset"], c["seen_class_ratio"], c["label_ratio"], c["freeze"],
                        c["variant"]) for c in cells})
        n_seeds = len({c["seed"] for c in cells})
        lines.append(f"| {study} | {n_cells} | {n_seeds} | {len(cells)} | {len(ids)} | {len(ids - seen)} |")
        seen |= ids
    by_dataset: dict[str, int] = {}
    for r in p.runs.values():
        by_dataset[r["dataset"]] = by_dataset.get(r["dataset"], 0) + 1
    jobs = dry_run_jobs(p)
    lines += ["", f"Unique training runs: **{len(p.runs)}** "
              f"({', '.join(f'{d}: {n}' for d, n in by_dataset.items())}); "
              f"SimCLR pretraining jobs: **{len(p.pretrain)}**; data preparation jobs: **{jobs['prepare_data']}**.",
              "", f"Jobs of a dry run from scratch (`snakemake -n`, experiment set `{p.name}`): "
              + ", ".join(f"{k} {v}" for k, v in jobs.items()) + f"; total **{sum(jobs.values())}**.", ""]
    return "\n".join(lines)
