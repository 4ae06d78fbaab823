"""Plots of confidences of correctness: reliability diagrams, histograms, risk–coverage curves.

Each function draws on the Axes it is given (or on a new figure when ``ax`` is None) and
returns the Axes; nothing is written to disk. The numbers come from
:mod:`perturbprobe.calibration.metrics`; this module only draws them. Figures are built with
:class:`matplotlib.figure.Figure` rather than pyplot, so no global figure state or interactive
backend is involved (PNG output renders with Agg), and matplotlib is imported only when
something is drawn.

>>> import numpy as np
>>> y, p = np.array([1, 0, 1, 1]), np.array([0.9, 0.2, 0.7, 0.6])
>>> ax = plot_reliability(y, p, n_bins=5, label="probe")
>>> figure_to_png_bytes(ax.figure)[:4]
b'\\x89PNG'
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CalibrationError
from .metrics import aurc, expected_calibration_error, reliability_bins, risk_coverage_curve
from .validation import check_labels_and_scores

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "figure_to_png_bytes",
    "panel_grid",
    "plot_confidence_histogram",
    "plot_importances",
    "plot_reliability",
    "plot_risk_coverage",
]

_CORRECT, _INCORRECT = "#2a9d5c", "#d1495b"  # green / red, distinguishable in grey print too
_ACCURACY = "#3a6ea5"
_SHARE = "#8c8c8c"
_TITLE_WIDTH = 42
# A framed, nearly opaque legend where it hides the least data
_LEGEND = {
    "loc": "best",
    "fontsize": "small",
    "framealpha": 0.9,
    "edgecolor": "0.85",
}  # characters per title line before wrapping


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained").add_subplot()


def _title(*parts: str) -> str:
    return "\n".join(textwrap.fill(part, _TITLE_WIDTH) for part in parts if part)


def panel_grid(
    n_panels: int, *, ncols: int = 3, panel_size: tuple[float, float] = (4.0, 3.8)
) -> tuple[Figure, list[Axes]]:
    """A new figure with ``n_panels`` Axes in rows of ``ncols``; unused cells are hidden.

    Parameters
    ----------
    n_panels : int
        Number of Axes to return (≥ 1).
    ncols : int, default=3
        Panels per row (fewer when there are fewer panels).
    panel_size : (float, float), default=(4.0, 3.8)
        Width and height of one panel in inches.

    Returns
    -------
    (Figure, list of Axes)
        The figure and its first ``n_panels`` Axes, row by row.
    """
    if n_panels < 1:
        raise CalibrationError(f"n_panels must be at least 1, got {n_panels}")
    from matplotlib.figure import Figure

    ncols = min(ncols, n_panels)
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = list(np.ravel(fig.subplots(nrows, ncols, squeeze=False)))
    for spare in axes[n_panels:]:
        spare.set_visible(False)
    return fig, axes[:n_panels]


def plot_reliability(
    y: Any, p: Any, *, n_bins: int = 15, ax: Axes | None = None, label: str | None = None
) -> Axes:
    """Reliability diagram: accuracy per equal-width confidence bin against the diagonal.

    Blue bars: fraction correct in each bin (empty bins have none); narrow grey bars: the
    share of rows in the bin; dashed line: perfect calibration. The title gives the ECE.

    Parameters
    ----------
    y : array-like of int (n,)
        1 if the answer is correct, 0 if not.
    p : array-like of float (n,)
        Predicted probability of correct, in [0, 1].
    n_bins : int, default=15
        Equal-width bins, as :func:`~perturbprobe.calibration.metrics.expected_calibration_error`.
    ax : matplotlib Axes, optional
        Where to draw; a new 4.5 × 4.5 in figure when None.
    label : str, optional
        Name of the score, shown in the title.

    Returns
    -------
    matplotlib Axes
    """
    bins = reliability_bins(y, p, n_bins=n_bins)
    ece = expected_calibration_error(y, p, n_bins=n_bins)
    ax = _new_axes(ax, (4.5, 4.5))
    width = bins.upper - bins.lower
    filled = bins.count > 0
    ax.bar(
        bins.lower[filled],
        bins.accuracy[filled],
        width=width[filled],
        align="edge",
        color=_ACCURACY,
        alpha=0.35,
        edgecolor=_ACCURACY,
        linewidth=0.8,
        label="fraction correct",
    )
    ax.bar(
        bins.lower + 0.3 * width,
        bins.count / bins.count.sum(),
        width=0.4 * width,
        align="edge",
        color=_SHARE,
        label="share of rows",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.3", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (predicted P(correct))")
    ax.set_ylabel("fraction correct / share of rows")
    ax.set_aspect("equal")
    ax.set_title(_title(label or "", f"ECE {ece:.3f} ({n_bins} bins, n = {bins.count.sum()})"))
    ax.legend(**_LEGEND)
    return ax


def plot_confidence_histogram(
    y: Any, p: Any, ax: Axes | None = None, *, bins: int = 20, label: str | None = None
) -> Axes:
    """Histograms of the confidence of correct and of incorrect answers, overlaid.

    Parameters
    ----------
    y : array-like of int (n,)
    p : array-like of float (n,)
    ax : matplotlib Axes, optional
        Where to draw; a new 5 × 3.5 in figure when None.
    bins : int, default=20
        Equal-width bins on [0, 1].
    label : str, optional
        Name of the score, shown as the title.

    Returns
    -------
    matplotlib Axes
    """
    y_arr, p_arr = check_labels_and_scores(y, p)
    ax = _new_axes(ax, (5.0, 3.5))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for value, name, color in ((1, "correct", _CORRECT), (0, "incorrect", _INCORRECT)):
        chosen = p_arr[y_arr == value]
        ax.hist(
            chosen,
            bins=edges,
            histtype="stepfilled",
            alpha=0.35,
            color=color,
            edgecolor=color,
            linewidth=1.2,
            label=f"{name} (n = {chosen.size})",
        )
    ax.set(xlim=(0, 1), xlabel="confidence (predicted P(correct))", ylabel="answers")
    if label:
        ax.set_title(_title(label))
    ax.legend(**_LEGEND)
    return ax


def plot_risk_coverage(curves: Mapping[str, tuple[Any, Any]], ax: Axes | None = None) -> Axes:
    """Risk–coverage curves, one line per score, with each score's AURC in the legend.

    Parameters
    ----------
    curves : mapping of str to (y, p)
        Score name → labels (n,) and confidences (n,). Scores of the same rows share the
        error rate at coverage 1.
    ax : matplotlib Axes, optional
        Where to draw; a new 6 × 4 in figure when None.

    Returns
    -------
    matplotlib Axes
    """
    if not curves:
        raise CalibrationError("curves is empty; give at least one score as name -> (y, p)")
    ax = _new_axes(ax, (6.0, 4.0))
    for name, (y, p) in curves.items():
        curve = risk_coverage_curve(y, p)
        ax.plot(
            curve.coverage,
            curve.risk,
            linewidth=1.6,
            label=f"{name} (AURC {aurc(y, p):.3f})",
        )
    ax.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage (fraction of answers kept)")
    ax.set_ylabel("risk (error rate of kept answers)")
    ax.grid(alpha=0.3)
    ax.legend(**_LEGEND)
    return ax


def plot_importances(importances: pd.Series, *, top: int = 20, ax: Axes | None = None) -> Axes:
    """Horizontal bars of the ``top`` largest feature importances, largest at the top.

    Parameters
    ----------
    importances : pandas Series (n_features,)
        Feature name → importance (e.g. LightGBM total gain).
    top : int, default=20
    ax : matplotlib Axes, optional
        Where to draw; a new figure sized to the number of bars when None.

    Returns
    -------
    matplotlib Axes
    """
    if len(importances) == 0:
        raise CalibrationError("importances is empty; nothing to plot")
    largest = importances.sort_values(ascending=False).iloc[:top][::-1]
    ax = _new_axes(ax, (7.0, 1.0 + 0.28 * len(largest)))
    ax.barh([str(name) for name in largest.index], largest.to_numpy(), color=_ACCURACY)
    ax.set_xlabel("importance")
    ax.tick_params(axis="y", labelsize="small")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"top {len(largest)} of {len(importances)} features")
    return ax


def figure_to_png_bytes(fig: Figure, *, dpi: int = 110) -> bytes:
    """Render ``fig`` to PNG bytes (nothing is written to disk).

    Parameters
    ----------
    fig : matplotlib Figure
    dpi : int, default=110

    Returns
    -------
    bytes
        The PNG file's content.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()
