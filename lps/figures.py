"""The paper's figures from finished runs (matplotlib; each figure saved as PNG and PDF).

- Fig. 2: (a) seen − novel accuracy gap and (b) overall accuracy over epochs, per method;
- Fig. 4: (a) KL(pi_hat || pi) over epochs and (b) the final estimated class distribution pi_hat
  (``kl_pi_hat_pi`` and ``pi_hat`` of ``metrics.jsonl``), with the expected true distribution;
- Fig. 5: t-SNE of the backbone features of unlabeled training images, from a run's ``checkpoint.pt``
  (:func:`extract_features`);
- Fig. 6: novel and overall accuracy against the number of novel classes (a, b) and the labeled
  ratio (c, d).

Each figure function takes the figure's *cells* (dicts with ``run_id``, ``method``, ``method_label``,
``seed``, ``variant``, ... as built by the workflow) and the run folders, and returns a matplotlib
Figure. Curves are means over seeds with a ± std band or error bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, TextIO

import numpy as np
import pandas as pd

from lps.errors import LPSError
from lps.results import read_results
from lps.tables import read_epochs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHOD_COLORS = {"lps": "tab:red", "orca": "tab:blue", "nach": "tab:green", "fixmatch": "tab:orange",
                 "openncd": "tab:purple", "gcd": "tab:brown"}


def _subplots(ncols: int, figsize: tuple[float, float]):
    """A Figure (no pyplot state, no backend switch) and its row of ``ncols`` axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _color(method: str, i: int) -> str:
    return METHOD_COLORS.get(method, f"C{i % 10}")


def _run_dirs(cells: Sequence[dict], result_files: Iterable[str | Path]) -> dict[str, Path]:
    """run_id -> run folder, for the cells' runs whose result file is among ``result_files``."""
    dirs = {Path(f).parent.name: Path(f).parent for f in result_files}
    missing = sorted({c["run_id"] for c in cells} - set(dirs))
    if missing:
        raise LPSError(f"no result for runs {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    return dirs


def _methods(cells: Sequence[dict]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((c["method"], c.get("method_label", c["method"])) for c in cells))


def epoch_curves(cells: Sequence[dict], run_dirs: dict[str, Path], column: str | Callable) -> dict:
    """method -> DataFrame(epoch, mean, std, n) of ``column`` (a metrics.jsonl key, or a function of
    the epoch frame) over the method's seeds, in %-points for accuracies."""
    out = {}
    for method, _ in _methods(cells):
        frames = []
        for c in cells:
            if c["method"] != method:
                continue
            ep = read_epochs(run_dirs[c["run_id"]])
            if ep.empty:
                continue
            val = column(ep) if callable(column) else ep.get(column)
            if val is None:
                continue
            frames.append(pd.DataFrame({"epoch": ep["epoch"] + 1, "value": pd.to_numeric(val, errors="coerce"),
                                        "seed": c["seed"]}))
        if frames:
            df = pd.concat(frames).dropna()
            out[method] = df.groupby("epoch")["value"].agg(["mean", "std", "count"]).reset_index()
    return out


def _band(ax, curve: pd.DataFrame, label: str, color: str) -> None:
    ax.plot(curve["epoch"], curve["mean"], label=label, color=color, lw=1.8)
    if curve["count"].max() > 1:
        ax.fill_between(curve["epoch"], curve["mean"] - curve["std"].fillna(0), curve["mean"] + curve["std"].fillna(0),
                        color=color, alpha=0.2, lw=0)


def _title(spec: dict, cells: Sequence[dict]) -> str:
    c = cells[0]
    return (f"{c.get('dataset_label', c['dataset'])}, {c['seen_class_ratio']:.0%} seen classes, "
            f"{c['label_ratio']:.0%} labeled")


def fig2(spec: dict, cells: Sequence[dict], run_dirs: dict[str, Path], **_) -> Figure:
    gap = epoch_curves(cells, run_dirs, lambda ep: 100 * (ep.get("acc_seen") - ep.get("acc_novel"))
                       if "acc_seen" in ep and "acc_novel" in ep else None)
    acc = epoch_curves(cells, run_dirs, lambda ep: 100 * ep["acc_all"] if "acc_all" in ep else None)
    fig, axes = _subplots(2, (10, 3.8))
    for i, (m, label) in enumerate(_methods(cells)):
        if m in gap:
            _band(axes[0], gap[m], label, _color(m, i))
        if m in acc:
            _band(axes[1], acc[m], label, _color(m, i))
    axes[0].axhline(0, color="grey", lw=0.8, ls=":")
    axes[0].set(xlabel="epoch", ylabel="seen − novel accuracy (%)", title="(a) accuracy gap")
    axes[1].set(xlabel="epoch", ylabel="accuracy, all classes (%)", title="(b) overall accuracy")
    for ax in axes:
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
    fig.suptitle(_title(spec, cells))
    fig.tight_layout()
    return fig


def expected_prior(num_classes: int, n_seen: int, label_ratio: float) -> np.ndarray:
    """Expected class distribution of the unlabeled set of a class-balanced dataset: a seen-class image
    stays unlabeled with probability 1 − label_ratio, a novel-class image always."""
    w = np.where(np.arange(num_classes) < n_seen, 1.0 - label_ratio, 1.0)
    return w / w.sum()


def fig4(spec: dict, cells: Sequence[dict], run_dirs: dict[str, Path], **_) -> Figure:
    kl = epoch_curves(cells, run_dirs, "kl_pi_hat_pi")
    fig, axes = _subplots(2, (11, 3.8))
    k = n_seen = None
    for i, (m, label) in enumerate(_methods(cells)):
        if m in kl:
            _band(axes[0], kl[m], label, _color(m, i))
        finals = []
        for c in cells:
            if c["method"] != m:
                continue
            ep = read_epochs(run_dirs[c["run_id"]])
            if not ep.empty and "pi_hat" in ep and isinstance(ep["pi_hat"].iloc[-1], list):
                finals.append(np.asarray(ep["pi_hat"].iloc[-1], dtype=float))
            if n_seen is None:
                n_seen = int(read_results([run_dirs[c["run_id"]] / "result.parquet"])["n_seen"].iloc[0])
        if finals:
            pi_hat = np.mean(finals, axis=0)
            k = len(pi_hat)
            axes[1].step(np.arange(k), pi_hat, where="mid", label=label, color=_color(m, i), lw=1.5)
    if k is not None and n_seen is not None:
        prior = expected_prior(k, n_seen, cells[0]["label_ratio"])
        axes[1].step(np.arange(k), prior, where="mid", color="black", ls="--", lw=1.2, label="true (expected)")
        axes[1].axvline(n_seen - 0.5, color="grey", lw=0.8, ls=":")
    axes[0].set(xlabel="epoch", ylabel=r"KL($\hat\pi$ || $\pi$)", title="(a) KL divergence")
    axes[1].set(xlabel="class (seen | novel)", ylabel=r"$\hat\pi$ after the last epoch",
                title="(b) estimated class distribution")
    for ax in axes:
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
    fig.suptitle(_title(spec, cells))
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# Fig. 5: features of a finished run


def extract_features(run_dir: str | Path, max_points: int = 2000, seed: int = 0, device: str = "cpu",
                     batch_size: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backbone features of (at most ``max_points``, drawn with ``seed``) unlabeled training images of a
    finished run, with the model of its ``checkpoint.pt`` and the test transform.

    Returns ``(features [N, D] float32, true labels [N], is_seen [N] bool)``.
    """
    import torch
    import yaml

    from lps.config import build_config
    from lps.data.augment import Augmenter
    from lps.data.datasets import load_dataset
    from lps.models import build_model, embed

    run_dir = Path(run_dir)
    ckpt_file, cfg_file, split_file = run_dir / "checkpoint.pt", run_dir / "config.yaml", run_dir / "split.npz"
    for f in (ckpt_file, cfg_file, split_file):
        if not f.exists():
            raise LPSError(f"{f} is missing: t-SNE needs a trained run (methods that do not train, such as "
                           "simclr_kmeans, have no checkpoint)")
    cfg = build_config(base=yaml.safe_load(cfg_file.read_text()))
    data = load_dataset(cfg.data)
    split = np.load(split_file)
    idx = np.asarray(split["unlabeled_idx"])
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_points, replace=False))
    m = cfg.model
    model = build_model(m.arch, data.kind, data.channels, data.num_classes, m.width, m.stem_stride, m.head_scale)
    try:
        state = torch.load(ckpt_file, map_location="cpu", weights_only=True)["model"]
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001
        raise LPSError(f"cannot load the model of {ckpt_file}: {type(e).__name__}: {e}") from None
    dev = torch.device(device)
    model.to(dev)
    augmenter = Augmenter(data.kind, data.image_size, data.mean, data.std)
    _, feats = embed(model, data.train, idx, augmenter.test, dev, batch_size, "fp32")
    y = data.train_y[idx]
    return feats.numpy().astype(np.float32), y, y < int(split["n_seen"])


def tsne_2d(feats: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, max(2.0, (len(feats) - 1) / 3))
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(
        feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12))


def fig5(spec: dict, cells: Sequence[dict], run_dirs: dict[str, Path], log: TextIO | None = None,
         **_) -> Figure:
    seed = min(c["seed"] for c in cells)
    chosen = [c for c in cells if c["seed"] == seed]
    methods = _methods(chosen)
    fig, axes = _subplots(len(methods), (4.2 * len(methods), 4.2))
    for ax, (m, label) in zip(axes, methods):
        c = next(c for c in chosen if c["method"] == m)
        feats, y, seen = extract_features(run_dirs[c["run_id"]], spec.get("max_points", 2000), seed=0)
        xy = tsne_2d(feats, seed=0)
        k = int(y.max()) + 1
        import matplotlib

        cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"]
        colors = cmap(y % cmap.N if k <= 20 else y / max(k - 1, 1))
        ax.scatter(xy[seen, 0], xy[seen, 1], c=colors[seen], s=5, marker="o", lw=0)
        ax.scatter(xy[~seen, 0], xy[~seen, 1], c=colors[~seen], s=9, marker="x", lw=0.6)
        ax.set(title=f"{label} (seed {seed})", xticks=[], yticks=[])
        if log is not None:
            print(f"fig5: {label}: t-SNE of {len(feats)} points from {c['run_id']}", file=log)
    fig.suptitle(_title(spec, cells) + "  (o seen, x novel classes)")
    fig.tight_layout()
    return fig


def fig6(spec: dict, cells: Sequence[dict], run_dirs: dict[str, Path], **_) -> Figure:
    runs = read_results([run_dirs[r] / "result.parquet" for r in dict.fromkeys(c["run_id"] for c in cells)])
    df = pd.DataFrame(list(cells)).merge(runs[["run_id", "n_seen", "acc_novel", "acc_all"]], on="run_id")
    k = {}
    for rid in df["run_id"].unique():  # number of classes = length of the logged pi_hat
        ep = read_epochs(run_dirs[rid])
        k[rid] = len(ep["pi_hat"].iloc[-1]) if "pi_hat" in ep and isinstance(ep["pi_hat"].iloc[-1], list) else math.nan
    df["n_novel"] = df["run_id"].map(k) - df["n_seen"]
    fig, axes = _subplots(4, (16, 3.8))
    panels = [("novel_classes", "n_novel", "acc_novel", "number of novel classes", "(a) novel"),
              ("novel_classes", "n_novel", "acc_all", "number of novel classes", "(b) all"),
              ("label_ratio", "label_ratio", "acc_novel", "labeled ratio of seen classes", "(c) novel"),
              ("label_ratio", "label_ratio", "acc_all", "labeled ratio of seen classes", "(d) all")]
    ylabels = {"acc_novel": "novel-class accuracy (%)", "acc_all": "accuracy, all classes (%)"}
    for ax, (sweep, x, metric, xlabel, title) in zip(axes, panels):
        sub = df[df["variant"] == sweep]
        for i, (m, label) in enumerate(_methods(cells)):
            g = sub[sub["method"] == m].groupby(x)[metric].agg(["mean", "std"]).reset_index()
            if g.empty:
                continue
            xs = g[x] * (100 if x == "label_ratio" else 1)
            ax.errorbar(xs, 100 * g["mean"], yerr=100 * g["std"].fillna(0), label=label, color=_color(m, i),
                        marker="o", ms=4, capsize=3, lw=1.5)
        ax.set(xlabel=xlabel + (" (%)" if x == "label_ratio" else ""), ylabel=ylabels[metric],
               title=f"{title} accuracy")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    c = cells[0]
    fig.suptitle(f"{c.get('dataset_label', c['dataset'])}: (a, b) at {spec.get('label_ratio_fixed', 0.5):.0%} "
                 f"labeled, (c, d) at {spec.get('seen_class_ratio_fixed', 0.5):.0%} seen classes")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# the registry: what each figure draws, which runs it needs, its caption


Cell = tuple[str, float, float, str, str, int]  # method, seen_class_ratio, label_ratio, freeze, variant, seed


def _method_cells(spec: dict, seeds: Sequence[int]) -> Iterator[Cell]:
    """Every method at the figure's one setting."""
    for m in spec["methods"]:
        for seed in seeds:
            yield m, spec["seen_class_ratio"], spec["label_ratio"], spec["freeze"], "", seed


def _sweep_cells(spec: dict, seeds: Sequence[int]) -> Iterator[Cell]:
    """Fig. 6: (a)/(b) a seen-class ratio sweep at a fixed label ratio, (c)/(d) a label-ratio sweep at a
    fixed seen-class ratio; the variant names the sweep."""
    points = [(s, spec["label_ratio_fixed"], "novel_classes") for s in spec["seen_class_ratio"]]
    points += [(spec["seen_class_ratio_fixed"], lr, "label_ratio") for lr in spec["label_ratio"]]
    for m in spec["methods"]:
        for s, lr, sweep in points:
            for seed in seeds:
                yield m, s, lr, "layer4", sweep, seed


@dataclass(frozen=True)
class FigureKind:
    """One kind of figure: ``draw(spec, cells, run_dirs, log=...) -> Figure``; ``cells(spec, seeds)``,
    the runs it needs (``lps.plan``); its report caption; ``one_seed``: by default drawn from the first
    seed only."""

    draw: Callable[..., "Figure"]
    cells: Callable[[dict, Sequence[int]], Iterator[Cell]]
    caption: str
    one_seed: bool = False


FIGURES: dict[str, FigureKind] = {
    "fig2": FigureKind(fig2, _method_cells,
                       "Fig. 2: (a) accuracy gap between seen and novel classes and (b) overall accuracy over "
                       "training epochs (mean over seeds, band = ± std), on the unlabeled training images."),
    "fig4": FigureKind(fig4, _method_cells,
                       "Fig. 4: (a) KL divergence between the estimated class distribution (mean softmax on the "
                       "unlabeled images) and the true one over epochs; (b) the estimated distribution after the "
                       "last epoch, with the expected true distribution of the unlabeled set."),
    "fig5": FigureKind(fig5, _method_cells,
                       "Fig. 5: t-SNE of the backbone features of unlabeled training images after training (one "
                       "seed), coloured by true class; circles = seen classes, crosses = novel classes.",
                       one_seed=True),
    "fig6": FigureKind(fig6, _sweep_cells,
                       "Fig. 6: novel and overall accuracy (a, b) against the number of novel classes and (c, d) "
                       "against the labeled ratio of seen classes (mean ± std over seeds)."),
}


def make_figure(name: str, spec: dict, cells: Sequence[dict], result_files: Iterable[str | Path], png: str | Path,
                pdf: str | Path, log: TextIO | None = None, threads: int = 1) -> None:
    """Draw figure ``name`` (a key of :data:`FIGURES`) and save it as ``png`` and ``pdf``."""
    if name not in FIGURES:
        raise LPSError(f"unknown figure {name!r} (known: {', '.join(FIGURES)})")
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    cells = list(cells)
    fig = FIGURES[name].draw(dict(spec), cells, _run_dirs(cells, result_files), log=log)
    fig.savefig(png, dpi=150)
    fig.savefig(pdf)
    if log is not None:
        print(f"{name}: {len(cells)} runs -> {png}, {pdf}", file=log)
