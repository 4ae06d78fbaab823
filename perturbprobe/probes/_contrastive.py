"""Two-stage contrastive training shared by the CCPS probes (Khanmohammadi et al., 2025).

The CCPS classifier (arXiv:2505.21772) first learns an embedding in which answers of the
same correctness lie close together, then a classifier on top of it:

1. **Contrastive stage** — the encoder alone is trained with a margin loss over all pairs
   (i, j), i < j, of a mini-batch of embeddings e::

       d_ij = ‖e_i − e_j‖₂
       ℓ_ij = d_ij²                      if y_i = y_j
              max(0, margin − d_ij)²     otherwise
       L    = mean over pairs of ℓ_ij

   pulling same-label answers together and pushing different-label ones at least ``margin``
   apart.
2. **Classification stage** — a head MLP maps the embedding to one logit; encoder and head are
   trained jointly with binary cross-entropy (the contrastive term is not kept: the encoder
   starts from the contrastive solution and the head's loss fine-tunes it).

Each stage uses Adam (L2 ``weight_decay``) and stops early when its loss on an internal
validation split (grouped by question when ``groups`` is given) has not improved for
``patience`` epochs, restoring the best weights (epoch 0 = the weights the stage started
from). Inputs are standardised with the statistics of the data given to ``fit`` (labels play
no part); missing values become the training medians first.

Determinism: the network is initialised and dropout is drawn from the global torch RNG seeded
with ``random_state`` inside :func:`torch.random.fork_rng` (the caller's RNG state is restored
afterwards), and mini-batches are shuffled by a separate seeded :class:`torch.Generator`, so
two fits with the same ``random_state`` on CPU give identical predictions. Thread settings are
left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ProbeError
from ._scaling import standardisation_scale
from .base import Probe
from .early_stopping import validation_split
from .inputs import ParameterRule, check_parameters, derive_seed, int_at_least, is_int

__all__ = [
    "ACTIVATIONS",
    "WIDTHS",
    "ContrastiveNetwork",
    "ContrastiveProbe",
    "Standardiser",
    "contrastive_loss",
    "contrastive_pair_losses",
    "mlp",
    "widths",
]

logger = logging.getLogger(__name__)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
_PREDICT_CHUNK = 1024  # rows per forward pass at predict time
_WEIGHTS_FILE = "ccps.safetensors"
_META_FILE = "ccps.json"


def mlp(
    in_features: int, hidden: Sequence[int], out_features: int, activation: str, dropout: float
) -> nn.Sequential:
    """``Linear → activation → Dropout`` per hidden width, then ``Linear`` to ``out_features``."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


def contrastive_pair_losses(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float
) -> torch.Tensor:
    """The margin loss ℓ_ij of every pair i < j (see the module docstring).

    Parameters
    ----------
    embeddings : Tensor (B, E)
    labels : Tensor (B,)
    margin : float

    Returns
    -------
    Tensor (B (B − 1) / 2,)
        Pairs in row-major upper-triangle order; empty when B < 2.
    """
    i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=embeddings.device)
    squared = (embeddings[i] - embeddings[j]).square().sum(dim=1)  # (P,)
    # The clamp keeps the gradient of the square root finite for coinciding embeddings.
    distance = squared.clamp_min(1e-12).sqrt()
    apart = (margin - distance).clamp_min(0.0).square()
    return torch.where(labels[i] == labels[j], squared, apart)


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean margin loss over all pairs of a batch: embeddings (B, E), labels (B,) → scalar."""
    return contrastive_pair_losses(embeddings, labels, margin).mean()


@dataclass
class Standardiser:
    """Per-feature training statistics: missing → median, then (x − mean) / scale.

    Attributes
    ----------
    median, mean, scale : ndarray of float64, shape (F,)
        Computed over training rows ignoring NaN; ``scale`` = population std, or the
        magnitude of a column constant up to float32 rounding (:mod:`._scaling`).
    """

    median: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray) -> Standardiser:
        """Statistics of ``rows`` (m, F), float64, NaN = missing."""
        with warnings.catch_warnings():  # all-NaN columns are reported just below
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(rows, axis=0)
        empty = np.flatnonzero(np.isnan(median))
        if empty.size:
            raise ProbeError(
                f"features {empty[:5].tolist()} have no value in the training data the probe "
                "sees; drop them"
            )
        filled = np.where(np.isnan(rows), median, rows)
        std = np.nanstd(rows, axis=0)
        return cls(median, np.nanmean(rows, axis=0), standardisation_scale(filled, std))

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """Standardised float32 copy of ``rows`` (m, F)."""
        filled = np.where(np.isnan(rows), self.median, rows)
        return ((filled - self.mean) / self.scale).astype(np.float32)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"standardiser.{k}": torch.from_numpy(getattr(self, k)) for k in _STAT_NAMES}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Standardiser:
        return cls(*(tensors[f"standardiser.{k}"].numpy() for k in _STAT_NAMES))


_STAT_NAMES = ("median", "mean", "scale")


class ContrastiveNetwork(nn.Module):
    """An encoder to an embedding (B, E) and a head MLP to one logit (B,)."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(*inputs)).squeeze(-1)


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the global RNG of ``device`` (and the CPU's) for the block, then restore both."""
    if device.type == "cpu":
        forked = torch.random.fork_rng(devices=[])
    else:
        forked = torch.random.fork_rng(devices=[device.index or 0], device_type=device.type)
    with forked:
        torch.manual_seed(seed)
        yield


# (inputs, labels) of a batch → the per-element loss terms whose mean is the loss
_LossTerms = Callable[[tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]
WIDTHS = "a non-empty tuple of ints >= 1"


def widths(value: Any) -> bool:
    """Whether ``value`` is a non-empty sequence of layer widths (ints ≥ 1)."""
    return len(value) >= 1 and all(is_int(width, 1) for width in value)


class ContrastiveProbe(Probe):
    """Base of the CCPS probes: standardisation, two-stage training, persistence.

    Subclasses define ``_build_encoder(n_features)``, ``_standardiser_rows(X)`` (the rows of
    the fit data the statistics come from) and ``_inputs(X)`` (the standardised CPU tensors
    the encoder takes).

    Attributes
    ----------
    network_ : ContrastiveNetwork
        Encoder and head, on ``device``, in eval mode.
    standardiser_ : Standardiser
    contrastive_best_epoch_, classifier_best_epoch_ : int
        Epoch whose weights were kept in each stage (0: the stage's starting weights).
    history_ : dict
        ``{"contrastive" | "classifier": {"train": [...], "validation": [...]}}``: mean losses
        per epoch (validation includes epoch 0).
    """

    def _build_encoder(self, n_features: int) -> nn.Module:
        raise NotImplementedError

    def _standardiser_rows(self, X: Any) -> np.ndarray:
        raise NotImplementedError

    def _inputs(self, X: Any) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    @classmethod
    def _state_errors(cls) -> tuple[type[Exception], ...]:
        return (*super()._state_errors(), SafetensorError, RuntimeError)

    def _build_network(self, n_features: int) -> ContrastiveNetwork:
        head = mlp(self.embedding_dim, self.head_hidden, 1, self.activation, self.dropout)
        return ContrastiveNetwork(self._build_encoder(n_features), head)

    def _device(self) -> torch.device:
        try:
            return torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ProbeError(
                f"The 'device' parameter of {type(self).__name__} must be a torch device such "
                f"as 'cpu' or 'cuda:0'. Got {self.device!r} instead."
            ) from exc

    def _parameter_rules(self) -> list[ParameterRule]:
        """(name, predicate, expected) of every checked parameter; encoders add theirs."""
        return [
            ("embedding_dim", int_at_least(1), "an int >= 1"),
            ("head_hidden", widths, WIDTHS),
            ("activation", ACTIVATIONS.__contains__, f"one of {sorted(ACTIVATIONS)}"),
            ("dropout", lambda v: 0 <= v < 1, "a float in [0, 1)"),
            ("margin", lambda v: v > 0, "a float > 0"),
            ("batch_size", int_at_least(2), "an int >= 2"),
            ("lr", lambda v: v > 0, "a float > 0"),
            ("weight_decay", lambda v: v >= 0, "a float >= 0"),
            ("contrastive_epochs", int_at_least(0), "an int >= 0"),
            ("epochs", int_at_least(1), "an int >= 1"),
            ("patience", int_at_least(1), "an int >= 1"),
            ("validation_fraction", lambda v: 0 < v < 1, "a float in (0, 1)"),
        ]

    # -- training ---------------------------------------------------------------------------

    def _fit(self, X: Any, y: np.ndarray, groups, sample_weight) -> None:
        if sample_weight is not None:
            raise ProbeError(
                f"the {self.name} probe does not take sample_weight (its contrastive loss "
                "weighs pairs of rows); use lightgbm, logistic or logistic-cv to weight rows"
            )
        check_parameters(self, self._parameter_rules())
        device = self._device()
        seed = derive_seed(self.random_state)
        split = validation_split(y, groups, self.validation_fraction, seed)
        self.standardiser_ = Standardiser.fit(self._standardiser_rows(X))
        inputs = tuple(t.to(device) for t in self._inputs(X))
        labels = torch.as_tensor(y, dtype=torch.float32, device=device)
        shuffler = torch.Generator().manual_seed(seed)
        with _seeded(device, seed):
            network = self._build_network(inputs[0].shape[-1]).to(device)

            def pair_terms(batch: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
                return contrastive_pair_losses(network.encoder(*batch), target, self.margin)

            def bce_terms(batch: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
                logits = network(*batch)
                return F.binary_cross_entropy_with_logits(logits, target, reduction="none")

            history = {}
            stages = [
                ("contrastive", network.encoder, pair_terms, self.contrastive_epochs),
                ("classifier", network, bce_terms, self.epochs),
            ]
            for stage, trained, terms, epochs in stages:
                best_epoch, history[stage] = self._train_stage(
                    network, trained, terms, inputs, labels, split, epochs, shuffler
                )
                setattr(self, f"{stage}_best_epoch_", best_epoch)
                logger.info("%s %s stage: kept epoch %d", self.name, stage, best_epoch)
        network.eval()
        self.network_ = network
        self.history_ = history

    def _train_stage(
        self,
        network: ContrastiveNetwork,
        trained: nn.Module,
        terms: _LossTerms,
        inputs: tuple[torch.Tensor, ...],
        labels: torch.Tensor,
        split: tuple[np.ndarray, np.ndarray],
        epochs: int,
        shuffler: torch.Generator,
    ) -> tuple[int, dict[str, list[float]]]:
        """Train ``trained``'s parameters with early stopping; keep the best weights.

        Returns the kept epoch and the per-epoch mean train / validation losses.
        """
        train, validation = (torch.as_tensor(rows, device=labels.device) for rows in split)
        optimiser = torch.optim.Adam(
            trained.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        curves: dict[str, list[float]] = {"train": [], "validation": []}
        best_loss = self._validation_loss(network, terms, inputs, labels, validation)
        curves["validation"].append(best_loss)
        best_epoch, best_state = 0, _snapshot(network)
        for epoch in range(1, epochs + 1):
            network.train()
            order = train[torch.randperm(len(train), generator=shuffler).to(train.device)]
            batch_losses = []
            for rows in order.split(self.batch_size):
                batch_terms = terms(tuple(t[rows] for t in inputs), labels[rows])
                if batch_terms.numel() == 0:  # a one-row remainder has no pairs
                    continue
                loss = batch_terms.mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                batch_losses.append(loss.detach())
            curves["train"].append(float(torch.stack(batch_losses).mean()))
            loss = self._validation_loss(network, terms, inputs, labels, validation)
            curves["validation"].append(loss)
            if loss < best_loss:
                best_loss, best_epoch, best_state = loss, epoch, _snapshot(network)
            elif epoch - best_epoch >= self.patience:
                break
        network.load_state_dict(best_state)
        return best_epoch, curves

    def _validation_loss(
        self,
        network: ContrastiveNetwork,
        terms: _LossTerms,
        inputs: tuple[torch.Tensor, ...],
        labels: torch.Tensor,
        rows: torch.Tensor,
    ) -> float:
        """Mean loss term over the validation rows, in fixed batches of ``batch_size``
        (contrastive pairs are formed within a batch, as in training)."""
        network.eval()
        with torch.no_grad():
            chunks = [
                terms(tuple(t[r] for t in inputs), labels[r]) for r in rows.split(self.batch_size)
            ]
        return float(torch.cat(chunks).mean())

    # -- prediction and persistence ---------------------------------------------------------

    def _predict_positive(self, X: Any) -> np.ndarray:
        device = next(self.network_.parameters()).device
        self.network_.eval()
        logits = []
        with torch.no_grad():
            for start in range(0, len(X), _PREDICT_CHUNK):  # bounded memory for padded tokens
                inputs = self._inputs(X[start : start + _PREDICT_CHUNK])
                logits.append(self.network_(*(t.to(device) for t in inputs)))
        return torch.sigmoid(torch.cat(logits)).double().cpu().numpy()

    def _write_state(self, directory: Path) -> list[str]:
        tensors = {
            f"network.{k}": v.detach().cpu().contiguous()
            for k, v in self.network_.state_dict().items()
        }
        save_file({**tensors, **self.standardiser_.tensors()}, str(directory / _WEIGHTS_FILE))
        metadata = {
            "probe": self.name,
            **self._fitted_metadata(),
            "contrastive_best_epoch": self.contrastive_best_epoch_,
            "classifier_best_epoch": self.classifier_best_epoch_,
            "history": {
                stage: {
                    part: [_finite_or_none(v) for v in values] for part, values in curves.items()
                }
                for stage, curves in self.history_.items()
            },
        }
        (directory / _META_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
        return [_WEIGHTS_FILE, _META_FILE]

    def _read_state(self, directory: Path) -> None:
        metadata = json.loads((directory / _META_FILE).read_text())
        tensors = load_file(str(directory / _WEIGHTS_FILE), device="cpu")
        self._restore_metadata(metadata)
        network = self._build_network(self.n_features_in_)
        prefix = "network."
        network.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True
        )
        self.standardiser_ = Standardiser.from_tensors(tensors)
        if self.standardiser_.median.shape != (self.n_features_in_,):
            raise ValueError(f"{_WEIGHTS_FILE}: standardiser does not match n_features_in")
        self.network_ = network.to(self._device()).eval()
        self.contrastive_best_epoch_ = int(metadata["contrastive_best_epoch"])
        self.classifier_best_epoch_ = int(metadata["classifier_best_epoch"])
        self.history_ = metadata["history"]


def _snapshot(network: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: a diverged loss is written as null."""
    return value if math.isfinite(value) else None
