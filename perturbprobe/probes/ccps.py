"""The CCPS probes: contrastive encoders with a classifier head (Khanmohammadi et al., 2025).

"Calibrating LLM Confidence by Probing Perturbed Representation Stability" (CCPS,
arXiv:2505.21772) scores an answer with a small network trained in two stages — a contrastive
margin loss shapes the embedding, then a head is fine-tuned jointly with it (see
:mod:`perturbprobe.probes._contrastive`). Two encoders:

- :class:`CCPSProbe` (``"ccps"``): an MLP over the response-level feature vector (n, F);
- :class:`CCPSSequenceProbe` (``"ccps-cnn"``): a 1-D CNN over each response's per-token feature
  matrix (T_i, F), truncated to its first ``max_length`` tokens, with a masked global max-pool
  so that padding never reaches the embedding.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ._contrastive import ACTIVATIONS, WIDTHS, ContrastiveProbe, mlp, widths
from .inputs import ParameterRule, int_at_least

__all__ = ["CCPSProbe", "CCPSSequenceProbe", "MaskedCNNEncoder"]


class CCPSProbe(ContrastiveProbe):
    """CCPS on response-level features: contrastive MLP encoder + MLP head.

    Encoder: ``Linear → activation → Dropout`` for each width in ``hidden``, then ``Linear`` to
    ``embedding_dim``. Head: the same block for each width in ``head_hidden``, then one logit.

    Parameters
    ----------
    hidden : tuple of int, default=(64, 32, 16)
        Encoder hidden widths.
    embedding_dim : int, default=8
        Width E of the contrastive embedding.
    head_hidden : tuple of int, default=(48, 24, 12)
        Head hidden widths.
    activation : str, default="elu"
        One of ``elu, gelu, leaky_relu, relu, selu, silu, tanh``.
    dropout : float in [0, 1), default=0.05
        Dropout after every hidden activation (training only).
    margin : float, default=1.0
        Distance beyond which different-label embeddings stop being pushed apart.
    batch_size : int ≥ 2, default=64
        Mini-batch size; contrastive pairs are formed within a batch.
    lr : float, default=1e-3
        Adam learning rate (both stages).
    weight_decay : float, default=1e-4
        Adam L2 penalty.
    contrastive_epochs : int ≥ 0, default=100
        Maximum epochs of the contrastive stage (0 skips it).
    epochs : int ≥ 1, default=100
        Maximum epochs of the classification stage.
    patience : int, default=10
        Epochs without a lower validation loss before a stage stops.
    validation_fraction : float in (0, 1), default=0.2
        Share of rows (of question groups, when grouped) held out for early stopping.
    random_state : int, RandomState or None, default=0
        Seed of the split, the initialisation, dropout and shuffling.
    device : str, default="cpu"
        Torch device to train and predict on (predictions are bitwise reproducible on CPU).
    pos_label : label or None, default=None
        The label of y meaning "answer correct" (None: ``classes_[1]``); see
        :class:`~perturbprobe.probes.base.Probe`.

    Attributes
    ----------
    network_, standardiser_, contrastive_best_epoch_, classifier_best_epoch_, history_
        See :class:`~perturbprobe.probes._contrastive.ContrastiveProbe`.
    classes_, pos_label_, n_features_in_, feature_names_in_
        See :class:`~perturbprobe.probes.base.Probe`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 5)); y = (X[:, 0] > 0).astype(int)
    >>> CCPSProbe(contrastive_epochs=2, epochs=3).fit(X, y).predict_proba(X[:2]).shape
    (2, 2)
    """

    name: ClassVar[str] = "ccps"
    input_kind: ClassVar[str] = "table"

    def __init__(
        self,
        *,
        hidden=(64, 32, 16),
        embedding_dim=8,
        head_hidden=(48, 24, 12),
        activation="elu",
        dropout=0.05,
        margin=1.0,
        batch_size=64,
        lr=1e-3,
        weight_decay=1e-4,
        contrastive_epochs=100,
        epochs=100,
        patience=10,
        validation_fraction=0.2,
        random_state=0,
        device="cpu",
        pos_label=None,
    ):
        self.hidden = hidden
        self.embedding_dim = embedding_dim
        self.head_hidden = head_hidden
        self.activation = activation
        self.dropout = dropout
        self.margin = margin
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.contrastive_epochs = contrastive_epochs
        self.epochs = epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.pos_label = pos_label

    def _parameter_rules(self) -> list[ParameterRule]:
        return [*super()._parameter_rules(), ("hidden", widths, WIDTHS)]

    def _build_encoder(self, n_features: int) -> nn.Module:
        return mlp(n_features, self.hidden, self.embedding_dim, self.activation, self.dropout)

    def _standardiser_rows(self, X: np.ndarray) -> np.ndarray:
        return X

    def _inputs(self, X: np.ndarray) -> tuple[torch.Tensor]:
        return (torch.from_numpy(self.standardiser_.transform(X)),)  # (n, F)


class MaskedCNNEncoder(nn.Module):
    """1-D CNN over padded token features with a masked global max-pool.

    ``Conv1d(same padding) → activation`` per width in ``channels``, activations zeroed at
    padded positions after every layer (so each response is convolved as if alone, with zero
    padding at its ends), max over real positions only, then ``Linear`` to the embedding.

    Parameters
    ----------
    n_features : int
        F, token features.
    channels : sequence of int
        Output channels of each convolution.
    kernel_size : int
        Convolution width (in tokens).
    embedding_dim : int
        E.
    activation : str
        Key of ``ACTIVATIONS``.
    """

    def __init__(
        self,
        n_features: int,
        channels: Sequence[int],
        kernel_size: int,
        embedding_dim: int,
        activation: str,
    ):
        super().__init__()
        widths = [n_features, *channels]
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, kernel_size, padding="same") for a, b in itertools.pairwise(widths)
        )
        self.activation = ACTIVATIONS[activation]()
        self.project = nn.Linear(widths[-1], embedding_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, F), mask (B, L) True at real tokens (≥ 1 per row) → embeddings (B, E)."""
        keep = mask[:, None, :]  # (B, 1, L)
        h = tokens.transpose(1, 2) * keep  # (B, F, L)
        for conv in self.convs:
            h = self.activation(conv(h)) * keep  # (B, C, L)
        pooled = h.masked_fill(~keep, float("-inf")).amax(dim=2)  # (B, C)
        return self.project(pooled)


class CCPSSequenceProbe(ContrastiveProbe):
    """CCPS on per-token features: contrastive 1-D CNN encoder + MLP head.

    X is a list of n arrays (T_i, F), one per response. Only the **first** ``max_length``
    tokens of a response are used (later tokens are ignored, at fit and at predict); shorter
    responses are padded and masked. Token features are standardised with statistics over all
    used training tokens (missing → median).

    Parameters
    ----------
    channels : tuple of int, default=(64, 32, 16)
        Convolution widths (see :class:`MaskedCNNEncoder`).
    kernel_size : int, default=3
        Convolution width in tokens.
    embedding_dim : int, default=16
        Width E of the contrastive embedding.
    activation : str, default="relu"
        Activation of the convolutions and the head.
    head_hidden : tuple of int, default=(48, 24, 12)
        Head hidden widths.
    dropout : float in [0, 1), default=0.05
        Dropout in the head (the convolutions have none).
    max_length : int, default=30
        Tokens per response read by the CNN (the first ones).
    margin, batch_size, lr, weight_decay, contrastive_epochs, epochs, patience, \
validation_fraction, random_state, device, pos_label
        As in :class:`CCPSProbe`.

    Attributes
    ----------
    network_, standardiser_, contrastive_best_epoch_, classifier_best_epoch_, history_
        See :class:`~perturbprobe.probes._contrastive.ContrastiveProbe`.
    classes_, pos_label_, n_features_in_
        See :class:`~perturbprobe.probes.base.Probe`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = [rng.normal(size=(int(rng.integers(1, 9)), 4)) for _ in range(100)]
    >>> y = np.array([int(x[0, 0] > 0) for x in X])
    >>> probe = CCPSSequenceProbe(contrastive_epochs=1, epochs=2).fit(X, y)
    >>> probe.predict_proba(X[:2]).shape
    (2, 2)
    """

    name: ClassVar[str] = "ccps-cnn"
    input_kind: ClassVar[str] = "sequence"

    def __init__(
        self,
        *,
        channels=(64, 32, 16),
        kernel_size=3,
        embedding_dim=16,
        activation="relu",
        head_hidden=(48, 24, 12),
        dropout=0.05,
        max_length=30,
        margin=1.0,
        batch_size=64,
        lr=1e-3,
        weight_decay=1e-4,
        contrastive_epochs=100,
        epochs=100,
        patience=10,
        validation_fraction=0.2,
        random_state=0,
        device="cpu",
        pos_label=None,
    ):
        self.channels = channels
        self.kernel_size = kernel_size
        self.embedding_dim = embedding_dim
        self.activation = activation
        self.head_hidden = head_hidden
        self.dropout = dropout
        self.max_length = max_length
        self.margin = margin
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.contrastive_epochs = contrastive_epochs
        self.epochs = epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.pos_label = pos_label

    def _parameter_rules(self) -> list[ParameterRule]:
        return [
            *super()._parameter_rules(),
            ("channels", widths, WIDTHS),
            ("kernel_size", int_at_least(1), "an int >= 1"),
            ("max_length", int_at_least(1), "an int >= 1"),
        ]

    def _build_encoder(self, n_features: int) -> nn.Module:
        return MaskedCNNEncoder(
            n_features, self.channels, self.kernel_size, self.embedding_dim, self.activation
        )

    def _standardiser_rows(self, X: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([x[: self.max_length] for x in X])  # (Σ min(T_i, L), F)

    def _inputs(self, X: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = np.array([min(len(x), self.max_length) for x in X])  # (n,)
        rows = self.standardiser_.transform(self._standardiser_rows(X))  # (Σ lengths, F)
        positions = np.arange(self.max_length)
        mask = positions[None, :] < lengths[:, None]  # (n, L), row-major = order of rows
        tokens = np.zeros((len(X), self.max_length, rows.shape[1]), dtype=np.float32)
        tokens[mask] = rows
        return torch.from_numpy(tokens), torch.from_numpy(mask)
