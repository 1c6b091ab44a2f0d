"""Aggregation of finished runs into tidy files and into the paper's tables.

The workflow describes a table by its *cells*: one dict per (cell, seed) with the run id and the
cell's coordinates (``method``/``method_label``, ``variant``, ``dataset``/``dataset_label``/
``paper_dataset``, ``seen_class_ratio``, ``label_ratio``, ``freeze``, ``seed``), and a *spec*
(``title``, ``paper_table``, ``rows``, ``metrics``). :func:`build_table` joins the cells with the runs'
result rows, averages over seeds (mean ± sample std, in %), puts the paper's value
(``lps/data/paper_tables.csv``) and the difference (ours − paper) beside each cell, and lays the
result out as the paper does: the ``rows`` factors down, every other factor that varies across the
table and the metric across.

Outputs of one table (:func:`write_table`):

- Parquet: numbers, one column per (column group, metric, statistic): ``<group> <Metric> mean``,
  ``... std``, ``... n``, ``... paper``, ``... diff``;
- CSV: the displayed table: ``<group> <Metric>`` = ``"mean ± std"``, then ``... paper`` and ``... Δ``;
- Markdown: title, legend and one cell per metric: ``mean ± std (paper, Δ)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from lps.errors import LPSError
from lps.results import METRICS, read_results
from lps.utils import read_jsonl

FACTORS = ("method", "variant", "dataset", "seen_class_ratio", "label_ratio", "freeze")
METRIC_LABELS = {"acc_seen": "Seen", "acc_novel": "Novel", "acc_all": "All", "nmi_novel": "NMI"}
METRIC_LABELS.update({f"test_{k}": f"{v} (test)" for k, v in list(METRIC_LABELS.items())})
FREEZE_LABELS = {"layer4": "frozen", "none": "fine-tuned"}
BACKBONE = {"layer4": "frozen", "none": "full"}  # freeze policy -> the paper_tables.csv `backbone` column
CELL_KEYS = ("method", "method_label", "variant", "dataset", "dataset_label", "paper_dataset",
             "seen_class_ratio", "label_ratio", "freeze")


# ------------------------------------------------------------------------------------------------
# collection


def collect_runs(result_files: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate ``result.parquet`` files (schema ``lps.results.RESULT_SCHEMA``), sorted by run id."""
    files = sorted(str(f) for f in result_files)
    return read_results(files).sort_values("run_id", kind="stable").reset_index(drop=True)


def read_epochs(run_dir: str | Path) -> pd.DataFrame:
    """The ``metrics.jsonl`` lines of one run folder as a frame (empty if there are none)."""
    return pd.DataFrame(read_jsonl(Path(run_dir) / "metrics.jsonl"))


def collect_epochs(result_files: Iterable[str | Path]) -> pd.DataFrame:
    """Every ``metrics.jsonl`` line of the runs whose ``result.parquet`` is given, with the run's
    coordinates (run_id, method, dataset, seen_class_ratio, label_ratio, freeze, overrides, seed) first.
    Columns a method does not log are NaN; ``pi_hat`` is a list column."""
    keys = ["run_id", "method", "dataset", "seen_class_ratio", "label_ratio", "freeze", "overrides", "seed"]
    frames = []
    for f in sorted(str(f) for f in result_files):
        row = read_results([f]).iloc[0]
        ep = read_epochs(Path(f).parent)
        if ep.empty:
            continue
        for k in reversed(keys):
            ep.insert(0, k, row[k])
        frames.append(ep)
    if not frames:
        return pd.DataFrame(columns=keys + ["epoch"])
    return pd.concat(frames, ignore_index=True, sort=False)


# ------------------------------------------------------------------------------------------------
# convergence


def convergence(epochs: pd.DataFrame, metric: str = "acc_all", window: float = 0.2,
                threshold: float = 1.5) -> pd.DataFrame:
    """Whether each run has converged: over its last ``window`` of epochs (at least the last two
    evaluated ones), ``metric`` moves by less than ``threshold`` points (max - min, in %).

    One row per run: run_id, method, ..., ``epochs`` (evaluated), ``window_epochs``, ``first`` and
    ``last`` epoch of the window, ``moved`` (points), ``last_value`` (%), ``converged`` (bool; NA for a
    run with fewer than two evaluations, e.g. SimCLR + k-means, which does not train). Unconverged
    runs first."""
    keys = ["run_id", "method", "dataset", "seen_class_ratio", "label_ratio", "freeze", "overrides", "seed"]
    cols = keys + ["epochs", "window_epochs", "first", "last", "moved", "last_value", "converged"]
    rows = []
    if epochs.empty or metric not in epochs.columns:
        return pd.DataFrame(columns=cols)
    for rid, g in epochs.dropna(subset=[metric]).groupby("run_id", sort=True):
        g = g.sort_values("epoch")
        n = len(g)
        total = int(g["epoch"].max()) + 1
        k = max(2, math.ceil(window * total))
        w = g[g["epoch"] >= total - k]
        if len(w) < 2:
            w = g.tail(2)
        vals = 100 * w[metric].astype(float)
        row = {c: g.iloc[0][c] for c in keys if c in g.columns}
        moved = float(vals.max() - vals.min()) if len(w) >= 2 else math.nan
        row.update({"epochs": n, "window_epochs": len(w), "first": int(w["epoch"].min()),
                    "last": int(w["epoch"].max()), "moved": moved, "last_value": float(vals.iloc[-1]),
                    "converged": (moved < threshold) if len(w) >= 2 else pd.NA})
        rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    out["converged"] = out["converged"].astype("boolean")
    return out.sort_values(["converged", "moved"], ascending=[True, False], na_position="last",
                           kind="stable").reset_index(drop=True)


def convergence_markdown(conv: pd.DataFrame, metric: str = "acc_all", window: float = 0.2,
                         threshold: float = 1.5) -> str:
    n_bad = int((conv["converged"] == False).sum())  # noqa: E712  (nullable boolean)
    lines = [f"### Convergence: {metric} over the last {window:.0%} of epochs", "",
             f"A run counts as converged when {metric} moves by less than {threshold} points (max - min) over "
             f"its last {window:.0%} of epochs (at least two evaluations). "
             f"**{n_bad} of {int(conv['converged'].notna().sum())} trained runs have not converged.**", "",
             "| run | method | seed | window (epochs) | moved (points) | last (%) | converged |",
             "|:---|:---|---:|:---|---:|---:|:---|"]
    for _, r in conv.iterrows():
        ok = "—" if pd.isna(r["converged"]) else ("yes" if r["converged"] else "**no**")
        moved = "—" if pd.isna(r["moved"]) else f"{r['moved']:.1f}"
        lines.append(f"| {r['run_id']} | {r['method']} | {r['seed']} | {r['first'] + 1}–{r['last'] + 1} | {moved} | "
                     f"{r['last_value']:.1f} | {ok} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# paper values


def load_paper_tables(path: str | Path | None = None) -> pd.DataFrame:
    """The paper's Tables 1-9, tidy (table, method, dataset, seen_class_ratio, label_ratio, backbone,
    variant, metric, value in %); ``variant`` is "" where the paper has none."""
    src = path or resources.files("lps.data").joinpath("paper_tables.csv")
    with open(src) as fh:  # type: ignore[arg-type]
        df = pd.read_csv(fh, dtype={"variant": str})
    df["variant"] = df["variant"].fillna("")
    return df


def paper_lookup(paper: pd.DataFrame, table: int | None) -> dict:
    """(method, dataset, seen, label, backbone, variant, metric) -> value, for one paper table."""
    if table is None:
        return {}
    sub = paper[paper["table"] == table]
    return {(r.method, r.dataset, round(float(r.seen_class_ratio), 6), round(float(r.label_ratio), 6), r.backbone,
             r.variant, r.metric): float(r.value) for r in sub.itertuples()}


# ------------------------------------------------------------------------------------------------
# aggregation


def aggregate(runs: pd.DataFrame, cells: Sequence[dict] | pd.DataFrame, metrics: Sequence[str],
              paper: pd.DataFrame | None = None, paper_table: int | None = None) -> pd.DataFrame:
    """Tidy aggregate: one row per (cell, metric) with mean, std (over seeds, ddof 1, NaN for one
    seed), n (seeds with a result), n_expected, paper and diff (mean − paper), all in %.
    Cells keep the order of ``cells``; runs missing from ``runs`` count as missing seeds."""
    cells = pd.DataFrame(list(cells)) if not isinstance(cells, pd.DataFrame) else cells.copy()
    if cells.empty:
        raise LPSError("a table needs at least one cell")
    missing = [k for k in ("run_id", "seed", *CELL_KEYS) if k not in cells.columns]
    if "method_label" in missing:
        cells["method_label"] = cells["method"]
    if "dataset_label" in missing:
        cells["dataset_label"] = cells["dataset"]
    if "paper_dataset" in missing:
        cells["paper_dataset"] = cells["dataset"]
    if "variant" in missing:
        cells["variant"] = ""
    missing = [k for k in ("run_id", "seed", *CELL_KEYS) if k not in cells.columns]
    if missing:
        raise LPSError(f"table cells lack the fields {missing}")
    unknown = [m for m in metrics if m not in runs.columns]
    if unknown:
        raise LPSError(f"unknown metrics {unknown}; result columns: {', '.join(METRICS)} (and test_*)")
    cells["variant"] = cells["variant"].fillna("").astype(str)
    vals = runs.drop_duplicates("run_id").set_index("run_id")[list(metrics)]
    joined = cells.join(vals, on="run_id")
    lookup = paper_lookup(paper if paper is not None else load_paper_tables(), paper_table)

    rows = []
    keys = list(CELL_KEYS)
    for key, g in joined.groupby(keys, sort=False, dropna=False):
        cell = dict(zip(keys, key))
        n_expected = g["seed"].nunique()
        for m in metrics:
            v = g.drop_duplicates("seed")[m].dropna().to_numpy(dtype=float) * 100.0
            mean = float(v.mean()) if len(v) else math.nan
            std = float(v.std(ddof=1)) if len(v) > 1 else math.nan
            p = lookup.get((cell["method_label"], cell["paper_dataset"], round(float(cell["seen_class_ratio"]), 6),
                            round(float(cell["label_ratio"]), 6), BACKBONE.get(cell["freeze"], cell["freeze"]),
                            cell["variant"], m), math.nan)
            rows.append({**cell, "metric": m, "mean": mean, "std": std, "n": len(v), "n_expected": n_expected,
                         "paper": p, "diff": mean - p})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# layout


def _factor_label(factor: str, value, row: dict) -> str:
    if factor == "method":
        return str(row["method_label"])
    if factor == "dataset":
        return str(row["dataset_label"])
    if factor == "label_ratio":
        return f"{float(value):.0%} labeled"
    if factor == "seen_class_ratio":
        return f"{float(value):.0%} seen"
    if factor == "freeze":
        return FREEZE_LABELS.get(value, str(value))
    return str(value) if value != "" else "default"


def layout_factors(tidy: pd.DataFrame, rows: Sequence[str]) -> tuple[list[str], list[str]]:
    """(row factors, column factors): the requested ``rows`` that vary (at least the first one), and
    every other factor that varies across the table."""
    varies = [f for f in FACTORS if tidy[f].nunique(dropna=False) > 1]
    row_f = [f for f in rows if f in varies] or [rows[0]]
    col_f = [f for f in ("dataset", "seen_class_ratio", "label_ratio", "freeze", "method", "variant")
             if f in varies and f not in row_f]
    return row_f, col_f


def fmt_cell(mean: float, std: float, n: int, n_expected: int, digits: int = 1) -> str:
    """``"86.1 ± 0.4"``; one seed: ``"86.1"``; no result: ``"–"``; missing seeds: ``" [n=2/3]"`` added."""
    if n == 0 or math.isnan(mean):
        return "–"
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 and not math.isnan(std) else "")
    if n < n_expected:
        text += f" [n={n}/{n_expected}]"
    return text


def fmt_num(x: float, digits: int = 1, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}".replace("-", "−") if signed else f"{x:.{digits}f}"


@dataclass
class Table:
    """One laid-out table: ``numbers`` (Parquet), ``display`` (CSV), ``markdown`` and the tidy aggregate."""

    tidy: pd.DataFrame
    numbers: pd.DataFrame
    display: pd.DataFrame
    markdown: str


def build_table(runs: pd.DataFrame, cells: Sequence[dict], spec: dict, paper: pd.DataFrame | None = None) -> Table:
    metrics = list(spec.get("metrics") or ["acc_seen", "acc_novel", "acc_all"])
    digits = 2 if metrics == ["nmi_novel"] else 1  # the paper prints NMI with two decimals
    tidy = aggregate(runs, cells, metrics, paper, spec.get("paper_table"))
    row_f, col_f = layout_factors(tidy, list(spec.get("rows") or ["method", "variant"]))

    def labels(r: dict, factors: list[str]) -> tuple[str, ...]:
        return tuple(_factor_label(f, r[f], r) for f in factors)

    records = tidy.to_dict("records")
    row_keys = list(dict.fromkeys(labels(r, row_f) for r in records))
    col_keys = list(dict.fromkeys(labels(r, col_f) for r in records))
    by = {(labels(r, row_f), labels(r, col_f), r["metric"]): r for r in records}
    row_names = list(row_f)

    num_rows, disp_rows, md_rows = [], [], []
    md_head = [" / ".join(row_names)]
    for ck in col_keys:
        for m in metrics:
            md_head.append(" · ".join([*ck, METRIC_LABELS.get(m, m)]))
    for rk in row_keys:
        num = dict(zip(row_names, rk))
        disp = dict(zip(row_names, rk))
        md = [" / ".join(rk)]
        for ck in col_keys:
            for m in metrics:
                name = " ".join([*ck, METRIC_LABELS.get(m, m)])
                r = by.get((rk, ck, m))
                if r is None:  # this row has no such column (e.g. a variant on one dataset only)
                    r = {"mean": math.nan, "std": math.nan, "n": 0, "n_expected": 0, "paper": math.nan,
                         "diff": math.nan}
                for stat in ("mean", "std", "n", "paper", "diff"):
                    num[f"{name} {stat}"] = r[stat]
                cell = fmt_cell(r["mean"], r["std"], r["n"], r["n_expected"], digits)
                disp[name] = cell
                disp[f"{name} paper"] = fmt_num(r["paper"], digits)
                disp[f"{name} Δ"] = fmt_num(r["diff"], digits, signed=True)
                extra = "" if math.isnan(r["paper"]) else \
                    f" ({fmt_num(r['paper'], digits)}, {fmt_num(r['diff'], digits, signed=True)})"
                md.append(cell + extra if cell != "–" or extra == "" else f"– ({fmt_num(r['paper'], digits)})")
        num_rows.append(num)
        disp_rows.append(disp)
        md_rows.append(md)
    numbers = pd.DataFrame(num_rows)
    display = pd.DataFrame(disp_rows)
    markdown = _markdown(spec, tidy, md_head, md_rows)
    return Table(tidy=tidy, numbers=numbers, display=display, markdown=markdown)


def _markdown(spec: dict, tidy: pd.DataFrame, head: list[str], rows: list[list[str]]) -> str:
    seeds = spec.get("seeds")
    unit = "NMI" if list(spec.get("metrics") or []) == ["nmi_novel"] else "accuracy"
    over = (f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}" if seeds else "seeds")
    legend = (f"Cells: mean ± std over {over} "
              f"({unit} in %, unlabeled training images)")
    if spec.get("paper_table"):
        stand_in = tidy.loc[tidy["dataset"] != tidy["paper_dataset"], ["dataset_label", "paper_dataset"]]
        legend += f", then (paper Table {spec['paper_table']} value, difference ours − paper)"
        if len(stand_in):
            pairs = sorted({f"{a} ↔ paper's {b}" for a, b in stand_in.itertuples(index=False)})
            legend += f"; stand-in datasets: {', '.join(pairs)}"
    legend += ". `[n=k/m]`: only k of m seeds finished."
    title = spec.get("title") or spec.get("name", "table")
    lines = [f"### {title}", "", legend, "", "| " + " | ".join(head) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    n_runs = int(tidy.groupby(list(CELL_KEYS), sort=False, dropna=False)["n"].max().sum())
    lines += ["", f"{n_runs} runs; experiment set `{spec.get('experiment_set', '?')}`.", ""]
    return "\n".join(lines)


def write_table(table: Table, parquet: str | Path, csv: str | Path, md: str | Path) -> None:
    table.numbers.to_parquet(parquet, index=False)
    table.display.to_csv(csv, index=False)
    Path(md).write_text(table.markdown)
