"""The cross-validated logistic probe: a linear probe for wide, small data.

Built for residual-stream activations (SAPLMA-style probes: a few thousand answers × a few
thousand hidden-state columns), where a fixed regularisation strength either over- or
under-fits. The pipeline is

1. median imputation of missing values;
2. standardisation (mean 0, standard deviation 1; constant columns are only centred);
3. optionally PCA (``n_components``: a number of components, or the share of variance to keep),
   optionally whitened;
4. L2-regularised logistic regression (L-BFGS) whose strength ``1 / C`` is chosen from the grid
   ``Cs`` by K-fold cross-validation on the (weighted) log-loss, then refitted on all rows.

The inner folds (:func:`cv_folds`) are a :class:`~sklearn.model_selection.StratifiedGroupKFold`
on ``groups`` when given — all answers to one question lie in the same fold, so the selection
measures generalisation to new questions — else a :class:`~sklearn.model_selection.
StratifiedKFold`, shuffled with ``random_state``. Each fold's imputation, scaling and PCA are
estimated on its training part only (no leakage into the validation part). In each fold the C
grid is walked from the smallest C (strongest shrinkage) up, every fit warm-started from the
previous solution, and the walk stops once the validation loss has risen at two consecutive
Cs (the loss is U-shaped in C, and the fits past its minimum are the slowest); the Cs a fold
did not reach count as +inf in the mean.

``sample_weight`` enters every logistic loss (fold fits and the final refit) and the
selection's log-loss. The preprocessing statistics (medians, means, standard deviations, PCA)
are unweighted, estimated from the rows of positive weight, so a row of weight 0 is the same
as a row dropped (for the same folds).

Persistence never unpickles: the fitted arrays (medians, mean, scale, PCA mean, components and
scale, coefficients, intercept) are float64 tensors in ``logistic-cv.safetensors``, the
settings and the cross-validation table are in ``logistic-cv.json``. Predictions are computed
from exactly these arrays by one numpy code path (:meth:`LogisticCVProbe._predict_positive`),
after a fit and after a load alike, so a loaded probe predicts bitwise identically.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from joblib import Parallel, delayed
from safetensors import SafetensorError
from scipy.special import expit
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from ..errors import PerturbprobeWarning, ProbeError
from ._scaling import standardisation_scale
from .base import Probe
from .inputs import ParameterRule, check_parameters, derive_seed, int_at_least, is_int
from .state import check_shapes, read_arrays, read_json, write_arrays

__all__ = ["DEFAULT_CS", "LogisticCVProbe", "cv_folds"]

DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 13))
"""The default C grid: 13 values from 1e-4 to 1e2, half a decade apart."""
# A fold's C path stops after the validation log-loss rose at this many consecutive Cs: the
# loss of L2 logistic regression is U-shaped in C, and the large-C fits past the minimum are
# the slowest (near-separable wide data). On the default LLM's 2,880 activations the minimum
# is at C = 1e-3 and the path stops after 5 of 13 fits.
_PATH_PATIENCE = 2

_ARRAYS_FILE = "logistic-cv.safetensors"
_META_FILE = "logistic-cv.json"
_PCA_ARRAYS = ("pca_mean", "pca_components", "pca_scale")


def cv_folds(
    y: np.ndarray,
    groups: np.ndarray | None,
    n_folds: int,
    random_state: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The K cross-validation folds the probes of this package select and stack with.

    Parameters
    ----------
    y : ndarray of int, shape (n,)
        Labels in {0, 1}.
    groups : ndarray, shape (n,), or None
        Question of each row: with groups, a shuffled :class:`StratifiedGroupKFold` (a question's
        answers all in one fold); without, a shuffled :class:`StratifiedKFold`.
    n_folds : int ≥ 2
        K.
    random_state : int
        Seed of the shuffling.

    Returns
    -------
    folds : list of (train, validation) pairs of ndarray of int
        K pairs of row indices; the validation parts are disjoint and cover all rows.

    Raises
    ------
    ProbeError
        Fewer rows (groups) than folds, or a training part holding a single class.
    """
    if groups is None:
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=random_state)
    else:
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=random_state)
    try:
        folds = list(splitter.split(np.zeros((len(y), 1)), y, groups))
    except ValueError as exc:  # fewer rows or groups than folds
        raise ProbeError(f"cannot make {n_folds} cross-validation folds: {exc}") from exc
    for k, (train, _) in enumerate(folds):
        if np.unique(y[train]).size < 2:
            unit = "question groups" if groups is not None else "rows"
            raise ProbeError(
                f"the training part of cross-validation fold {k} holds a single class; "
                f"give more {unit} of each class or fewer folds (n_folds={n_folds})"
            )
    return folds


def _is_c_grid(value: Any) -> bool:
    if isinstance(value, (str, bytes)) or len(value) == 0:
        return False
    return all(
        isinstance(c, numbers.Real) and not isinstance(c, bool) and math.isfinite(c) and c > 0
        for c in value
    )


def _is_n_components(value: Any) -> bool:
    if value is None or is_int(value, 1):
        return True
    return isinstance(value, float) and 0 < value < 1


_PARAMETER_RULES: tuple[ParameterRule, ...] = (
    ("Cs", _is_c_grid, "a non-empty sequence of finite floats > 0"),
    ("n_folds", int_at_least(2), "an int >= 2"),
    ("n_components", _is_n_components, "None, an int >= 1 or a float in (0, 1)"),
    ("whiten", lambda v: isinstance(v, bool), "a bool"),
    ("max_iter", int_at_least(1), "an int >= 1"),
    ("tol", lambda v: isinstance(v, numbers.Real) and v > 0, "a float > 0"),
    ("n_jobs", lambda v: is_int(v, -(2**31)) and v != 0, "a non-zero int"),
)


def _nan_median(X: np.ndarray) -> np.ndarray:
    """Median of every column over its non-missing values, float64 (F,); 0 for a column
    without any (``np.nanmedian``'s values; a column sort is faster on wide arrays)."""
    missing = np.isnan(X)
    ordered = np.sort(X, axis=0)  # NaN sorts last
    present = X.shape[0] - missing.sum(axis=0)
    columns = np.arange(X.shape[1])
    low = ordered[np.maximum((present - 1) // 2, 0), columns]
    high = ordered[np.minimum(present // 2, X.shape[0] - 1), columns]
    return np.where(present > 0, (low + high) / 2, 0.0)


class _Transform:
    """Imputation → standardisation → optional PCA, as plain float64 arrays.

    ``apply`` is the one code path that turns raw features into the model's inputs, used in
    the cross-validation, after the final fit and after a load.
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    @classmethod
    def fit(
        cls, X: np.ndarray, n_components: int | float | None, whiten: bool, seed: int
    ) -> _Transform:
        """Statistics of the rows of X (the caller passes the rows of positive weight)."""
        medians = _nan_median(X)
        filled = np.where(np.isnan(X), medians, X)
        mean = filled.mean(axis=0)
        scale = standardisation_scale(filled, filled.std(axis=0))
        arrays = {"medians": medians, "mean": mean, "scale": scale}
        if n_components is not None:
            standardised = (filled - arrays["mean"]) / arrays["scale"]
            solver = "full" if isinstance(n_components, float) else "auto"
            try:
                pca = PCA(n_components, svd_solver=solver, random_state=seed).fit(standardised)
            except ValueError as exc:
                raise ProbeError(f"cannot fit the PCA of the logistic-cv probe: {exc}") from exc
            scale = np.sqrt(pca.explained_variance_) if whiten else np.ones(pca.n_components_)
            arrays["pca_mean"] = np.asarray(pca.mean_, dtype=np.float64)
            arrays["pca_components"] = np.asarray(pca.components_, dtype=np.float64)
            # A component of zero variance (rank-deficient data) is left unscaled.
            arrays["pca_scale"] = np.where(scale > 0, scale, 1.0).astype(np.float64)
        return cls(arrays)

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Model inputs, float64 (n, d): d = F without PCA, the number of components with."""
        a = self.arrays
        Z = np.where(np.isnan(X), a["medians"], X)
        Z -= a["mean"]
        Z /= a["scale"]
        if "pca_components" in a:
            Z = (Z - a["pca_mean"]) @ a["pca_components"].T
            Z /= a["pca_scale"]
        return Z


def _weighted_log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray | None) -> float:
    """Mean (weighted) binary log-loss; NaN when every weight is 0."""
    p = np.clip(p, 1e-15, 1 - 1e-15)
    losses = -np.where(y == 1, np.log(p), np.log1p(-p))
    if w is None:
        return float(losses.mean())
    total = w.sum()
    return float((w * losses).sum() / total) if total > 0 else math.nan


class LogisticCVProbe(Probe):
    """L2 logistic regression with C chosen by grouped cross-validation on the log-loss.

    Parameters
    ----------
    Cs : sequence of float > 0, default=DEFAULT_CS
        Grid of inverse regularisation strengths (default ``logspace(-4, 2, 13)``); any order.
    n_folds : int ≥ 2, default=5
        K of the inner cross-validation.
    n_components : int ≥ 1, float in (0, 1) or None, default=None
        PCA after standardisation: that many components, or as many as explain that share of
        the variance; None: no PCA.
    whiten : bool, default=False
        Scale the PCA components to unit variance (only with ``n_components``).
    max_iter : int ≥ 1, default=1000
        L-BFGS iterations per fit.
    tol : float > 0, default=1e-4
        L-BFGS gradient tolerance (scikit-learn's ``tol``).
    n_jobs : int, default=1
        Folds fitted in parallel (threads); every fit runs on one BLAS thread, which on small
        machines is also faster than one multi-threaded fit. Results do not depend on it.
    random_state : int, RandomState or None, default=0
        Seed of the fold shuffling (and of a randomised PCA).
    pos_label : label or None, default=None
        The label of y meaning "answer correct" (None: ``classes_[1]``); see
        :class:`~perturbprobe.probes.base.Probe`.

    Attributes
    ----------
    C_ : float
        The selected C: the lowest mean cross-validated log-loss (ties: the smallest C).
    Cs_ : ndarray of float64, shape (len(Cs),)
        The grid, in the order given.
    cv_log_loss_ : ndarray of float64, shape (len(Cs),)
        Mean over folds of the validation log-loss (weighted), per C of ``Cs_``.
    cv_fold_log_loss_ : ndarray of float64, shape (n_folds, len(Cs))
        The validation log-loss of every fold and C (NaN for a fold whose weights are all 0).
    cv_n_iter_ : ndarray of int, shape (n_folds, len(Cs))
        L-BFGS iterations of every fold fit (warm-started along the C path).
    n_iter_ : int
        L-BFGS iterations of the final fit on all rows.
    coef_ : ndarray of float64, shape (d,)
        Coefficients on the model inputs: the standardised features (d = F) or the PCA
        components (d = ``n_components_``).
    intercept_ : float
        Intercept.
    n_components_ : int or None
        Number of PCA components kept (None without PCA).
    transform_arrays_ : dict of str to ndarray
        ``medians`` (F,), ``mean`` (F,), ``scale`` (F,) and, with PCA, ``pca_mean`` (F,),
        ``pca_components`` (d, F), ``pca_scale`` (d,): what prediction applies before
        ``coef_``.
    classes_, pos_label_, n_features_in_, feature_names_in_
        See :class:`~perturbprobe.probes.base.Probe`.

    Notes
    -----
    State files: ``logistic-cv.safetensors`` (float64 arrays) and ``logistic-cv.json``
    (settings, C, the cross-validation table, feature names); nothing is unpickled at load.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 50)); y = (X[:, 0] > 0).astype(int)
    >>> probe = LogisticCVProbe(Cs=(0.01, 0.1, 1.0)).fit(X, y)
    >>> probe.predict_proba(X[:2]).shape
    (2, 2)
    """

    name: ClassVar[str] = "logistic-cv"
    input_kind: ClassVar[str] = "table"

    def __init__(
        self,
        *,
        Cs=DEFAULT_CS,
        n_folds=5,
        n_components=None,
        whiten=False,
        max_iter=1000,
        tol=1e-4,
        n_jobs=1,
        random_state=0,
        pos_label=None,
    ):
        self.Cs = Cs
        self.n_folds = n_folds
        self.n_components = n_components
        self.whiten = whiten
        self.max_iter = max_iter
        self.tol = tol
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.pos_label = pos_label

    # -- fit ----------------------------------------------------------------------------------

    def _fit(self, X: np.ndarray, y: np.ndarray, groups, sample_weight) -> None:
        check_parameters(self, _PARAMETER_RULES)
        seed = derive_seed(self.random_state)
        Cs = np.asarray([float(c) for c in self.Cs], dtype=np.float64)
        # One C: nothing to choose, so no inner cross-validation (stacking's fold fits).
        folds = cv_folds(y, groups, self.n_folds, seed) if len(Cs) > 1 else []
        w = sample_weight
        blas = threadpool_limits(limits=1, user_api="blas")
        with blas, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            results = Parallel(n_jobs=self.n_jobs, backend="threading")(
                delayed(self._fold_path)(X, y, w, train, validation, Cs, seed)
                for train, validation in folds
            )
            fold_losses = np.array([losses for losses, _ in results]).reshape(-1, len(Cs))
            mean_losses = np.full(len(Cs), np.nan)
            best = 0
            if folds:
                if np.isnan(fold_losses).all(axis=0).any():
                    raise ProbeError("every cross-validation fold has a total sample_weight of 0")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a fold of zero weight
                    mean_losses = np.nanmean(fold_losses, axis=0)
                tied = np.flatnonzero(mean_losses == mean_losses.min())
                best = int(tied[np.argmin(Cs[tied])])  # ties: the strongest shrinkage
            transform = self._fit_transform(X, w, seed)
            model = self._logistic(float(Cs[best]), warm_start=False)
            model.fit(transform.apply(X), y, sample_weight=w)
        self._warn_convergence(caught, n_fits=len(folds) * len(Cs) + 1)
        self.Cs_ = Cs
        self.C_ = float(Cs[best])
        self.cv_fold_log_loss_ = fold_losses
        self.cv_log_loss_ = mean_losses
        self.cv_n_iter_ = np.array([n_iter for _, n_iter in results], dtype=np.int64)
        self.n_iter_ = int(model.n_iter_[0])
        self.transform_arrays_ = transform.arrays
        self.coef_ = np.asarray(model.coef_[0], dtype=np.float64)
        self.intercept_ = float(model.intercept_[0])
        self.n_components_ = None if self.n_components is None else int(self.coef_.shape[0])

    def _logistic(self, C: float, *, warm_start: bool) -> LogisticRegression:
        return LogisticRegression(
            C=C, max_iter=self.max_iter, tol=self.tol, solver="lbfgs", warm_start=warm_start
        )

    def _fit_transform(self, X: np.ndarray, w: np.ndarray | None, seed: int) -> _Transform:
        rows = X if w is None else X[w > 0]
        return _Transform.fit(rows, self.n_components, bool(self.whiten), seed)

    def _fold_path(
        self,
        X: np.ndarray,
        y: np.ndarray,
        w: np.ndarray | None,
        train: np.ndarray,
        validation: np.ndarray,
        Cs: np.ndarray,
        seed: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Validation log-loss (len(Cs),) and iterations of one fold, walking the C grid up."""
        w_train = None if w is None else w[train]
        w_validation = None if w is None else w[validation]
        transform = self._fit_transform(X[train], w_train, seed)
        Z_train, Z_validation = transform.apply(X[train]), transform.apply(X[validation])
        losses = np.full(len(Cs), np.inf)  # +inf: a C the path stopped before
        n_iter = np.zeros(len(Cs), dtype=np.int64)
        model = self._logistic(float(Cs[0]), warm_start=True)
        previous, rises = np.inf, 0
        for j in np.argsort(Cs, kind="stable"):
            model.set_params(C=float(Cs[j]))
            model.fit(Z_train, y[train], sample_weight=w_train)
            n_iter[j] = model.n_iter_[0]
            logit = Z_validation @ model.coef_[0] + model.intercept_[0]
            losses[j] = _weighted_log_loss(y[validation], expit(logit), w_validation)
            rises = rises + 1 if losses[j] > previous else 0
            previous = losses[j]
            if rises == _PATH_PATIENCE:  # past the minimum: larger C only overfits more
                break
        return losses, n_iter

    def _warn_convergence(self, caught: list[warnings.WarningMessage], n_fits: int) -> None:
        stopped = sum(issubclass(m.category, ConvergenceWarning) for m in caught)
        for message in caught:  # anything else is passed on unchanged
            if not issubclass(message.category, ConvergenceWarning):
                warnings.warn_explicit(
                    message.message, message.category, message.filename, message.lineno
                )
        if stopped:
            warnings.warn(
                f"{stopped} of the {n_fits} logistic fits of the logistic-cv probe stopped at "
                f"max_iter={self.max_iter} before reaching tol={self.tol}; raise max_iter (or "
                "tol) for exact solutions",
                PerturbprobeWarning,
                stacklevel=4,
            )

    # -- predict ------------------------------------------------------------------------------

    def _predict_positive(self, X: np.ndarray) -> np.ndarray:
        logit = _Transform(self.transform_arrays_).apply(X) @ self.coef_ + self.intercept_
        return expit(logit)

    # -- persistence --------------------------------------------------------------------------

    @classmethod
    def _state_errors(cls) -> tuple[type[Exception], ...]:
        return (*super()._state_errors(), SafetensorError)

    def _settings(self) -> dict[str, Any]:
        """The constructor parameters the saved arrays depend on."""
        n = self.n_components
        n = None if n is None else int(n) if is_int(n, 1) else float(n)
        return {"n_components": n, "whiten": bool(self.whiten)}

    def _write_state(self, directory: Path) -> list[str]:
        arrays = {
            **self.transform_arrays_,
            "coef": self.coef_,
            "intercept": np.array([self.intercept_]),
        }
        write_arrays(directory / _ARRAYS_FILE, arrays)
        metadata = {
            "settings": self._settings(),
            "C": self.C_,
            "Cs": self.Cs_.tolist(),
            # "inf": a C the path stopped before; "nan": a fold of zero weight (JSON has neither)
            "cv_log_loss": [_json_float(v) for v in self.cv_log_loss_.tolist()],
            "cv_fold_log_loss": [
                [_json_float(v) for v in row] for row in self.cv_fold_log_loss_.tolist()
            ],
            "cv_n_iter": self.cv_n_iter_.tolist(),
            "n_iter": self.n_iter_,
            **self._fitted_metadata(),
        }
        (directory / _META_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        return [_ARRAYS_FILE, _META_FILE]

    def _read_state(self, directory: Path) -> None:
        metadata = read_json(directory / _META_FILE)
        if metadata["settings"] != self._settings():
            raise ValueError(
                f"{_META_FILE} was saved with {metadata['settings']}, the parameters say "
                f"{self._settings()}"
            )
        expected = {"medians", "mean", "scale", "coef", "intercept"}
        if self.n_components is not None:
            expected |= set(_PCA_ARRAYS)
        arrays = read_arrays(directory / _ARRAYS_FILE, expected)
        self._restore_metadata(metadata)
        F = self.n_features_in_
        d = arrays["coef"].shape[0] if arrays["coef"].ndim == 1 else -1
        shapes = {"medians": (F,), "mean": (F,), "scale": (F,), "intercept": (1,)}
        if self.n_components is None:
            shapes["coef"] = (F,)
        else:
            shapes |= {"coef": (d,), "pca_mean": (F,), "pca_components": (d, F), "pca_scale": (d,)}
        check_shapes(arrays, shapes, _ARRAYS_FILE, F)
        if d < 1:
            raise ValueError(f"{_ARRAYS_FILE} holds no coefficients")
        self.transform_arrays_ = {k: v for k, v in arrays.items() if k not in ("coef", "intercept")}
        self.coef_ = arrays["coef"]
        self.intercept_ = float(arrays["intercept"][0])
        self.n_components_ = None if self.n_components is None else d
        self.C_ = float(metadata["C"])
        self.Cs_ = np.asarray(metadata["Cs"], dtype=np.float64)
        self.cv_log_loss_ = np.asarray([float(v) for v in metadata["cv_log_loss"]])
        self.cv_fold_log_loss_ = np.asarray(
            [[float(v) for v in row] for row in metadata["cv_fold_log_loss"]], dtype=np.float64
        ).reshape(-1, len(self.cv_log_loss_))
        self.cv_n_iter_ = np.asarray(metadata["cv_n_iter"], dtype=np.int64)
        self.n_iter_ = int(metadata["n_iter"])


def _json_float(value: float) -> float | str:
    """A float for JSON: itself when finite, else ``"inf"``, ``"-inf"`` or ``"nan"``."""
    return value if math.isfinite(value) else str(value)
