"""The Snakemake workflow: lint, config validation before any job, the paper set's dry run, adding an
ablation, and a tiny end-to-end run (nothing to do on a second run; deleting one run's result reruns
that run and what depends on it only).

Every snakemake call runs in a temporary working directory (``-d``), so the repository's own
``results/`` and ``.snakemake/`` are never touched.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import needs_fmnist

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"

# the paper set (workflow/RUN_COUNTS.md): Tables 1-9 + Fig. 6, 3 seeds, deduplicated by run id
PAPER_JOBS = {"prepare_data": 3, "pretrain": 3, "train": 432, "collect": 1, "run_counts": 1, "table": 9,
              "figure": 4, "convergence": 1, "spent": 1, "all": 1}


def snakemake(workdir: Path, *args: str, profile: str | None = "local", timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir)]
    if profile:
        cmd += ["--profile", str(REPO / "profiles" / profile)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a (dry) run."""
    block = output.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    counts.pop("total", None)
    return counts


def planned_outputs(output: str, rule: str) -> set[str]:
    """Outputs of the jobs of ``rule`` listed by a dry run."""
    out = set()
    for block in output.split("\nrule ")[1:]:
        if block.startswith(f"{rule}:"):
            m = re.search(r"^\s+output: (.+)$", block, re.M)
            out.update(s.strip() for s in m.group(1).split(","))
    return out


def write_set(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_set(name: str) -> dict:
    return yaml.safe_load((REPO / "workflow" / "config" / f"{name}.yaml").read_text())


# ------------------------------------------------------------------------------------------------


def test_lint(tmp_path):
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(tmp_path), "--lint"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Lints for" not in r.stdout + r.stderr
    assert "Congratulations" in r.stdout + r.stderr


@pytest.mark.parametrize("mutate, named", [
    (lambda s: s.update(sedes=[0, 1]), "sedes"),  # top level, schema
    (lambda s: s["tables"]["table4"].update(varients={}), "varients"),  # nested, schema
    (lambda s: s["tables"]["table4"]["variants"].update(bad={"method.margin_c": 0}), "method.margin_c"),  # lps key
    (lambda s: s["tables"]["table1"]["grid"].update(method=["lps", "lsp"]), "lsp"),  # undeclared method
])
def test_wrong_field_is_rejected_before_any_job(tmp_path, mutate, named):
    data = load_set("demo")
    mutate(data)
    bad = write_set(tmp_path / "bad.yaml", data)
    r = snakemake(tmp_path, "--config", f"experiment_set={bad}")  # a real run, not a dry run
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert named in out, out[-2000:]
    assert not (tmp_path / "results").exists()  # no job started
    assert "rule " not in out


def test_paper_dry_run_counts(tmp_path):
    r = snakemake(tmp_path, "-n", profile="slurm")
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout + r.stderr)
    assert counts == PAPER_JOBS
    # the profile's SLURM settings reach the launcher as resources
    assert "launch_executor=slurm" in r.stdout
    # RUN_COUNTS.md states the same total
    text = (REPO / "workflow" / "RUN_COUNTS.md").read_text()
    assert f"Unique training runs: **{PAPER_JOBS['train']}**" in text
    assert f"SimCLR pretraining jobs: **{PAPER_JOBS['pretrain']}**" in text


def test_added_ablation_is_exactly_the_new_jobs(tmp_path):
    base = load_set("paper")
    r0 = snakemake(tmp_path, "-n", "--config", f"experiment_set={write_set(tmp_path / 'p0.yaml', base)}",
                   profile="slurm")
    assert r0.returncode == 0, r0.stderr[-3000:]
    before = planned_outputs(r0.stdout, "train")
    assert len(before) == PAPER_JOBS["train"]

    # one config entry: a new row of Table 4 (x 2 datasets x 3 seeds = 6 new runs) ...
    base["tables"]["table4"]["variants"]["seen_threshold_0.9"] = {"method.lambda_seen": 0.9}
    # ... and one that only spells out the default point (no new run)
    base["tables"]["table4"]["variants"]["default_spelt_out"] = {"method.margin_C": 10.0, "method.eta1": 1}
    r1 = snakemake(tmp_path, "-n", "--config", f"experiment_set={write_set(tmp_path / 'p1.yaml', base)}",
                   profile="slurm")
    assert r1.returncode == 0, r1.stderr[-3000:]
    after = planned_outputs(r1.stdout, "train")
    new = after - before
    assert before <= after
    assert len(new) == 6
    assert all(re.search(r"/lps-cifar100?-seed[012]-", p) for p in new)
    assert job_counts(r1.stdout)["train"] == PAPER_JOBS["train"] + 6


# ------------------------------------------------------------------------------------------------
# end to end


def tiny_set() -> dict:
    return {
        "seeds": [0, 1],
        "report_html": "results/report.html",
        "defaults": {"data.max_train_per_class": 16, "data.max_test_per_class": 4, "model.width": 4,
                     "optim.epochs": 2, "optim.batch_size": 64, "pretrain.epochs": 1, "pretrain.batch_size": 64},
        "datasets": {"fashion_mnist": {"label": "Fashion-MNIST", "paper_dataset": "cifar10"}},
        "methods": {"simclr_kmeans": {"label": "SimCLR"}, "lps": {"label": "LPS"}},
        "tables": {
            "table1": {"paper_table": 1, "grid": {"method": ["simclr_kmeans", "lps"]}},
            "table4": {"paper_table": 4, "grid": {"method": ["lps"]}, "rows": ["variant"],
                       "variants": {"without_uc": {"method.eta2": 0}, "full": {}}},
        },
        "figures": {
            "fig2": {"methods": ["lps"], "dataset": "fashion_mnist"},
            "fig4": {"methods": ["lps"], "dataset": "fashion_mnist"},
            "fig5": {"methods": ["lps"], "dataset": "fashion_mnist", "max_points": 40},
            "fig6": {"methods": ["lps"], "dataset": "fashion_mnist", "seen_class_ratio": [0.3, 0.5],
                     "label_ratio": [0.5], "seeds": [0]},
        },
    }


@pytest.mark.slow
@needs_fmnist
def test_end_to_end_rerun_and_partial_rerun(tmp_path):
    tiny = write_set(tmp_path / "tiny.yaml", tiny_set())
    cfg = ["--config", f"experiment_set={tiny}", "--cores", "2", "--jobs", "2"]
    r = snakemake(tmp_path, *cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = tmp_path / "results"
    for t in ("table1", "table4"):
        for ext in ("parquet", "csv", "md"):
            assert (res / "tables" / f"{t}.{ext}").stat().st_size > 0
    for f in ("fig2", "fig4", "fig5", "fig6"):
        assert (res / "figures" / f"{f}.png").stat().st_size > 0
        assert (res / "figures" / f"{f}.pdf").stat().st_size > 0
    assert (res / "report.html").stat().st_size > 0
    md = (res / "tables" / "table1.md").read_text()
    assert "| LPS |" in md and " ± " in md and "(92.4, " in md  # mean ± std (paper CIFAR-10 value, Δ)
    runs = sorted(res.glob("runs/*/result.parquet"))
    # simclr_kmeans x 2 seeds, lps default x 2, without_uc x 2, fig6 at 30% seen x 1 (50% is shared)
    assert len(runs) == 7

    # a second run does nothing
    r = snakemake(tmp_path, "-n", *cfg)
    assert r.returncode == 0
    assert "Nothing to be done" in r.stdout + r.stderr

    # deleting one run's result reruns that run and what depends on it only
    victim = next(p for p in runs if "lps-fashion_mnist-seed1-" in str(p))
    rid = victim.parent.name
    victim.unlink()
    r = snakemake(tmp_path, "-n", *cfg)
    out = r.stdout + r.stderr
    counts = job_counts(out)
    # the default LPS point, seed 1: Table 1 and Table 4 (row "full"), Fig. 2 and Fig. 4
    assert counts == {"train": 1, "collect": 1, "convergence": 1, "spent": 1, "table": 2, "figure": 2, "all": 1}, out[-3000:]
    assert planned_outputs(out, "train") == {f"results/runs/{rid}/result.parquet"}
    assert planned_outputs(out, "figure") == {f"results/figures/{f}.{e}" for f in ("fig2", "fig4")
                                              for e in ("png", "pdf")}
    mtimes = {p: p.stat().st_mtime for p in runs if p != victim}
    time.sleep(1)
    r = snakemake(tmp_path, *cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert victim.exists()
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes  # no other run was touched
    log = (res / "logs" / "train" / f"{rid}.log").read_text()
    assert "resuming from epoch 2" in log  # the checkpoint was kept: only the result was rebuilt
    r = snakemake(tmp_path, "-n", *cfg)
    assert "Nothing to be done" in r.stdout + r.stderr

    # one more ablation entry: its runs (2 seeds), and only what reads them
    data = tiny_set()
    data["tables"]["table4"]["variants"]["without_pc"] = {"method.eta1": 0}
    write_set(tiny, data)
    r = snakemake(tmp_path, "-n", *cfg)
    out = r.stdout + r.stderr
    assert job_counts(out) == {"train": 2, "collect": 1, "convergence": 1, "spent": 1, "table": 1, "run_counts": 1,
                               "all": 1}, \
        out[-3000:]
    assert planned_outputs(out, "table") >= {"results/tables/table4.md"}


def test_demo_set_is_the_first_commands_second_half(tmp_path):
    """The shipped demo set (what `snakemake --profile profiles/local` runs after `lps demo`) has all
    registered methods in Table 1, plans the one SimCLR pretraining `lps demo` writes and contains
    `lps demo`'s two runs, so the first command pretrains once and trains those two once."""
    from lps.config import build_config
    from lps.methods import METHODS
    from lps.identity import pretrain_dir, run_id

    data = load_set("demo")
    assert data["base_config"] == "demo" and not data.get("defaults")
    assert sorted(data["tables"]["table1"]["grid"]["method"]) == sorted(METHODS.names())
    assert {"table1", "table2", "table4", "table7"} <= set(data["tables"])
    assert {"fig2", "fig4", "fig5", "fig6"} <= set(data["figures"])
    r = snakemake(tmp_path, "-n")
    assert r.returncode == 0, r.stderr[-3000:]
    demo = build_config(["demo"], [f"output_dir={tmp_path / 'results' / 'runs'}"])
    pre = planned_outputs(r.stdout, "pretrain")
    assert {Path(p).parent.name for p in pre} == {pretrain_dir(demo).name}
    runs = {Path(p).parent.name for p in planned_outputs(r.stdout, "train")}
    for method in ("simclr_kmeans", "lps"):
        assert run_id(build_config(["demo"], [f"method={method}"])) in runs


def test_base_config_shares_lps_demo_pretraining(tmp_path):
    """A set with `base_config: demo` that keeps its data/model/pretrain keys plans exactly the
    SimCLR pretraining `lps demo` writes (same folder, so the first command pretrains once), and its
    LPS run is `lps demo`'s when the set changes nothing else."""
    from lps.config import build_config
    from lps.identity import pretrain_dir, run_id

    s = {"base_config": "demo", "seeds": [0], "defaults": {},
         "datasets": {"fashion_mnist": {"label": "Fashion-MNIST"}},
         "methods": {"lps": {"label": "LPS"}, "orca": {"label": "ORCA"}},
         "tables": {"t": {"grid": {"method": ["lps", "orca"]}}}}
    r = snakemake(tmp_path, "-n", "--config", f"experiment_set={write_set(tmp_path / 's.yaml', s)}")
    assert r.returncode == 0, r.stderr[-3000:]
    demo = build_config(["demo"], [f"output_dir={tmp_path / 'results' / 'runs'}"])
    pre = planned_outputs(r.stdout, "pretrain")
    assert len(pre) == 1 and Path(next(iter(pre))).parent.name == pretrain_dir(demo).name
    runs = {Path(p).parent.name for p in planned_outputs(r.stdout, "train")}
    assert run_id(build_config(["demo"], ["method=lps"])) in runs and len(runs) == 2
    # a set changing a model key gets its own pretraining
    s["defaults"] = {"model.width": 8}
    r = snakemake(tmp_path, "-n", "--config", f"experiment_set={write_set(tmp_path / 's2.yaml', s)}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert Path(next(iter(planned_outputs(r.stdout, "pretrain")))).parent.name != pretrain_dir(demo).name
    s["base_config"] = "no_such_config"
    r = snakemake(tmp_path, "-n", "--config", f"experiment_set={write_set(tmp_path / 's3.yaml', s)}")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "base_config" in out and "no_such_config" in out, out[-2000:]


@pytest.mark.slow
@needs_fmnist
def test_partial_build_marks_missing_seeds(tmp_path):
    """partial=true builds Table 1, the figures and the report from the finished runs only (a missing
    seed shows as [n=2/3]), under results/partial/, runs nothing, and leaves the full target needing
    every run."""
    import base64

    s = tiny_set()
    s["seeds"] = [0, 1, 2]
    s["methods"] = {"simclr_kmeans": {"label": "SimCLR"}}
    s["tables"] = {"table1": {"paper_table": 1, "grid": {"method": ["simclr_kmeans"]}}}
    s["figures"] = {}
    tiny = write_set(tmp_path / "p.yaml", s)
    cfg = ["--config", f"experiment_set={tiny}", "--cores", "2", "--jobs", "2"]
    r = snakemake(tmp_path, *cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = tmp_path / "results"
    victim = next(res.glob("runs/simclr_kmeans-fashion_mnist-seed2-*/result.parquet"))
    victim.unlink()
    r = snakemake(tmp_path, *cfg[:2], "partial=true", *cfg[2:])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "rule train" not in out and not victim.exists()  # nothing ran
    md = (res / "partial" / "tables" / "table1.md").read_text()
    assert "[n=2/3]" in md, md
    assert "[n=2/3]" not in (res / "tables" / "table1.md").read_text()  # the full tables are untouched
    html = (res / "partial" / "report.html").read_text()
    embedded = [base64.b64decode(m).decode(errors="replace")
                for m in re.findall(r"data:text/[a-z]+;[^,\"']*base64,([A-Za-z0-9+/=]+)", html)]
    assert any("[n=2/3]" in e for e in embedded), "the partial report's Table 1 lacks [n=2/3]"
    # the full target still needs the missing run
    r = snakemake(tmp_path, "-n", *cfg)
    assert job_counts(r.stdout + r.stderr).get("train") == 1, (r.stdout + r.stderr)[-3000:]
    # a second partial build with nothing new does nothing
    r = snakemake(tmp_path, "-n", *cfg[:2], "partial=true", *cfg[2:])
    assert "Nothing to be done" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
