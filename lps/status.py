"""``lps status [RESULTS]``: where an experiment set's runs stand, per table and figure.

It reads what the results folder holds: the plan the workflow wrote when it built its DAG
(``<results>/plan.json``: every run and pretraining, its epochs and the tables/figures it belongs to),
each run's ``metrics.jsonl`` (epochs done and their times), its ``result.parquet`` (done), the
launcher's job records (``<results>/jobs/<run>.job.json``: SLURM job id, log folder) and the rule logs
(``<results>/logs/train/<run>.log``: a launcher's error message). With SLURM reachable it adds each
recorded job's state with two calls in all: one ``squeue`` for this user's jobs and one ``sacct`` for the
recorded jobs the controller no longer knows. Without SLURM (a laptop with the results folder synced)
the SLURM column is left out. Nothing here imports torch, pandas or pyarrow.

States: ``done`` (output written), ``running``, ``pending``, ``requeued`` (pending again after a
preemption or time limit, or SLURM's REQUEUED), ``failed`` (the job ended without the output, or the
launcher reported an error), ``submitted`` (a job is recorded but SLURM did not say more: no SLURM
here, or the job is gone from both the controller and accounting), ``started`` (epochs written, no job known to be running: interrupted
or a local run), ``waiting`` (nothing yet).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "plan.json"
STATES = ("done", "running", "pending", "requeued", "submitted", "failed", "started", "waiting")
FAILED_SLURM = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED", "REVOKED"}


def manifest_of(plan) -> dict:
    """What ``lps status`` and ``lps plan`` need of a :class:`lps.plan.Plan`, as plain JSON."""
    studies: dict[str, list[str]] = {}
    for study, cells in plan.study_cells.items():
        for c in cells:
            studies.setdefault(c["run_id"], [])
            if study not in studies[c["run_id"]]:
                studies[c["run_id"]].append(study)
    runs = {rid: {"method": r["method"], "dataset": r["dataset"], "seed": r["seed"], "pretrain": r["pretrain"],
                  "epochs": r.get("epochs"), "studies": studies.get(rid, []), "args": r["args"]}
            for rid, r in plan.runs.items()}
    pretrain = {pid: {"dataset": p["dataset"], "epochs": p.get("epochs"), "args": p["args"]}
                for pid, p in plan.pretrain.items()}
    kinds = {s: ("table" if s in plan.tables else "figure") for s in plan.study_cells}
    return {"experiment_set": str(plan.set_config.get("experiment_set", "")), "runs": runs,
            "pretrain": pretrain, "studies": kinds}


def write_manifest(plan, results_dir: str | Path) -> Path:
    """``<results>/plan.json``, rewritten (atomically) only when it changes."""
    path = Path(results_dir) / MANIFEST
    text = json.dumps(manifest_of(plan), indent=1, sort_keys=True)
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


@dataclass
class RunStatus:
    run: str  # run id or pretraining id
    kind: str  # train | pretrain
    method: str
    dataset: str
    studies: list[str]
    epochs: int | None  # planned
    state: str = "waiting"
    epochs_done: int = 0
    elapsed_s: float = 0.0  # summed epoch times
    left_s: float | None = None  # estimate
    job_id: str = ""
    slurm_state: str = ""
    log: str = ""
    detail: str = ""
    epoch_times: list[float] = field(default_factory=list, repr=False)


def _epochs(run_dir: Path) -> list[dict]:
    try:
        text = (run_dir / "metrics.jsonl").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _lock_held(folder: Path) -> bool:
    """A local process holds the run folder's lock (``lps.utils.run_lock``)."""
    import fcntl

    try:
        fh = open(folder / ".lock")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def _launcher_error(log: Path) -> str:
    """The launcher's error line in a rule log (``lps.launch: error: ...``), or ""."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 20000))
            tail = fh.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in tail.splitlines() if "lps.launch: error:" in ln]
    return lines[-1].split("lps.launch: error:", 1)[1].strip() if lines else ""


def read_status(results: str | Path, slurm: bool = True) -> tuple[dict, list[RunStatus], bool]:
    """``(manifest, statuses, slurm_answered)`` of a results folder."""
    results = Path(results)
    try:
        man = json.loads((results / MANIFEST).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{results / MANIFEST} not found: the workflow writes it when it plans a run "
                                f"(`snakemake -n --profile ...` with results_dir={results})") from None
    rows: list[RunStatus] = []
    for pid, p in man["pretrain"].items():
        rows.append(RunStatus(pid, "pretrain", "simclr", p["dataset"], ["pretraining"], p.get("epochs")))
    for rid, r in man["runs"].items():
        rows.append(RunStatus(rid, "train", r["method"], r["dataset"], r["studies"], r.get("epochs")))
    records = {}
    for st in rows:
        folder = results / ("pretrain" if st.kind == "pretrain" else "runs") / st.run
        out = folder / ("backbone.pt" if st.kind == "pretrain" else "result.parquet")
        hist = _epochs(folder)
        st.epoch_times = [float(h.get("epoch_time_s", 0.0)) for h in hist]
        st.epochs_done, st.elapsed_s = len(hist), sum(st.epoch_times)
        st.log = str(results / "logs" / st.kind / f"{st.run}.log")
        rec_file = results / "jobs" / f"{st.run}.job.json"
        rec = None
        if rec_file.exists():
            try:
                rec = json.loads(rec_file.read_text())
            except (OSError, ValueError):
                rec = None
        if rec and rec.get("job_id"):
            st.job_id = str(rec["job_id"])
            st.log = str(Path(rec.get("folder", results / "jobs" / st.run)) / f"{st.job_id}_0_log.err")
            records[st.job_id] = st
        if out.exists():
            st.state, st.epochs_done = "done", st.epochs or st.epochs_done
            continue
        err = _launcher_error(results / "logs" / st.kind / f"{st.run}.log")
        if hist and _lock_held(folder):
            st.state = "running"
        elif st.job_id:
            st.state = "submitted"  # refined from SLURM below; without SLURM its state is unknown
        elif hist:
            st.state = "started"
        if err:
            st.state, st.detail = "failed", err
    answered = False
    if slurm and records:
        from lps.launch.slurm_state import sacct_states, squeue_user_jobs

        live = squeue_user_jobs()
        if live is not None:
            answered = True
            gone = [j for j in records if j not in live]
            ended = sacct_states(gone)
            for job_id, st in records.items():
                s = live.get(job_id) or ended.get(job_id)
                if st.state == "done" or s is None:
                    continue
                st.slurm_state = s.state + (f" ({s.reason})" if s.reason and s.reason not in ("None", "(null)")
                                            else "")
                if s.state in ("RUNNING", "COMPLETING", "CONFIGURING"):
                    st.state = "running"
                elif s.state == "REQUEUED" or (s.state == "PENDING" and s.restarts > 0):
                    st.state, st.detail = "requeued", f"requeued {s.restarts}x" if s.restarts else "requeued"
                elif s.state in ("PENDING", "REQUEUE_HOLD", "SUSPENDED"):
                    st.state = "pending"
                elif s.state in FAILED_SLURM or s.state == "COMPLETED":
                    st.state = "failed"
                    st.detail = st.detail or f"SLURM {s.state}, exit {s.exit_code or '?'}"
    _estimate(rows)
    return man, rows, answered


def _estimate(rows: list[RunStatus]) -> None:
    """Time left of each unfinished run: its epochs left times its own mean epoch time, else the median
    epoch time of the finished runs of its method and dataset, else of its dataset."""
    per: dict[tuple, list[float]] = {}
    for st in rows:
        if st.epoch_times:
            per.setdefault((st.kind, st.method, st.dataset), []).append(statistics.fmean(st.epoch_times))
            per.setdefault((st.kind, st.dataset), []).append(statistics.fmean(st.epoch_times))
    for st in rows:
        if st.state == "done":
            st.left_s = 0.0
            continue
        if st.epochs is None:
            continue
        if st.epoch_times:
            epoch = statistics.fmean(st.epoch_times)
        else:
            known = per.get((st.kind, st.method, st.dataset)) or per.get((st.kind, st.dataset))
            if not known:
                continue
            epoch = statistics.median(known)
        st.left_s = max(0, st.epochs - st.epochs_done) * epoch


def _hours(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


def summarize(rows: list[RunStatus]) -> list[dict]:
    """One row per table / figure (and pretraining): counts per state, hours spent and left."""
    groups: dict[str, list[RunStatus]] = {}
    for st in rows:
        for s in st.studies:
            groups.setdefault(s, []).append(st)
    out = []
    for name, members in groups.items():
        counts = {k: sum(m.state == k for m in members) for k in STATES}
        left = [m.left_s for m in members if m.state != "done"]
        out.append({"study": name, "runs": len(members), **counts,
                    "elapsed_s": sum(m.elapsed_s for m in members),
                    "known_left_s": sum(x for x in left if x is not None),
                    "unknown_left": sum(x is None for x in left)})
    return out


def format_status(man: dict, rows: list[RunStatus], answered: bool, slurm_asked: bool) -> str:
    total = {k: sum(st.state == k for st in rows) for k in STATES}
    lines = [f"experiment set {man.get('experiment_set', '?')}: {len(rows)} jobs: " +
             ", ".join(f"{v} {k}" for k, v in total.items() if v)]
    if slurm_asked and not answered:
        lines.append("(SLURM not reachable: job states come from the results folder only)")
    head = f"{'table/figure':<14} {'runs':>5} " + " ".join(f"{k:>8}" for k in STATES) + \
        f" {'spent':>9} {'left':>9}"
    lines += ["", head, "-" * len(head)]
    for g in summarize(rows):
        left = _hours(g["known_left_s"]) + ("*" if g["unknown_left"] else "")
        lines.append(f"{g['study']:<14} {g['runs']:>5} " + " ".join(f"{g[k]:>8}" for k in STATES) +
                     f" {_hours(g['elapsed_s']):>9} {left:>9}")
    if any(m.left_s is None and m.state != "done" for m in rows):
        lines.append("* plus runs without a measured epoch time of their method and dataset yet")
    running = [st for st in rows if st.state in ("running", "requeued")]
    if running:
        lines += ["", "running / requeued:"]
        for st in running:
            lines.append(f"  {st.run}  {st.state}  epoch {st.epochs_done}/{st.epochs or '?'}  "
                         f"left {_hours(st.left_s)}" + (f"  job {st.job_id} {st.slurm_state}" if st.job_id else ""))
    failed = [st for st in rows if st.state == "failed"]
    if failed:
        lines += ["", "failed:"]
        for st in failed:
            lines.append(f"  {st.run}  job {st.job_id or '-'}  {st.slurm_state or '-'}  {st.detail}")
            lines.append(f"    log: {st.log}")
    return "\n".join(lines)


def status_main(results: str, slurm: bool = True) -> str:
    t = time.monotonic()
    man, rows, answered = read_status(results, slurm=slurm)
    text = format_status(man, rows, answered, slurm_asked=slurm and any(st.job_id for st in rows))
    return text + f"\n({time.monotonic() - t:.2f} s)"


def measured_epoch_times(folders: list[str | Path]) -> dict[tuple, list[float]]:
    """Mean epoch time (s) of every run and pretraining with epochs in ``folders`` (results folders),
    keyed by ``(kind, method, dataset)`` and ``(kind, dataset)``; methods and datasets come from each
    folder's ``plan.json``."""
    per: dict[tuple, list[float]] = {}
    for folder in folders:
        try:
            _, rows, _ = read_status(folder, slurm=False)
        except FileNotFoundError:
            continue
        for st in rows:
            if st.epoch_times:
                t = statistics.fmean(st.epoch_times)
                per.setdefault((st.kind, st.method, st.dataset), []).append(t)
                per.setdefault((st.kind, st.dataset), []).append(t)
    return per


def cost_plan(results: str | Path, measured_in: list[str | Path] = (), jobs: int = 32) -> str:
    """``lps plan``: jobs, epochs, device-hours and wall time of each table/figure of the set planned in
    ``results`` (its ``plan.json``), from the measured epoch times of finished or running runs in
    ``results`` and in ``measured_in`` (e.g. a short calibration run of the same methods and datasets on
    the target GPU). A run whose method and dataset were never measured counts as unknown."""
    man, rows, _ = read_status(results, slurm=False)
    per = measured_epoch_times([results, *measured_in])
    calibrated = ""
    for folder in [results, *measured_in]:
        try:
            calib = json.loads((Path(folder) / "calibration.json").read_text())
        except (OSError, ValueError):
            continue
        calibrated = calib.get("device", "?")
        for key, seconds in calib.get("epoch_s", {}).items():
            kind, method, dataset = key.split("|")
            if (kind, method, dataset) not in per:  # runs measured in full win over a calibration
                per[(kind, method, dataset)] = [float(seconds)]
                per.setdefault((kind, dataset), []).append(float(seconds))
    groups: dict[str, list[RunStatus]] = {}
    for st in rows:
        for s in st.studies:
            groups.setdefault(s, []).append(st)

    def run_s(st: RunStatus) -> float | None:
        t = per.get((st.kind, st.method, st.dataset)) or per.get((st.kind, st.dataset))
        return None if not t or st.epochs is None else statistics.median(t) * st.epochs

    def proxy(st: RunStatus) -> bool:  # costed from other methods' runs on its dataset
        return (st.kind, st.method, st.dataset) not in per and (st.kind, st.dataset) in per

    head = f"{'table/figure':<14} {'jobs':>5} {'epochs':>8} {'device-h':>9} {'wall':>9}  not measured (~: from other methods)"
    lines = [f"experiment set {man.get('experiment_set', '?')}: {len(rows)} jobs "
             f"({len(man['runs'])} training runs, {len(man['pretrain'])} pretrainings), at most {jobs} at once",
             "", head, "-" * len(head)]
    total_s, unknown = 0.0, set()
    for name, members in groups.items():
        costs = [run_s(m) for m in members]
        known = [c for c in costs if c is not None]
        miss = sorted({f"{m.method}/{m.dataset}" for m, c in zip(members, costs) if c is None} |
                      {f"~{m.method}/{m.dataset}" for m in members if proxy(m)})
        unknown.update(m for m in miss if not m.startswith("~"))
        s = sum(known)
        wall = max(s / min(jobs, len(known)), max(known)) if known else None
        hours = "?" if not known else f"{s / 3600:.1f}" + ("+" if len(known) < len(members) else "")
        lines.append(f"{name:<14} {len(members):>5} {sum(m.epochs or 0 for m in members):>8} "
                     f"{hours:>9} {_hours(wall):>9}  {', '.join(miss) if miss else '-'}")
    for st in rows:
        c = run_s(st)
        total_s += c or 0.0
    known = [c for c in (run_s(st) for st in rows) if c is not None]
    wall = max(total_s / min(jobs, len(known)), max(known)) if known else None
    hours = "?" if not known else f"{total_s / 3600:.1f}" + ("+" if len(known) < len(rows) else "")
    lines += ["-" * len(head), f"{'all (distinct)':<14} {len(rows):>5} {sum(st.epochs or 0 for st in rows):>8} "
              f"{hours:>9} {_hours(wall):>9}  "
              f"{len(unknown)} method/dataset pairs without an estimate"]
    if calibrated:
        lines.append(f"calibrated on: {calibrated} (lps plan --calibrate)")
    lines.append("device-hours: one device (GPU, or CPU job) per job, from measured epoch times "
                 f"({sum(len(v) for k, v in per.items() if len(k) == 3)} runs measured); wall: with {jobs} jobs "
                 "at once, never less than the longest run; +: more for the runs without an estimate")
    return "\n".join(lines)


def spent_markdown(runs, study_runs: dict[str, list[str]]) -> str:
    """Device-hours actually spent per table and figure (the report's ``spent.md``): the summed wall
    time of its finished runs (``runs``: a ``runs.parquet`` frame; one device per job), a run shared
    by several tables counted in each, and once in the total."""
    wall = dict(zip(runs["run_id"], runs["wall_time_s"].astype(float)))
    devices = sorted(set(runs["device"].astype(str))) if len(runs) else []
    lines = ["| table / figure | finished runs | device-hours | mean per run (min) |", "|---|---:|---:|---:|"]
    for study, ids in study_runs.items():
        done = [wall[r] for r in dict.fromkeys(ids) if r in wall]
        mean = f"{sum(done) / len(done) / 60:.1f}" if done else "–"
        lines.append(f"| {study} | {len(done)}/{len(set(ids))} | {sum(done) / 3600:.2f} | {mean} |")
    lines.append(f"| all (distinct runs) | {len(wall)} | {sum(wall.values()) / 3600:.2f} | "
                 f"{(sum(wall.values()) / len(wall) / 60) if wall else 0:.1f} |")
    return "\n".join(lines) + f"\n\nDevices: {', '.join(devices) or '–'}. Pretraining jobs are not included.\n"
