"""The stacking probe: one base probe per feature family, combined on their logits.

A single probe fitted on all features lets a wide block (thousands of hidden-state columns)
drown weak but complementary families (a few dozen baseline or CCPS columns): their signal is
shrunk with the rest, or never split on. Stacking gives every family its own probe and learns
how much to trust each:

1. X's columns are cut into consecutive groups (``column_groups``, e.g.
   ``(("hidden_states", 2880), ("baseline", 34), ("ccps", 456))``);
2. every group gets a base probe — by default ``logistic-cv`` for a wide group (more than 64
   columns, or named in ``wide_groups``: the FeatureSet's wide blocks when
   :func:`~perturbprobe.training.fit_bundle` builds it), ``lightgbm`` otherwise
   (``base_probes`` overrides);
3. out-of-fold predictions of each base probe by K-fold cross-validation
   (:func:`~perturbprobe.probes.logistic_cv.cv_folds`: grouped by question when ``groups`` is
   given, the same folds for every group); a ``logistic-cv`` base chooses its C once, on all
   rows, and its fold fits reuse it (6× cheaper; a slight optimism in its out-of-fold scores);
4. a logistic regression (the meta-model, ``C=meta_C``) on the logits of those out-of-fold
   probabilities, clipped to [1e-6, 1 − 1e-6];
5. every base probe fitted on all rows.

P(correct) = σ(b + Σ_g a_g · logit p_g(x_g)), with p_g the refitted base probe of group g on
its columns x_g. ``groups`` and ``sample_weight`` are passed to every base-probe fit and the
weights to the meta-model.

Persistence never unpickles: each base probe writes its own state (its ``save_state``) into a
subdirectory ``stacking-<i>/`` and ``stacking.json`` holds the groups, the base probes' names
and parameters and the meta-model's coefficients.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from ..errors import ProbeError
from .base import Probe, make_probe, probe_class
from .inputs import ParameterRule, check_parameters, derive_seed, int_at_least
from .logistic_cv import cv_folds
from .state import read_json

__all__ = [
    "WIDE_GROUP_COLUMNS",
    "StackingProbe",
    "column_groups_from_names",
    "default_base_probe",
]

WIDE_GROUP_COLUMNS = 64
"""A column group wider than this gets a ``logistic-cv`` base probe by default."""

_META_FILE = "stacking.json"
_SUBDIRECTORY = "stacking-{}"
_CLIP = 1e-6
_IMPUTED = r".*imputed with the training medians"  # already said once by the stacking fit


def default_base_probe(group_name: str, n_columns: int, wide_groups: Sequence[str] = ()) -> str:
    """The base probe a column group gets unless ``base_probes`` names one: ``logistic-cv``
    for a wide group (more than :data:`WIDE_GROUP_COLUMNS` columns, or one of
    ``wide_groups``), ``lightgbm`` otherwise."""
    if n_columns > WIDE_GROUP_COLUMNS or group_name in wide_groups:
        return "logistic-cv"
    return "lightgbm"


def column_groups_from_names(columns: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``column_groups`` from ``family/feature`` column names: consecutive runs of one family.

    Examples
    --------
    >>> column_groups_from_names(["hidden_states/h0", "hidden_states/h1", "baseline/margin"])
    (('hidden_states', 2), ('baseline', 1))
    """
    runs: list[list[Any]] = []
    for column in columns:
        family = str(column).split("/", 1)[0]
        if runs and runs[-1][0] == family:
            runs[-1][1] += 1
        else:
            runs.append([family, 1])
    return tuple((family, count) for family, count in runs)


def _pairs(value: Any, second: Any) -> bool:
    """Whether ``value`` is a sequence of (str, x) pairs with distinct names and
    ``second(x)``."""
    if isinstance(value, (str, bytes, dict)) or len(value) == 0:
        return False
    names = []
    for pair in value:
        if isinstance(pair, (str, bytes)) or len(pair) != 2:
            return False
        name, item = pair
        if not isinstance(name, str) or not second(item):
            return False
        names.append(name)
    return len(set(names)) == len(names)


def _names(value: Any) -> bool:
    """Whether ``value`` is a sequence of strings (not a string itself)."""
    return not isinstance(value, (str, bytes)) and all(isinstance(n, str) for n in value)


# The parameters of the plan (checked at fit and at load), then those of the fit alone.
_PLAN_RULES: tuple[ParameterRule, ...] = (
    (
        "column_groups",
        lambda v: v is None or _pairs(v, int_at_least(1)),
        "None or a non-empty sequence of (group name, number of columns >= 1) pairs with "
        "distinct names",
    ),
    (
        "base_probes",
        lambda v: v is None or _pairs(v, lambda p: isinstance(p, str)),
        "None or a non-empty sequence of (group name, probe name) pairs",
    ),
    (
        "base_params",
        lambda v: v is None or _pairs(v, lambda p: isinstance(p, dict)),
        "None or a non-empty sequence of (group name, parameter dict) pairs",
    ),
    ("wide_groups", lambda v: v is None or _names(v), "None or a sequence of column group names"),
)
_FIT_RULES: tuple[ParameterRule, ...] = (
    ("n_folds", int_at_least(2), "an int >= 2"),
    (
        "meta_C",
        lambda v: isinstance(v, numbers.Real) and math.isfinite(v) and v > 0,
        "a finite float > 0",
    ),
)


def _json_ready(value: Any) -> Any:
    """Parameters as JSON values: tuples become lists, numpy scalars Python ones."""
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _CLIP, 1.0 - _CLIP)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class _Base:
    """One column group and the probe it gets."""

    group: str
    start: int
    stop: int
    probe: str
    params: dict[str, Any]


class StackingProbe(Probe):
    """One base probe per column group, combined by a logistic regression on their logits.

    Parameters
    ----------
    column_groups : sequence of (str, int) pairs, or None, default=None
        Consecutive column ranges of X, in order: ``(group name, number of columns)``; the
        counts must add up to X's width. None: one group ``"features"`` of all columns
        (:func:`column_groups_from_names` builds the pairs from ``family/feature`` names).
    base_probes : sequence of (str, str) pairs, or None, default=None
        ``(group name, probe name)`` overrides of the default rule
        (:func:`default_base_probe`: ``logistic-cv`` for a group of more than 64 columns or
        named in ``wide_groups``, ``lightgbm`` otherwise); any registered table probe but
        ``stacking``.
    wide_groups : sequence of str, or None, default=None
        Column groups that are wide blocks of one kind (e.g. a FeatureSet's
        ``block_layouts``, such as ``hidden_states``), given ``logistic-cv`` by default
        whatever their width.
    base_params : sequence of (str, dict) pairs, or None, default=None
        ``(group name, constructor parameters)`` of a group's base probe, JSON values (e.g.
        ``(("baseline", {"n_estimators": 100}),)``); the others get their defaults. Every base
        probe gets ``random_state`` = this probe's seed unless its parameters set one.
    n_folds : int ≥ 2, default=5
        K of the out-of-fold predictions.
    meta_C : float > 0, default=1.0
        Inverse L2 strength of the meta-model.
    random_state : int, RandomState or None, default=0
        Seed of the folds and of the base probes.
    pos_label : label or None, default=None
        The label of y meaning "answer correct" (None: ``classes_[1]``); see
        :class:`~perturbprobe.probes.base.Probe`.

    Attributes
    ----------
    base_probes_ : list of Probe
        The base probes refitted on all rows, in group order.
    group_names_ : list of str
        The column groups, in order.
    meta_coef_ : ndarray of float64, shape (n_groups,)
        Weight of each base probe's logit.
    meta_intercept_ : float
        Intercept of the meta-model.
    group_log_loss_ : dict of str to float
        Out-of-fold (weighted) log-loss of each group's base probe: how good each family is
        alone.
    oof_predictions_ : ndarray of float64, shape (n, n_groups)
        The out-of-fold P(correct) of each base probe, the meta-model's training inputs (not
        saved).
    classes_, pos_label_, n_features_in_, feature_names_in_
        See :class:`~perturbprobe.probes.base.Probe`.

    Notes
    -----
    State files: ``stacking.json`` and, for base probe i, its own files under
    ``stacking-<i>/`` (e.g. ``stacking-0/logistic-cv.safetensors``); a fit costs
    ``n_folds + 1`` fits of every base probe.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 6)); y = (X[:, 0] + X[:, 4] > 0).astype(int)
    >>> probe = StackingProbe(
    ...     column_groups=(("a", 3), ("b", 3)), base_probes=(("a", "logistic"), ("b", "logistic"))
    ... ).fit(X, y)
    >>> probe.predict_proba(X[:2]).shape
    (2, 2)
    """

    name: ClassVar[str] = "stacking"
    input_kind: ClassVar[str] = "table"

    def __init__(
        self,
        *,
        column_groups=None,
        base_probes=None,
        base_params=None,
        wide_groups=None,
        n_folds=5,
        meta_C=1.0,
        random_state=0,
        pos_label=None,
    ):
        self.column_groups = column_groups
        self.base_probes = base_probes
        self.base_params = base_params
        self.wide_groups = wide_groups
        self.n_folds = n_folds
        self.meta_C = meta_C
        self.random_state = random_state
        self.pos_label = pos_label

    # -- the plan: groups and their probes -----------------------------------------------------

    def _plan(self, n_features: int, seed: int) -> list[_Base]:
        """Every column group with its range, probe name and constructor parameters."""
        check_parameters(self, _PLAN_RULES)
        groups = (("features", n_features),) if self.column_groups is None else self.column_groups
        names = [name for name, _ in groups]
        total = sum(int(n) for _, n in groups)
        if total != n_features:
            described = ", ".join(f"{name}: {int(n)}" for name, n in groups)
            raise ProbeError(
                f"column_groups cover {total} columns ({described}) but X has {n_features}; "
                "they must be consecutive column ranges adding up to X's width"
            )
        chosen = dict(self.base_probes or ())
        params = dict(self.base_params or ())
        wide = dict.fromkeys(self.wide_groups or ())
        for what, mapping in (
            ("base_probes", chosen),
            ("base_params", params),
            ("wide_groups", wide),
        ):
            unknown = sorted(set(mapping) - set(names))
            if unknown:
                raise ProbeError(
                    f"{what} names column group(s) {', '.join(map(repr, unknown))}, which are "
                    f"not in column_groups ({', '.join(names)})"
                )
        plan, start = [], 0
        for name, n in groups:
            probe = chosen.get(name, default_base_probe(name, int(n), self.wide_groups or ()))
            cls = probe_class(probe)
            if cls.input_kind != "table" or probe == self.name:
                raise ProbeError(
                    f"the base probe of column group {name!r} must be a table probe other than "
                    f"stacking; got {probe!r}"
                )
            settings = {"random_state": seed, **params.get(name, {})}
            make_probe(probe, **settings)  # unknown parameters: refused before any fit
            plan.append(_Base(name, start, start + int(n), probe, settings))
            start += int(n)
        return plan

    # -- fit ----------------------------------------------------------------------------------

    def _fit(self, X: np.ndarray, y: np.ndarray, groups, sample_weight) -> None:
        check_parameters(self, _FIT_RULES)
        seed = derive_seed(self.random_state)
        plan = self._plan(X.shape[1], seed)
        folds = cv_folds(y, groups, self.n_folds, seed)
        oof = np.empty((len(y), len(plan)))
        fitted = []
        for g, base in enumerate(plan):
            columns = X[:, base.start : base.stop]
            full = _fit_base(base, columns, y, groups, sample_weight, None, "all rows")
            fold_base = _with_chosen_regularisation(base, full)
            for k, (train, validation) in enumerate(folds):
                probe = _fit_base(fold_base, columns, y, groups, sample_weight, train, f"fold {k}")
                oof[validation, g] = probe.predict_positive(columns[validation])
            fitted.append(full)
        meta = LogisticRegression(C=self.meta_C).fit(_logit(oof), y, sample_weight=sample_weight)
        self.base_probes_ = fitted
        self.group_names_ = [base.group for base in plan]
        self.meta_coef_ = np.asarray(meta.coef_[0], dtype=np.float64)
        self.meta_intercept_ = float(meta.intercept_[0])
        self.oof_predictions_ = oof
        self.group_log_loss_ = {
            base.group: float(log_loss(y, oof[:, g], sample_weight=sample_weight, labels=[0, 1]))
            for g, base in enumerate(plan)
        }

    # -- predict ------------------------------------------------------------------------------

    def _base_predictions(self, X: np.ndarray) -> np.ndarray:
        """P(correct) of every base probe on its columns, float64 (n, n_groups)."""
        predictions, start = [], 0
        for probe in self.base_probes_:
            stop = start + probe.n_features_in_
            predictions.append(probe.predict_positive(X[:, start:stop]))
            start = stop
        return np.column_stack(predictions)

    def _predict_positive(self, X: np.ndarray) -> np.ndarray:
        logits = _logit(self._base_predictions(X))
        return expit(logits @ self.meta_coef_ + self.meta_intercept_)

    # -- persistence --------------------------------------------------------------------------

    def _write_state(self, directory: Path) -> list[str]:
        names = []
        entries = []
        for i, probe in enumerate(self.base_probes_):
            subdirectory = _SUBDIRECTORY.format(i)
            (directory / subdirectory).mkdir(exist_ok=True)
            written = probe.save_state(directory / subdirectory)
            names.extend(f"{subdirectory}/{name}" for name in written)
            entries.append(
                {
                    "group": self.group_names_[i],
                    "n_columns": int(probe.n_features_in_),
                    "probe": probe.name,
                    "params": _json_ready(probe.get_params(deep=False)),
                }
            )
        metadata = {
            "base_probes": entries,
            "meta_coef": self.meta_coef_.tolist(),
            "meta_intercept": self.meta_intercept_,
            "group_log_loss": self.group_log_loss_,
            **self._fitted_metadata(),
        }
        (directory / _META_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        return [_META_FILE, *names]

    def _read_state(self, directory: Path) -> None:
        metadata = read_json(directory / _META_FILE)
        self._restore_metadata(metadata)
        plan = self._plan(self.n_features_in_, 0)  # names and ranges; params come from the file
        entries = metadata["base_probes"]
        saved = [(e["group"], e["n_columns"], e["probe"]) for e in entries]
        expected = [(b.group, b.stop - b.start, b.probe) for b in plan]
        if saved != expected:
            raise ValueError(
                f"{_META_FILE} holds base probes {saved}, the parameters say {expected}"
            )
        meta_coef = np.asarray(metadata["meta_coef"], dtype=np.float64)
        if meta_coef.shape != (len(plan),):
            raise ValueError(
                f"{_META_FILE} has {meta_coef.size} meta coefficients for {len(plan)} groups"
            )
        self.base_probes_ = [
            probe_class(entry["probe"]).load_state(
                directory / _SUBDIRECTORY.format(i), entry["params"]
            )
            for i, entry in enumerate(entries)
        ]
        for entry, probe in zip(entries, self.base_probes_, strict=True):
            if probe.n_features_in_ != entry["n_columns"]:
                raise ValueError(
                    f"the {entry['probe']} base probe of group {entry['group']!r} reads "
                    f"{probe.n_features_in_} columns, {_META_FILE} says {entry['n_columns']}"
                )
        self.group_names_ = [entry["group"] for entry in entries]
        self.meta_coef_ = meta_coef
        self.meta_intercept_ = float(metadata["meta_intercept"])
        self.group_log_loss_ = {str(k): float(v) for k, v in metadata["group_log_loss"].items()}


def _fit_base(
    base: _Base,
    columns: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None,
    sample_weight: np.ndarray | None,
    rows: np.ndarray | None,
    where: str,
) -> Probe:
    """The group's base probe fitted on ``rows`` (a fold's training part; None: all rows)."""
    if rows is not None:
        columns, y = columns[rows], y[rows]
        groups = None if groups is None else groups[rows]
        sample_weight = None if sample_weight is None else sample_weight[rows]
    probe = make_probe(base.probe, **base.params)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_IMPUTED)
            probe.fit(columns, y, groups=groups, sample_weight=sample_weight)
    except ProbeError as exc:
        raise ProbeError(
            f"the {base.probe} base probe of column group {base.group!r} failed ({where}): {exc}"
        ) from exc
    return probe


def _with_chosen_regularisation(base: _Base, full: Probe) -> _Base:
    """The fold fits of a ``logistic-cv`` base reuse the C its all-rows fit chose (one inner
    cross-validation per group instead of one per fold: 6× cheaper). The out-of-fold
    predictions then see one hyper-parameter chosen with their rows — a slight optimism
    the meta-model's weight on that group inherits."""
    if base.probe != "logistic-cv":
        return base
    return dataclasses.replace(base, params={**base.params, "Cs": (float(full.C_),)})
