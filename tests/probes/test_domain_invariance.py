"""LEACE domain erasure and per-domain centring (perturbprobe.probes.domain_invariance)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from perturbprobe.errors import ProbeError
from perturbprobe.probes.domain_invariance import DomainEraser, center_per_domain


def domain_data(n=1200, k=4, width=20, seed=0):
    """Rows whose mean depends strongly on the domain and, along another direction, on the
    label."""
    rng = np.random.default_rng(seed)
    domains = rng.integers(0, k, size=n)
    labels = rng.integers(0, 2, size=n)
    centres = rng.normal(scale=3.0, size=(k, width))
    X = centres[domains] + rng.normal(size=(n, width))
    X[:, 0] += 2.0 * labels  # the label's signal, not tied to the domain
    return X, np.array([f"d{d}" for d in domains]), labels


def test_leace_leaves_a_linear_classifier_of_the_domain_at_chance():
    X, domains, labels = domain_data()
    train, test = slice(0, 800), slice(800, None)
    before = LogisticRegression(max_iter=2000).fit(X[train], domains[train])
    assert before.score(X[test], domains[test]) > 0.95
    eraser = DomainEraser().fit(X[train], domains[train])
    erased = eraser.transform(X)
    after = LogisticRegression(max_iter=2000).fit(erased[train], domains[train])
    chance = max(np.mean(domains[test] == name) for name in np.unique(domains))
    assert after.score(erased[test], domains[test]) < chance + 0.06
    # The class-conditional means coincide on the rows it was fitted on (the LEACE guarantee).
    means = np.array([erased[train][domains[train] == d].mean(0) for d in np.unique(domains)])
    np.testing.assert_allclose(means - means[0], 0, atol=1e-8)
    # What predicts the label survives.
    assert roc_auc_score(labels[test], erased[test][:, 0]) > 0.8


def test_leace_edit_is_low_rank_and_matches_the_library():
    import torch
    from concept_erasure import LeaceEraser

    X, domains, _ = domain_data(n=300, k=3, width=10, seed=1)
    ours = DomainEraser().fit(X, domains)
    onehot = np.eye(3)[np.unique(domains, return_inverse=True)[1]]
    theirs = LeaceEraser.fit(torch.from_numpy(X), torch.from_numpy(onehot))
    expected = theirs(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(ours.transform(X), expected, rtol=1e-10, atol=1e-10)
    assert np.linalg.matrix_rank(ours.transform(X) - X) <= 2  # k - 1


def test_eraser_needs_two_domains():
    X, _, _ = domain_data(n=50)
    with pytest.raises(ProbeError, match="at least two domains"):
        DomainEraser().fit(X, ["one"] * len(X))


def test_centring_subtracts_each_domains_own_mean():
    X, domains, _ = domain_data(n=200)
    centred = center_per_domain(X, domains)
    for name in np.unique(domains):
        rows = domains == name
        np.testing.assert_allclose(centred[rows].mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(centred[rows], X[rows] - X[rows].mean(0))
