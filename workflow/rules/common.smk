"""Configuration and validation; the run table comes from lps.plan.

Config layers, later wins:
  1. the experiment set, workflow/config/<experiment_set>.yaml (or a path), e.g. `paper`, `demo`;
  2. snakemake's config: the profile's settings file (`configfile:` in profiles/*/config.yaml) and
     `--configfile`/`--config KEY=VALUE`;
  3. LPS_<KEY> environment variables (LPS_LAUNCH_EXECUTOR, LPS_SLURM_PARTITION, ...) for the top-level
     scalar keys of config.schema.yaml, except keys given with `--config` on this command line.
The result is validated against workflow/schemas/config.schema.yaml before the DAG is built, then
lps.plan.plan resolves every cell of every table and figure with lps.config.build_config, which
rejects unknown lps keys and out-of-range hyperparameters by name, and names each run by
lps.identity.run_id: a training job's output is <results>/runs/<run_id>/result.parquet, so two cells
with the same scientific config are one job, and deleting a run's result.parquet reruns it (lps.plan
says why the id, not the cell's coordinates, is the path). Nothing here reads data.
"""

import os
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version, validate

from lps.config import deep_merge
from lps.errors import LPSError
from lps.figures import FIGURES as FIGURE_KINDS
from lps.launch.settings import LaunchSettings
from lps.methods import METHODS
from lps.plan import plan, run_counts_markdown
from lps.status import write_manifest

min_version("9.0")

SET_DIR = Path(workflow.basedir) / "workflow" / "config"
# top-level keys an LPS_<KEY> environment variable may set (the profile's launch and site settings)
ENV_KEYS = (
    "experiment_set", "results_dir", "report_html", "launch_executor", "launch_time_min", "local_threads",
    "slurm_partition", "slurm_account", "slurm_gpus", "slurm_cpus", "slurm_mem_gb", "slurm_max_timeouts",
    "slurm_sbatch", "data_dir", "imagenet_dir", "num_workers",
)
FIGURE_NAMES = tuple(FIGURE_KINDS)


# ----------------------------------------------------------------------------------------------
# 1. config: set file <- snakemake config <- environment, then the JSON schema


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
    merged = deep_merge(deep_merge(set_config, dict(snakemake_config)), env)
    merged["experiment_set"] = str(path)
    if isinstance(merged.get("partial"), str):  # `--config partial=true` passes a string
        merged["partial"] = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
            merged["partial"].lower(), merged["partial"])
    for key, value in LaunchSettings.workflow_defaults().items():  # the launcher's defaults, written once
        if merged.get(key) is None:
            merged[key] = value
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
# partial=true: tables, figures and report from the finished runs only, under <results>/partial/ (the
# full target still needs every run); its rules declare no run as input, so it builds beside a running
# workflow without competing for Snakemake's lock (`snakemake --config partial=true --nolock` is not needed)
PARTIAL = bool(CONFIG.get("partial"))
AGG = f"{RESULTS}/partial" if PARTIAL else RESULTS
if PARTIAL and CONFIG.get("report_html"):
    CONFIG["report_html"] = f"{AGG}/{Path(CONFIG['report_html']).name}"
    config["report_html"] = CONFIG["report_html"]
SEEDS = CONFIG["seeds"]
EXECUTOR = CONFIG["launch_executor"]


def refuse_nested_executor():
    """launch_executor=slurm submits every run itself (lps.launch): a Snakemake executor that also
    submits jobs (--executor slurm, often from a global profile) would wrap each launcher in a job."""
    from lps.launch.cli import NESTED_HELP, nested_allowed

    if EXECUTOR == "slurm" and not workflow.local_exec and not workflow.dryrun and not nested_allowed():
        where = "under a Snakemake executor that submits every rule as a job"
        text = NESTED_HELP.format(who="this workflow", where=where)
        raise WorkflowError(f"lps: {text}")


onstart:
    refuse_nested_executor()


# ----------------------------------------------------------------------------------------------
# 2. the plan (lps.plan): cells -> lps arguments -> run ids

try:
    PLAN = plan(CONFIG)
except LPSError as e:
    raise WorkflowError(str(e))
RUNS = PLAN.runs  # run_id -> {"args", "method", "dataset", "seed", "pretrain", "registered"}
PRETRAIN = PLAN.pretrain  # pretrain id -> {"args", "dataset"}
STUDY_CELLS = PLAN.study_cells  # table or figure name -> list of cell dicts (one per seed)
TABLE_SPECS = PLAN.tables
FIGURES = PLAN.figures
UNREGISTERED = PLAN.unregistered
if not PARTIAL:
    write_manifest(PLAN, RESULTS)  # what `lps status` / `lps plan RESULTS` read (lps.status)
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
    """The result files a table or figure reads: all of its runs; with partial=true the finished ones."""
    files = sorted({run_result(c["run_id"]) for c in STUDY_CELLS[study]})
    return [f for f in files if os.path.exists(f)] if PARTIAL else files


def all_results():
    files = sorted(run_result(r) for r in RUNS)
    return [f for f in files if os.path.exists(f)] if PARTIAL else files


def needs(files):
    """A rule's inputs: ``files``, or none with partial=true (the finished runs are then a parameter,
    a rerun trigger: a table rebuilds when another run has finished)."""
    return [] if PARTIAL else files


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


def report_targets():
    """Everything the HTML report shows (and the files whose change makes it stale)."""
    out = [f"{AGG}/run_counts.md", f"{AGG}/convergence.md", f"{AGG}/spent.md"]
    out += [f"{AGG}/tables/{t}.{ext}" for t in TABLE_SPECS for ext in ("parquet", "csv", "md")]
    for name in FIGURE_NAMES:
        if FIGURES.get(name):
            out += [f"{AGG}/figures/{name}.png", f"{AGG}/figures/{name}.pdf"]
    return out


def all_targets():
    """Every run's result.parquet is a target itself: snakemake ignores a deleted intermediate file whose
    consumers are up to date (snakemake/snakemake#1978), so without this, deleting a run's result
    would not rerun it. With it, that run reruns, and the tables, figures and collections that read it
    follow by modification time."""
    collected = [f"{AGG}/runs.parquet", f"{AGG}/epochs.parquet"]
    if PARTIAL:
        return [*collected, *report_targets()]
    return [*all_results(), *collected, *report_targets()]

