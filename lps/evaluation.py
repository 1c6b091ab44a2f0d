"""Open-world SSL metrics: seen / novel / all accuracy and novel-class NMI.

The protocol follows the released code of LPS, ORCA and NACH (``shared/REFERENCE.md``,
"Protocol shared by ..."):

- seen accuracy: plain accuracy on the samples whose true class is seen (``y_true < n_seen``),
  the head index *is* the prediction, no matching;
- novel accuracy: Hungarian matching (``scipy.optimize.linear_sum_assignment``) between the
  predicted ids and the true classes of the novel-class samples only, so a novel cluster may map
  to any head index (seen ones included);
- all accuracy: a separate Hungarian matching over all samples;
- NMI (Table 2): ``sklearn.metrics.normalized_mutual_info_score`` on the novel-class samples.

All values are fractions in ``[0, 1]``; a group with no samples gives ``nan``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from lps.clustering import max_assignment

__all__ = ["cluster_accuracy", "openssl_metrics"]


def _to_numpy(labels) -> np.ndarray:
    """Array-likes, lists and torch tensors (any device) to a flat numpy array."""
    if hasattr(labels, "detach"):  # torch.Tensor, without importing torch here
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).reshape(-1)


def _as_label_arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _to_numpy(y_true), _to_numpy(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same number of samples, got {y_true.size} and {y_pred.size}"
        )
    return y_true, y_pred


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy under the best one-to-one mapping of predicted ids to true ids.

    Builds the ``[n_true_ids, n_pred_ids]`` contingency matrix (``np.bincount`` on the
    flattened pair index) over the ids that actually occur (they need not be contiguous, start
    at 0, or be as many on both sides), and solves the assignment maximising the matched count
    with ``scipy.optimize.linear_sum_assignment``. With a rectangular matrix the extra
    predicted ids (or classes) stay unmatched and count as errors. This equals the released
    ORCA/LPS ``cluster_acc`` (which pads to a square ``max id + 1`` matrix).

    Args:
        y_true: ``[N]`` true labels (numpy array, list or torch tensor).
        y_pred: ``[N]`` predicted cluster / head ids.

    Returns:
        Fraction of samples correctly mapped, in ``[0, 1]``; ``nan`` for empty input.
    """
    y_true, y_pred = _as_label_arrays(y_true, y_pred)
    n = y_true.size
    if n == 0:
        return float("nan")
    true_ids, true_idx = np.unique(y_true, return_inverse=True)
    pred_ids, pred_idx = np.unique(y_pred, return_inverse=True)
    n_true, n_pred = true_ids.size, pred_ids.size
    counts = np.bincount(true_idx.reshape(-1) * n_pred + pred_idx.reshape(-1), minlength=n_true * n_pred)
    contingency = counts.reshape(n_true, n_pred)
    rows, cols = max_assignment(contingency)
    return float(contingency[rows, cols].sum() / n)


def openssl_metrics(y_true, y_pred, n_seen: int) -> dict:
    """Seen, novel and all accuracy plus novel NMI, as in the released OpenSSL code.

    Args:
        y_true: ``[N]`` true class indices (seen classes are ``0 .. n_seen - 1``).
        y_pred: ``[N]`` predicted head indices (argmax of the classifier).
        n_seen: number of seen classes.

    Returns:
        ``{"acc_seen", "acc_novel", "acc_all", "nmi_novel"}`` as Python floats in ``[0, 1]``:

        - ``acc_seen``: ``mean(y_pred == y_true)`` over samples with ``y_true < n_seen``;
        - ``acc_novel``: :func:`cluster_accuracy` over samples with ``y_true >= n_seen``;
        - ``acc_all``: :func:`cluster_accuracy` over all samples (its own matching);
        - ``nmi_novel``: sklearn NMI over the novel samples.

        A group with no samples yields ``nan`` for its metrics.
    """
    y_true, y_pred = _as_label_arrays(y_true, y_pred)
    if int(n_seen) != n_seen or n_seen < 0:
        raise ValueError(f"n_seen must be a non-negative integer, got {n_seen!r}")
    seen = y_true < n_seen
    novel = ~seen
    acc_seen = float(np.mean(y_pred[seen] == y_true[seen])) if seen.any() else float("nan")
    acc_novel = cluster_accuracy(y_true[novel], y_pred[novel])
    acc_all = cluster_accuracy(y_true, y_pred)
    nmi_novel = (
        float(normalized_mutual_info_score(y_true[novel], y_pred[novel])) if novel.any() else float("nan")
    )
    return {"acc_seen": acc_seen, "acc_novel": acc_novel, "acc_all": acc_all, "nmi_novel": nmi_novel}
