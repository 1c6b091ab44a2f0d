"""Configuration, validation and the run table.

Config layers, later wins:
  1. the experiment set, workflow/config/<experiment_set>.yaml (or a path), e.g. `paper`, `demo`;
  2. snakemake's config: the profile's settings file (`configfile:` in profiles/*/config.yaml) and
     `--configfile`/`--config KEY=VALUE`;
  3. LPS_<KEY> environment variables (LPS_LAUNCH_EXECUTOR, LPS_SLURM_PARTITION, ...) for the top-level
     scalar keys of config.schema.yaml, except keys given with `--config` on this command line.
The result is validated against workflow/schemas/config.schema.yaml before the DAG is built, then
every cell of every table and figure is resolved with lps.config.build_config, which rejects unknown
lps keys and out-of-range hyperparameters by name. Nothing here reads data.

Run identity. A training job's output is <results>/runs/<run_id>/result.parquet with
run_id = lps.identity.run_id(resolved config) (`<method>-<dataset>-seed<seed>-<hash of the scientific
config>`), exactly the folder lps.trainer writes. The cell's other coordinates (seen_class_ratio,
label_ratio, freeze, overrides) live in the run table below, not in the path: two cells that resolve
to the same scientific config (the LPS default point of Tables 1, 2, 4-8, `eta1: 1.0` written out, a
variant equal to a method default) get the same path and are trained once, whatever way the config
spells them, and deleting <run_id>/result.parquet is what makes snakemake rerun that run. Canonical
override strings as wildcards would need their own normalisation rules (defaults, 1 vs 1.0, key order)
and a second name for every run folder.
"""

import copy
import json
import math
import os
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version, validate

from lps.config import Config, build_config, from_dict, overrides_to_dict, validate_config
from lps.errors import LPSError
from lps.methods import METHODS
from lps.identity import pretrain_dir, run_id as lps_run_id

min_version("9.0")

SET_DIR = Path(workflow.basedir) / "workflow" / "config"
# top-level keys an LPS_<KEY> environment variable may set (the profile's launch and site settings)
ENV_KEYS = (
    "experiment_set", "results_dir", "report_html", "launch_executor", "launch_time_min", "local_threads",
    "slurm_partition", "slurm_account", "slurm_gpus", "slurm_cpus", "slurm_mem_gb", "slurm_max_timeouts",
    "slurm_sbatch", "data_dir", "imagenet_dir", "num_workers",
)
FACTORS = ("method", "dataset", "seen_class_ratio", "label_ratio", "freeze")
FIGURE_NAMES = ("fig2", "fig4", "fig5", "fig6")


# ----------------------------------------------------------------------------------------------
# 1. config: set file <- snakemake config <- environment, then the JSON schema


def _deep_merge(base, extra):
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_file(name):
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    known = ", ".join(sorted(p.stem for p in SET_DIR.glob("*.yaml")))
    path = SET_DIR / f"{name}.yaml"
    if not path.exists():
        raise WorkflowError(f"experiment_set={name!r}: no such set ({known}) or file")
    return path


def load_config(snakemake_config):
    cmdline = dict(getattr(workflow.config_settings, "config", None) or {})
    env = {k: os.environ[f"LPS_{k.upper()}"] for k in ENV_KEYS
           if f"LPS_{k.upper()}" in os.environ and k not in cmdline}
    env = {k: (v if k in ("slurm_partition", "slurm_account", "data_dir", "imagenet_dir")
               else yaml.safe_load(v)) for k, v in env.items()}
    name = env.get("experiment_set") or snakemake_config.get("experiment_set") or "demo"
    path = _set_file(name)
    try:
        set_config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise WorkflowError(f"experiment set {path}: {e}")
    merged = _deep_merge(_deep_merge(set_config, dict(snakemake_config)), env)
    merged["experiment_set"] = str(path)
    try:
        validate(merged, "../schemas/config.schema.yaml")
    except WorkflowError as e:  # say where, in one line, instead of printing the schema
        err = e.__context__  # the jsonschema ValidationError
        if not hasattr(err, "absolute_path"):
            raise
        where = ".".join(map(str, err.absolute_path)) or "(top level)"
        raise WorkflowError(f"invalid config (experiment set {path} + profile/--config/LPS_* settings) "
                            f"at `{where}`: {err.message}") from None
    return merged


CONFIG = load_config(config)
config.clear()
config.update(CONFIG)  # scripts see the merged, validated config as snakemake.config
RESULTS = str(Path(CONFIG["results_dir"]))  # normalised: no trailing separator
SEEDS = CONFIG["seeds"]
EXECUTOR = CONFIG["launch_executor"]


# ----------------------------------------------------------------------------------------------
# 2. cells -> lps arguments -> run ids


def _raw(value):
    """A YAML scalar/list as `key=value` text that lps.config.parse_override reads back unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and (value == "" or yaml.safe_load(value) == value):
        return value
    # YAML's own spelling: 5.0e-05, not JSON's 5e-05 (which YAML 1.1 reads as a string)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


def _base_settings():
    """The set's `base_config` (an lps config file) as flat `key: value` settings."""
    name = CONFIG.get("base_config")
    if not name:
        return {}
    from lps.config import load_yaml

    try:
        return _flat(load_yaml(name))
    except LPSError as e:
        raise WorkflowError(f"experiment set {CONFIG['experiment_set']}: base_config: {e}")


BASE_SETTINGS = _base_settings()


def cell_args(method, dataset, seen_class_ratio, label_ratio, freeze, seed, variant_overrides):
    """The lps `key=value` list of one run: base_config <- defaults <- dataset <- method <- method x
    dataset <- the cell's coordinates <- the variant. Sorted, so equal settings give equal lists."""
    m = CONFIG["methods"][method]
    settings = {}
    for layer in (BASE_SETTINGS, CONFIG.get("defaults", {}), CONFIG["datasets"][dataset].get("overrides", {}),
                  m.get("overrides", {}), m.get("dataset_overrides", {}).get(dataset, {})):
        settings.update(layer)
    settings.update({"method.name": method, "data.dataset": dataset, "data.seen_class_ratio": seen_class_ratio,
                     "data.label_ratio": label_ratio, "model.freeze": freeze, "train.seed": seed})
    settings.update(variant_overrides)
    return [f"{k}={_raw(v)}" for k, v in sorted(settings.items())]


_RESOLVED = {}


def resolve(args, where):
    """(run_id, pretrain id or None, cfg) of an lps argument list; LPSError -> WorkflowError naming `where`."""
    key = tuple(args)
    if key not in _RESOLVED:
        try:
            name = overrides_to_dict(list(args))["method"]["name"]
            if name in METHODS:
                cfg = build_config([], list(args))
            else:  # not implemented yet: plan with the given keys only (see UNREGISTERED)
                data = overrides_to_dict(list(args))
                cfg = from_dict(Config, data)
                validate_config(cfg)
        except LPSError as e:
            raise WorkflowError(f"{where}: {e}")
        pretrain = None if cfg.model.init else pretrain_dir(cfg).name
        _RESOLVED[key] = (lps_run_id(cfg), pretrain, cfg)
    return _RESOLVED[key]


def _check_names(kind, names, where):
    declared = CONFIG["methods"] if kind == "method" else CONFIG["datasets"]
    for n in names:
        if n not in declared:
            raise WorkflowError(f"{where}: {kind} {n!r} is not declared under `{kind}s:` "
                                f"(declared: {', '.join(declared)})")


def _variants(spec, where):
    out = [(name, dict(o or {})) for name, o in (spec.get("variants") or {}).items()]
    for sw in spec.get("sweeps") or []:
        label = sw.get("label") or sw["key"].split(".")[-1] + "={}"
        out += [(label.replace("{}", str(v)), {sw["key"]: v}) for v in sw["values"]]
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise WorkflowError(f"{where}: variant names must be unique, repeated: {dup}")
    return out or [("", {})]


RUNS = {}  # run_id -> {"args", "method", "dataset", "seed", "pretrain", "registered"}
PRETRAIN = {}  # pretrain id -> {"args", "dataset"}
STUDY_CELLS = {}  # table or figure name -> list of cell dicts (one per seed)


def add_cell(study, method, dataset, seen, label, freeze, seed, variant, overrides, where):
    args = cell_args(method, dataset, seen, label, freeze, seed, overrides)
    rid, pre, _ = resolve(args, f"{where} ({method}, {dataset}, variant {variant or 'default'!r})")
    RUNS.setdefault(rid, {"args": args, "method": method, "dataset": dataset, "seed": seed, "pretrain": pre,
                          "registered": method in METHODS})
    if pre:
        PRETRAIN.setdefault(pre, {"args": args, "dataset": dataset})
    ds = CONFIG["datasets"][dataset]
    STUDY_CELLS.setdefault(study, []).append({
        "run_id": rid, "method": method, "method_label": CONFIG["methods"][method].get("label", method),
        "variant": variant, "overrides": ",".join(f"{k}={_raw(v)}" for k, v in overrides.items()),
        "dataset": dataset, "dataset_label": ds.get("label", dataset),
        "paper_dataset": ds.get("paper_dataset", dataset), "seen_class_ratio": float(seen),
        "label_ratio": float(label), "freeze": freeze, "seed": int(seed),
    })


def _grid_cells(spec, where):
    grids = spec["grid"] if isinstance(spec["grid"], list) else [spec["grid"]]
    for i, g in enumerate(grids):
        gw = f"{where}.grid" + (f"[{i}]" if len(grids) > 1 else "")
        methods = g.get("method", ["lps"])
        datasets = g.get("dataset", list(CONFIG["datasets"]))
        _check_names("method", methods, f"{gw}.method")
        _check_names("dataset", datasets, f"{gw}.dataset")
        for m in methods:
            for d in datasets:
                for s in g.get("seen_class_ratio", [0.5]):
                    for lr in g.get("label_ratio", [0.5]):
                        for fz in g.get("freeze", ["layer4"]):
                            yield m, d, s, lr, fz


TABLE_SPECS = {}
for _name, _spec in (CONFIG.get("tables") or {}).items():
    _where = f"tables.{_name}"
    _seeds = _spec.get("seeds", SEEDS)
    _vars = _variants(_spec, _where)
    for _m, _d, _s, _lr, _fz in _grid_cells(_spec, _where):
        for _vname, _vo in _vars:
            for _seed in _seeds:
                add_cell(_name, _m, _d, _s, _lr, _fz, _seed, _vname, _vo, _where)
    TABLE_SPECS[_name] = {"name": _name, "title": _spec.get("title", _name), "paper_table": _spec.get("paper_table"),
                          "rows": _spec["rows"], "metrics": _spec["metrics"], "seeds": list(_seeds),
                          "experiment_set": Path(CONFIG["experiment_set"]).stem}

FIGURES = CONFIG.get("figures") or {}
for _name in FIGURE_NAMES:
    _spec = FIGURES.get(_name)
    if not _spec:
        continue
    _where = f"figures.{_name}"
    _check_names("method", _spec["methods"], f"{_where}.methods")
    _check_names("dataset", [_spec["dataset"]], f"{_where}.dataset")
    _seeds = _spec.get("seeds", SEEDS[:1] if _name == "fig5" else SEEDS)
    if _name == "fig6":  # (a)/(b): seen-class ratio sweep, (c)/(d): label-ratio sweep
        _points = [(s, _spec["label_ratio_fixed"], "novel_classes") for s in _spec["seen_class_ratio"]]
        _points += [(_spec["seen_class_ratio_fixed"], lr, "label_ratio") for lr in _spec["label_ratio"]]
        for _m in _spec["methods"]:
            for _s, _lr, _sweep in _points:
                for _seed in _seeds:
                    add_cell(_name, _m, _spec["dataset"], _s, _lr, "layer4", _seed, _sweep, {}, _where)
    else:
        for _m in _spec["methods"]:
            for _seed in _seeds:
                add_cell(_name, _m, _spec["dataset"], _spec["seen_class_ratio"], _spec["label_ratio"],
                         _spec["freeze"], _seed, "", {}, _where)

if not RUNS:
    raise WorkflowError(f"experiment set {CONFIG['experiment_set']}: no tables or figures, nothing to run")

UNREGISTERED = sorted({r["method"] for r in RUNS.values() if not r["registered"]})
if UNREGISTERED:
    logger.warning(
        f"lps: methods {UNREGISTERED} are declared in the experiment set but not registered in "
        f"lps.methods (registered: {', '.join(METHODS.names())}). Their "
        f"{sum(not r['registered'] for r in RUNS.values())} runs are planned with their given settings only "
        "(their run ids will change once the method exists, filling in its defaults) and fail if run.")


# ----------------------------------------------------------------------------------------------
# 3. paths and input functions used by the rules


def run_result(rid):
    return f"{RESULTS}/runs/{rid}/result.parquet"


def pretrain_backbone(pid):
    return f"{RESULTS}/pretrain/{pid}/backbone.pt"


def data_manifest(dataset):
    return f"{RESULTS}/data/{dataset}.json"


def _run(wildcards):
    try:
        return RUNS[wildcards.run_id]
    except KeyError:
        raise WorkflowError(f"run {wildcards.run_id} is not part of experiment set {CONFIG['experiment_set']}")


def train_inputs(wildcards):
    """The dataset manifest and the SimCLR backbone, as ancient(): their modification time does not make
    a finished run outdated (a run's identity already includes its pretraining config), so recreating a
    deleted backbone for a new run does not retrain every existing one."""
    r = _run(wildcards)
    inputs = {"data": ancient(data_manifest(r["dataset"]))}
    if r["pretrain"]:
        inputs["backbone"] = ancient(pretrain_backbone(r["pretrain"]))
    return inputs


def study_results(study):
    return sorted({run_result(c["run_id"]) for c in STUDY_CELLS[study]})


def all_results():
    return sorted(run_result(r) for r in RUNS)


def launch_resources(kind):
    """The launcher's settings as resources: not a rerun trigger (params are), shown by the dry run,
    and settable with --set-resources, e.g. `--set-resources train:slurm_gpus=2`."""
    return {
        "launch_executor": EXECUTOR,
        "launch_time_min": CONFIG["launch_time_min"],
        "slurm_partition": CONFIG["slurm_partition"] or "",
        "slurm_account": CONFIG["slurm_account"] or "",
        "slurm_gpus": CONFIG["slurm_gpus"],
        "slurm_cpus": CONFIG["slurm_cpus"],
        "slurm_mem_gb": CONFIG["slurm_mem_gb"],
        "slurm_max_timeouts": CONFIG["slurm_max_timeouts"],
    }


# a SLURM job's waiter needs one core here; local training runs use local_threads, and the (single,
# blocking) local pretraining of a dataset every core snakemake may use (it caps threads at --cores)
LAUNCH_THREADS = 1 if EXECUTOR == "slurm" else CONFIG["local_threads"]
PRETRAIN_THREADS = 1 if EXECUTOR == "slurm" else max(CONFIG["local_threads"], os.cpu_count() or 1)


def run_counts_markdown():
    """Per study: cells x seeds, the unique runs among them, and how many of those the studies above it
    do not already train; then the deduplicated total and the jobs of a full dry run."""
    seen = set()
    name = Path(CONFIG["experiment_set"]).stem
    lines = [f"# Run counts: experiment set `{name}`", "",
             "Runs are identified by `lps.identity.run_id` (a hash of the resolved scientific config), so a "
             "cell shared by several tables or figures is trained once. `unique runs` counts a study's distinct "
             "runs (Table 5's eta1=1.0 and eta2=1.0 are one point), `new` those that no study above it "
             "already trains.", "",
             "| study | cells | seeds | cells x seeds | unique runs | new |", "|---|---:|---:|---:|---:|---:|"]
    for study, cells in STUDY_CELLS.items():
        ids = {c["run_id"] for c in cells}
        n_cells = len({(c["method"], c["dataset"], c["seen_class_ratio"], c["label_ratio"], c["freeze"],
                        c["variant"]) for c in cells})
        n_seeds = len({c["seed"] for c in cells})
        lines.append(f"| {study} | {n_cells} | {n_seeds} | {len(cells)} | {len(ids)} | {len(ids - seen)} |")
        seen |= ids
    by_dataset = {}
    for r in RUNS.values():
        by_dataset[r["dataset"]] = by_dataset.get(r["dataset"], 0) + 1
    n_data = len({r["dataset"] for r in RUNS.values()})
    n_fig = sum(bool(FIGURES.get(f)) for f in FIGURE_NAMES)
    jobs = {"prepare_data": n_data, "pretrain": len(PRETRAIN), "train": len(RUNS), "collect": 1, "run_counts": 1,
            "table": len(TABLE_SPECS), "figure": n_fig, "convergence": 1, "all": 1}
    lines += ["", f"Unique training runs: **{len(RUNS)}** "
              f"({', '.join(f'{d}: {n}' for d, n in by_dataset.items())}); "
              f"SimCLR pretraining jobs: **{len(PRETRAIN)}**; data preparation jobs: **{n_data}**.", "",
              f"Jobs of a dry run from scratch (`snakemake -n`, experiment set `{name}`): "
              + ", ".join(f"{k} {v}" for k, v in jobs.items()) + f"; total **{sum(jobs.values())}**.", ""]
    return "\n".join(lines)


FIGURE_CAPTIONS = {
    "fig2": "Fig. 2: (a) accuracy gap between seen and novel classes and (b) overall accuracy over training "
            "epochs (mean over seeds, band = ± std), on the unlabeled training images.",
    "fig4": "Fig. 4: (a) KL divergence between the estimated class distribution (mean softmax on the unlabeled "
            "images) and the true one over epochs; (b) the estimated distribution after the last epoch, with "
            "the expected true distribution of the unlabeled set.",
    "fig5": "Fig. 5: t-SNE of the backbone features of unlabeled training images after training (one seed), "
            "coloured by true class; circles = seen classes, crosses = novel classes.",
    "fig6": "Fig. 6: novel and overall accuracy (a, b) against the number of novel classes and (c, d) against "
            "the labeled ratio of seen classes (mean ± std over seeds).",
}


def report_targets():
    """Everything the HTML report shows (and the files whose change makes it stale)."""
    out = [f"{RESULTS}/run_counts.md", f"{RESULTS}/convergence.md"]
    out += [f"{RESULTS}/tables/{t}.{ext}" for t in TABLE_SPECS for ext in ("parquet", "csv", "md")]
    for name in FIGURE_NAMES:
        if FIGURES.get(name):
            out += [f"{RESULTS}/figures/{name}.png", f"{RESULTS}/figures/{name}.pdf"]
    return out


def all_targets():
    """Every run's result.parquet is a target itself: snakemake ignores a deleted intermediate file whose
    consumers are up to date (snakemake/snakemake#1978), so without this, deleting a run's result
    would not rerun it. With it, that run reruns, and the tables, figures and collections that read it
    follow by modification time."""
    return [*all_results(), f"{RESULTS}/runs.parquet", f"{RESULTS}/epochs.parquet", *report_targets()]

