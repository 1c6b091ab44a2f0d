"""Aggregation into the paper's layout (lps.tables) on synthetic runs: mean ± std over seeds, the
paper's value and the difference beside each cell, row/column layout, missing seeds, outputs."""

import math

import numpy as np
import pandas as pd
import pytest

from lps.errors import LPSError
from lps.results import RESULT_SCHEMA
from lps.tables import aggregate, build_table, collect_epochs, collect_runs, fmt_cell, load_paper_tables, write_table


def make_runs(values: dict) -> pd.DataFrame:
    """A runs frame with the result schema; ``values``: run_id -> {metric: value in [0, 1]}."""
    rows = []
    for rid, metrics in values.items():
        row = {f.name: None for f in RESULT_SCHEMA}
        row.update({"run_id": rid, "method": rid.split("-")[0], "dataset": "cifar10", "seen_class_ratio": 0.5,
                    "label_ratio": 0.5, "n_seen": 5, "freeze": "layer4", "seed": 0, "split_seed": 0,
                    "overrides": "{}", "epochs": 1, "wall_time_s": 1.0})
        for m in ("acc_seen", "acc_novel", "acc_all", "nmi_novel"):
            row[m] = metrics.get(m, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def cell(run_id, method="lps", label="LPS", seed=0, dataset="cifar10", dataset_label="CIFAR-10", variant="",
         label_ratio=0.5, freeze="layer4", paper_dataset=None):
    return {"run_id": run_id, "method": method, "method_label": label, "variant": variant, "dataset": dataset,
            "dataset_label": dataset_label, "paper_dataset": paper_dataset or dataset, "seen_class_ratio": 0.5,
            "label_ratio": label_ratio, "freeze": freeze, "seed": seed}


def test_paper_tables_ship_with_the_package():
    paper = load_paper_tables()
    assert set(paper["table"]) == set(range(1, 10))
    lps_all = paper.query("table == 1 and method == 'LPS' and dataset == 'cifar100' and label_ratio == 0.5 "
                          "and metric == 'acc_all'")["value"]
    assert lps_all.tolist() == [54.3]
    assert (paper.loc[paper["table"] == 4, "variant"] != "").all()
    assert (paper.loc[paper["table"] == 1, "variant"] == "").all()


def test_mean_std_paper_and_difference():
    runs = make_runs({"lps-a": {"acc_seen": 0.90, "acc_novel": 0.92, "acc_all": 0.91},
                      "lps-b": {"acc_seen": 0.92, "acc_novel": 0.94, "acc_all": 0.93},
                      "lps-c": {"acc_seen": 0.94, "acc_novel": 0.96, "acc_all": 0.95}})
    cells = [cell("lps-a", seed=0), cell("lps-b", seed=1), cell("lps-c", seed=2)]
    tidy = aggregate(runs, cells, ["acc_seen", "acc_novel", "acc_all"], paper_table=1).set_index("metric")
    assert tidy.loc["acc_seen", "mean"] == pytest.approx(92.0)
    assert tidy.loc["acc_seen", "std"] == pytest.approx(2.0)  # sample std (ddof 1) of 90, 92, 94
    assert tidy.loc["acc_seen", "n"] == 3
    # paper Table 1, LPS, CIFAR-10, 50% labeled: 90.2 / 93.4 / 92.4
    assert tidy.loc["acc_seen", "paper"] == pytest.approx(90.2)
    assert tidy.loc["acc_all", "paper"] == pytest.approx(92.4)
    assert tidy.loc["acc_seen", "diff"] == pytest.approx(92.0 - 90.2)
    assert tidy.loc["acc_novel", "diff"] == pytest.approx(94.0 - 93.4)


def test_paper_lookup_uses_variant_backbone_and_stand_in_dataset():
    runs = make_runs({"lps-x": {"acc_all": 0.5}, "lps-y": {"acc_all": 0.6}})
    cells = [cell("lps-x", variant="without_pc"), cell("lps-y", freeze="none", label="LPS")]
    t4 = aggregate(runs, cells[:1], ["acc_all"], paper_table=4)
    assert t4["paper"].tolist() == [89.3]  # Table 4, w/o L_PC, CIFAR-10
    t3 = aggregate(runs, cells[1:], ["acc_all"], paper_table=3)
    assert t3["paper"].tolist() == [95.3]  # Table 3 (full fine-tuning), CIFAR-10
    fm = [cell("lps-x", dataset="fashion_mnist", dataset_label="Fashion-MNIST", paper_dataset="cifar10")]
    assert aggregate(runs, fm, ["acc_all"], paper_table=1)["paper"].tolist() == [92.4]
    none = aggregate(runs, cells[:1], ["acc_all"], paper_table=None)
    assert math.isnan(none["paper"].iloc[0]) and math.isnan(none["diff"].iloc[0])


def test_missing_seed_and_missing_run():
    runs = make_runs({"lps-a": {"acc_all": 0.80}})
    cells = [cell("lps-a", seed=0), cell("lps-b", seed=1), cell("orca-a", method="orca", label="ORCA", seed=0)]
    tidy = aggregate(runs, cells, ["acc_all"])
    lps_row = tidy[tidy["method"] == "lps"].iloc[0]
    assert (lps_row["n"], lps_row["n_expected"]) == (1, 2)
    assert lps_row["mean"] == pytest.approx(80.0) and math.isnan(lps_row["std"])
    orca_row = tidy[tidy["method"] == "orca"].iloc[0]
    assert orca_row["n"] == 0 and math.isnan(orca_row["mean"])
    assert fmt_cell(80.0, math.nan, 1, 2) == "80.0 [n=1/2]"
    assert fmt_cell(math.nan, math.nan, 0, 3) == "–"
    assert fmt_cell(86.14, 0.44, 3, 3) == "86.1 ± 0.4"


def test_shared_run_counts_once_per_seed():
    """Two variants equal to the default point (Table 5's eta1=1.0 and eta2=1.0) read the same runs."""
    runs = make_runs({"lps-a": {"acc_all": 0.5}, "lps-b": {"acc_all": 0.7}})
    cells = [cell("lps-a", variant="eta1=1.0", seed=0, dataset="cifar100", dataset_label="CIFAR-100"),
             cell("lps-b", variant="eta1=1.0", seed=1, dataset="cifar100", dataset_label="CIFAR-100"),
             cell("lps-a", variant="eta2=1.0", seed=0, dataset="cifar100", dataset_label="CIFAR-100"),
             cell("lps-b", variant="eta2=1.0", seed=1, dataset="cifar100", dataset_label="CIFAR-100")]
    t = build_table(runs, cells, {"metrics": ["acc_all"], "rows": ["variant"], "paper_table": 5})
    assert t.numbers["variant"].tolist() == ["eta1=1.0", "eta2=1.0"]
    assert t.numbers["All mean"].tolist() == pytest.approx([60.0, 60.0])
    assert t.numbers["All paper"].tolist() == pytest.approx([54.3, 54.3])


def table1_like():
    rng = np.random.default_rng(0)
    values, cells = {}, []
    for method, label in (("orca", "ORCA"), ("lps", "LPS")):
        for ds, ds_label in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")):
            for lr in (0.1, 0.5):
                for seed in range(3):
                    rid = f"{method}-{ds}-{lr}-{seed}"
                    values[rid] = {m: float(rng.uniform(0.3, 0.9)) for m in ("acc_seen", "acc_novel", "acc_all")}
                    cells.append(cell(rid, method, label, seed, ds, ds_label, label_ratio=lr))
    return make_runs(values), cells


def test_layout_is_the_papers():
    runs, cells = table1_like()
    spec = {"title": "Table 1", "paper_table": 1, "rows": ["method", "variant"],
            "metrics": ["acc_seen", "acc_novel", "acc_all"], "seeds": [0, 1, 2], "experiment_set": "test"}
    t = build_table(runs, cells, spec)
    # rows: methods in config order; columns: dataset x label ratio x metric, in config order
    assert t.numbers["method"].tolist() == ["ORCA", "LPS"]
    assert t.display["method"].tolist() == ["ORCA", "LPS"]
    cols = [c for c in t.display.columns if c != "method" and not c.endswith((" paper", " Δ"))]
    assert cols[:4] == ["CIFAR-10 10% labeled Seen", "CIFAR-10 10% labeled Novel", "CIFAR-10 10% labeled All",
                        "CIFAR-10 50% labeled Seen"]
    assert len(cols) == 12
    # paper value and difference beside each cell
    i = list(t.display.columns).index("CIFAR-100 50% labeled All")
    assert list(t.display.columns)[i + 1:i + 3] == ["CIFAR-100 50% labeled All paper", "CIFAR-100 50% labeled All Δ"]
    assert t.display.loc[1, "CIFAR-100 50% labeled All paper"] == "54.3"  # LPS
    mean = t.numbers.loc[1, "CIFAR-100 50% labeled All mean"]
    std = t.numbers.loc[1, "CIFAR-100 50% labeled All std"]
    assert t.display.loc[1, "CIFAR-100 50% labeled All"] == f"{mean:.1f} ± {std:.1f}"
    assert t.display.loc[1, "CIFAR-100 50% labeled All Δ"] == f"{mean - 54.3:+.1f}".replace("-", "−")
    # markdown: header row, one line per method, mean ± std (paper, Δ)
    md = t.markdown.splitlines()
    header = next(ln for ln in md if ln.startswith("| method"))
    assert header.count("|") == 1 + 1 + 12
    lps_line = next(ln for ln in md if ln.startswith("| LPS"))
    assert f"{mean:.1f} ± {std:.1f} (54.3, " in lps_line
    assert "mean ± std over seeds 0, 1, 2" in t.markdown


def test_constant_factors_are_dropped_and_rows_follow_spec():
    runs = make_runs({f"lps-{v}-{s}": {"acc_all": 0.5 + 0.01 * s} for v in ("a", "b") for s in range(2)})
    cells = [cell(f"lps-{v}-{s}", variant=name, seed=s) for v, name in (("a", "C=1"), ("b", "C=5")) for s in range(2)]
    t = build_table(runs, cells, {"metrics": ["acc_all"], "rows": ["variant"], "paper_table": 7})
    assert list(t.numbers.columns[:2]) == ["variant", "All mean"]  # one dataset, one ratio: no column group
    assert t.numbers["All paper"].tolist() == [90.5, 91.4]
    assert t.display["All"].tolist()[0] == "50.5 ± 0.7"


def test_nmi_table_two_decimals():
    runs = make_runs({"lps-a": {"nmi_novel": 0.8241}, "lps-b": {"nmi_novel": 0.8243}})
    cells = [cell("lps-a", seed=0, label_ratio=0.1), cell("lps-b", seed=1, label_ratio=0.1)]
    t = build_table(runs, cells, {"metrics": ["nmi_novel"], "paper_table": 2})
    assert t.display["NMI paper"].tolist() == ["82.41"]
    assert t.display["NMI"].tolist() == ["82.42 ± 0.01"]


def test_bad_input_is_named():
    runs = make_runs({"lps-a": {"acc_all": 0.5}})
    with pytest.raises(LPSError, match="unknown metrics"):
        aggregate(runs, [cell("lps-a")], ["acc_everything"])
    with pytest.raises(LPSError, match="at least one cell"):
        aggregate(runs, [], ["acc_all"])


def test_write_and_collect(tmp_path):
    from lps.results import write_result

    runs, cells = table1_like()
    files = []
    for i, row in enumerate(runs.head(3).to_dict("records")):
        d = tmp_path / "runs" / row["run_id"]
        d.mkdir(parents=True)
        write_result(row, d / "result.parquet")
        (d / "metrics.jsonl").write_text("".join(f'{{"epoch": {e}, "acc_all": 0.{e + 1}, "pi_hat": [0.5, 0.5]}}\n'
                                                 for e in range(i + 1)))
        files.append(d / "result.parquet")
    collected = collect_runs(files)
    assert collected["run_id"].tolist() == sorted(runs.head(3)["run_id"])
    assert list(collected.columns) == RESULT_SCHEMA.names
    epochs = collect_epochs(files)
    assert len(epochs) == 1 + 2 + 3
    assert list(epochs.columns[:8]) == ["run_id", "method", "dataset", "seen_class_ratio", "label_ratio", "freeze",
                                        "overrides", "seed"]
    assert epochs["pi_hat"].iloc[0] == [0.5, 0.5]
    t = build_table(runs, cells, {"paper_table": 1})
    write_table(t, tmp_path / "t.parquet", tmp_path / "t.csv", tmp_path / "t.md")
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert back.shape == t.numbers.shape
    assert pd.read_csv(tmp_path / "t.csv").shape == t.display.shape
    assert (tmp_path / "t.md").read_text() == t.markdown


def test_convergence_flags_runs_still_moving_in_their_last_fifth():
    import pandas as pd

    from lps.tables import convergence, convergence_markdown

    def run(rid, values, method="lps"):
        return [{"run_id": rid, "method": method, "dataset": "d", "seen_class_ratio": 0.5, "label_ratio": 0.5,
                 "freeze": "layer4", "overrides": "{}", "seed": 0, "epoch": e, "acc_all": v}
                for e, v in enumerate(values)]

    # 10 epochs: the window is the last 2 (20 %); 5 epochs: the last 2 (at least two evaluations)
    ep = pd.DataFrame(run("flat", [0.1, 0.3, 0.5, 0.600, 0.605, 0.60, 0.60, 0.61, 0.615, 0.62])
                      + run("moving", [0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.62, 0.64, 0.66])
                      + run("short", [0.2, 0.4, 0.5, 0.52, 0.60])
                      + run("kmeans", [0.55], method="simclr_kmeans"))
    c = convergence(ep).set_index("run_id")
    assert c.loc["flat", "moved"] == pytest.approx(0.5) and bool(c.loc["flat", "converged"])
    assert c.loc["moving", "moved"] == pytest.approx(2.0) and not bool(c.loc["moving", "converged"])
    assert c.loc["short", "moved"] == pytest.approx(8.0) and (c.loc["short", "first"], c.loc["short", "last"]) == (3, 4)
    assert pd.isna(c.loc["kmeans", "converged"])  # does not train: not judged
    order = list(convergence(ep)["run_id"])
    assert order[:2] == ["short", "moving"] and order[-1] == "kmeans"  # unconverged first, most moved first
    md = convergence_markdown(convergence(ep))
    assert "2 of 3 trained runs have not converged" in md and "| moving | lps | 0 | 9–10 | 2.0 | 66.0 | **no** |" in md
    # a 20-epoch run: the window is its last 4 epochs
    c20 = convergence(pd.DataFrame(run("r", [0.5] * 15 + [0.40, 0.6, 0.6, 0.6, 0.6]))).iloc[0]
    assert (c20["first"], c20["last"], c20["moved"]) == (16, 19, 0.0)
