"""Removing what identifies the domain from probe inputs, so a probe cannot rank answers by
recognising the kind of question.

Activations encode the topic very well, and domains differ in accuracy (2 %–81 % on the
default LLM's built-in domains): a probe fitted on a mixture can win a pooled AUROC by telling
domains apart, which is worth nothing on a new one. Two transforms of an (n, K) input:

- :class:`DomainEraser` — LEACE (Belrose et al. 2023, the ``concept-erasure`` library): the
  least-squares affine map after which *no linear classifier* can predict the domain better
  than a constant (the class-conditional means coincide), fitted on the training domains;
- :func:`center_per_domain` — subtract each domain's own mean, computed on that domain's
  answers without labels (for a new domain: its unlabelled answers).

Which helps is measured leave-one-domain-out by ``benchmarks/domain_transfer.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ProbeError

__all__ = ["DomainEraser", "center_per_domain"]


class DomainEraser:
    """LEACE eraser of the domain from an input matrix.

    After :meth:`fit` on rows ``X`` (n, K) with domains (n,), :meth:`transform` maps any
    (m, K) input to ``X - ((X - bias) @ right.T) @ left.T``, a rank-(k - 1) edit of the
    identity (k domains) stored as two (K, k) matrices and a bias (K,), float64.
    """

    def fit(self, X: np.ndarray, domains: Sequence) -> DomainEraser:
        """Fit on rows ``X`` (n, K) labelled with their ``domains`` (n,), at least two."""
        import torch
        from concept_erasure import LeaceEraser

        X = np.asarray(X, dtype=np.float64)
        names, index = np.unique(np.asarray(domains, dtype=str), return_inverse=True)
        if X.ndim != 2 or len(index) != len(X):
            raise ProbeError(f"X must be (n, K) with one domain per row; got {X.shape}")
        if len(names) < 2:
            raise ProbeError("erasing the domain needs rows of at least two domains")
        onehot = np.eye(len(names))[index]
        eraser = LeaceEraser.fit(torch.from_numpy(X), torch.from_numpy(onehot))
        self.domains_ = [str(name) for name in names]
        self.left_ = eraser.proj_left.numpy().astype(np.float64)
        self.right_ = eraser.proj_right.numpy().astype(np.float64)
        self.bias_ = eraser.bias.numpy().astype(np.float64)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The erased input (m, K), float64."""
        X = np.asarray(X, dtype=np.float64)
        return X - ((X - self.bias_) @ self.right_.T) @ self.left_.T


def center_per_domain(X: np.ndarray, domains: Sequence) -> np.ndarray:
    """``X`` (n, K) with each domain's mean row subtracted (float64); labels are not used."""
    X = np.asarray(X, dtype=np.float64)
    domains = np.asarray(domains, dtype=str)
    out = np.empty_like(X)
    for name in np.unique(domains):
        rows = domains == name
        out[rows] = X[rows] - X[rows].mean(axis=0)
    return out
