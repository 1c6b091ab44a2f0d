"""Tests for lps.evaluation (Hungarian cluster accuracy and the OpenSSL metric set)."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from lps.evaluation import cluster_accuracy, openssl_metrics


def _brute_force_cluster_accuracy(y_true, y_pred):
    """Try every injective mapping of predicted ids to true ids (tiny inputs only)."""
    t_ids, p_ids = sorted(set(y_true)), sorted(set(y_pred))
    best = 0
    targets = t_ids + [None] * max(0, len(p_ids) - len(t_ids))  # None = unmatched
    for perm in permutations(targets, len(p_ids)):
        mapping = dict(zip(p_ids, perm))
        best = max(best, sum(mapping[p] == t for t, p in zip(y_true, y_pred)))
    return best / len(y_true)


# ---------------------------------------------------------------------------------------------
# cluster_accuracy
# ---------------------------------------------------------------------------------------------


def test_permuted_labelling_is_perfect():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    perm = {0: 2, 1: 0, 2: 1}
    y_pred = np.array([perm[v] for v in y_true])
    assert cluster_accuracy(y_true, y_pred) == 1.0


def test_hand_computed_3x3_confusion():
    # contingency (rows: true 0,1,2; columns: predicted 0,1,2)
    #   true 0: pred 0 x3, pred 1 x2      -> [3, 2, 0]
    #   true 1: pred 0 x3                 -> [3, 0, 0]
    #   true 2: pred 2 x1                 -> [0, 0, 1]
    # best one-to-one: 0->1 (2) + 1->0 (3) + 2->2 (1) = 6 of 9.
    # (greedy on the largest cell would give 3 + 0 + 1 = 4; many-to-one majority 3 + 3 + 1 = 7)
    y_true = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 0, 0, 2])
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(6 / 9)
    brute_force = _brute_force_cluster_accuracy(list(y_true), list(y_pred))
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(brute_force)


def test_rectangular_and_non_contiguous_ids():
    # more predicted clusters than classes: 0 -> 3 (2 hits), 1 -> 7 or 9 (1 hit)
    assert cluster_accuracy(np.array([0, 0, 1, 1]), np.array([3, 3, 7, 9])) == pytest.approx(3 / 4)
    # fewer predicted clusters than classes: one cluster can serve only one class
    assert cluster_accuracy(np.array([0, 1, 2]), np.array([5, 5, 5])) == pytest.approx(1 / 3)
    # non-contiguous true ids, e.g. novel classes 50..52 predicted by head ids 0..
    assert cluster_accuracy(np.array([50, 50, 52, 51]), np.array([1, 1, 0, 4])) == 1.0


def test_cluster_accuracy_matches_brute_force_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 12))
        y_true = list(rng.integers(0, 3, n))
        y_pred = list(rng.integers(0, 4, n))
        assert cluster_accuracy(np.array(y_true), np.array(y_pred)) == pytest.approx(
            _brute_force_cluster_accuracy(y_true, y_pred)
        )


def test_cluster_accuracy_empty_and_mismatch():
    assert math.isnan(cluster_accuracy(np.array([], dtype=int), np.array([], dtype=int)))
    with pytest.raises(ValueError, match="same number of samples"):
        cluster_accuracy(np.array([0, 1]), np.array([0]))


# ---------------------------------------------------------------------------------------------
# openssl_metrics
# ---------------------------------------------------------------------------------------------


def test_openssl_metrics_hand_made_example():
    n_seen = 2
    y_true = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    y_pred = np.array([0, 0, 1, 0, 3, 3, 2, 2])
    m = openssl_metrics(y_true, y_pred, n_seen)
    assert set(m) == {"acc_seen", "acc_novel", "acc_all", "nmi_novel"}
    assert m["acc_seen"] == pytest.approx(3 / 4)  # plain accuracy, one seen sample wrong
    assert m["acc_novel"] == pytest.approx(1.0)  # novel clusters permuted (2 <-> 3)
    # all: 0->0 (2) + 1->1 (1) + 2->3 (2) + 3->2 (2) = 7 of 8
    assert m["acc_all"] == pytest.approx(7 / 8)
    assert m["nmi_novel"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in m.values())


def test_seen_accuracy_uses_no_matching():
    # seen classes predicted with swapped head ids: 0% seen accuracy, 100% after matching
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([1, 1, 0, 0, 2, 2])
    m = openssl_metrics(y_true, y_pred, n_seen=2)
    assert m["acc_seen"] == 0.0
    assert m["acc_all"] == 1.0


def test_novel_cluster_may_map_to_a_seen_head():
    y_true = np.array([0, 1, 2, 2, 3])
    y_pred = np.array([0, 1, 0, 0, 1])  # novel samples land on seen head ids
    m = openssl_metrics(y_true, y_pred, n_seen=2)
    assert m["acc_seen"] == 1.0
    assert m["acc_novel"] == 1.0  # separate matching on novel rows only
    # one matching for all: head 0 -> class 2 (2 hits), head 1 -> class 1 (1 hit); 3 of 5
    assert m["acc_all"] == pytest.approx(3 / 5)


def test_empty_groups_give_nan():
    m = openssl_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), n_seen=2)
    assert m["acc_seen"] == pytest.approx(2 / 3)
    assert math.isnan(m["acc_novel"]) and math.isnan(m["nmi_novel"])
    assert m["acc_all"] == pytest.approx(2 / 3)
    m = openssl_metrics(np.array([2, 3]), np.array([1, 0]), n_seen=2)
    assert math.isnan(m["acc_seen"])
    assert m["acc_novel"] == 1.0
    m = openssl_metrics(np.array([], dtype=int), np.array([], dtype=int), n_seen=2)
    assert all(math.isnan(v) for v in m.values())


def test_nmi_equals_sklearn_on_novel_rows():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 10, 200)
    y_pred = rng.integers(0, 10, 200)
    m = openssl_metrics(y_true, y_pred, n_seen=5)
    novel = y_true >= 5
    assert m["nmi_novel"] == pytest.approx(normalized_mutual_info_score(y_true[novel], y_pred[novel]))
    assert m["acc_novel"] == pytest.approx(cluster_accuracy(y_true[novel], y_pred[novel]))
    assert m["acc_seen"] == pytest.approx(np.mean(y_pred[~novel] == y_true[~novel]))
    for v in m.values():
        assert 0.0 <= v <= 1.0


def test_openssl_metrics_rejects_bad_n_seen():
    with pytest.raises(ValueError, match="n_seen"):
        openssl_metrics(np.array([0]), np.array([0]), n_seen=-1)


def test_accepts_torch_tensors_and_lists():
    import torch

    y_true = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    y_pred = torch.tensor([0, 0, 1, 0, 3, 3, 2, 2])
    from_torch = openssl_metrics(y_true, y_pred, 2)
    from_numpy = openssl_metrics(y_true.numpy(), y_pred.numpy(), 2)
    assert from_torch == from_numpy
    assert cluster_accuracy(y_true.tolist(), y_pred.tolist()) == pytest.approx(7 / 8)
