"""The calibration report (HTML + JSON + PNG) and the plots it is drawn with."""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve

from perturbprobe.calibration import plots
from perturbprobe.calibration.metrics import METRICS, MetricValue, evaluate_confidence
from perturbprobe.calibration.report import Report, build_report
from perturbprobe.errors import CalibrationError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_BOOTSTRAP = 40  # enough to exercise the intervals; the bootstrap itself is tested elsewhere
PRIMARY = "lightgbm"
ODD_NAME = "baseline: <mean> & 'prob'"  # must come out escaped


def synthetic(n: int = 160, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.random(n)
    y = (rng.random(n) < truth).astype(int)
    scores = {
        PRIMARY: np.clip(truth + rng.normal(0, 0.05, n), 0, 1),
        ODD_NAME: np.clip(truth**0.5 + rng.normal(0, 0.1, n), 0, 1),
        "baseline: min prob": np.round(rng.random(n), 1),  # ties
    }
    return y, scores


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def report(data):
    y, scores = data
    importances = pd.Series(np.arange(30, 0, -1, dtype=float) * 10.0)
    importances.index = [f"feat_{i:02d}" for i in range(30)]  # feat_00 largest, feat_29 least
    ablation = pd.DataFrame(
        {"auroc": [0.81, 0.7], "n_features": [120, 9]},
        index=pd.Index(["all families", "baseline only"], name="families"),
    )
    summary = {
        "n": np.int64(len(y)),
        "positive rate": float(y.mean()),
        "LLM": "SmolLM2 <135M>",
        "splits": {"train": 100, "test": 60},
        "extractor": {"families": ["baseline", "ccps"], "ccps": {"radius": 10.0}},
        "missing": math.nan,
    }
    return build_report(
        y,
        scores,
        primary=PRIMARY,
        summary=summary,
        importances=importances,
        ablation=ablation,
        n_bootstrap=N_BOOTSTRAP,
    )


class MetricsTables(HTMLParser):
    """Reads the metrics tables into {score: (row class, {metric: cell class})}."""

    def __init__(self, page: str):
        super().__init__()
        self.rows: dict[str, tuple[str, dict[str, str]]] = {}
        self._headers: list[str] | None = None  # metric names of the current metrics table
        self._row: tuple[str, list[tuple[str, str]]] | None = None
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._headers = [] if attrs.get("class") == "metrics" else None
        elif self._headers is None:
            return
        elif tag == "th" and "title" in attrs:
            self._headers.append(attrs["title"].split(":")[0])
        elif tag == "tr":
            self._row = (attrs.get("class") or "", [])
        elif tag == "td":
            self._cell = [attrs.get("class") or ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row[1].append((self._cell[0], "".join(self._cell[1:])))
            self._cell = None
        elif tag == "tr" and self._row and self._row[1]:  # a score's row (not the header)
            row_class, ((_, score), *cells) = self._row
            self._row = None
            _, by_metric = self.rows.setdefault(score.removesuffix("primary"), (row_class, {}))
            by_metric.update(zip(self._headers, (cls for cls, _ in cells), strict=True))
        elif tag == "table":
            self._headers = None


# ---- the report's content -----------------------------------------------------------------------
def test_report_metrics_are_the_paired_evaluation(report, data):
    y, scores = data
    assert list(report.metrics) == list(scores)
    for name, p in scores.items():
        assert report.metrics[name] == evaluate_confidence(y, p, n_bootstrap=N_BOOTSTRAP)
    assert set(report.figures) == {
        "reliability",
        "reliability_all",
        "histograms",
        "risk_coverage",
        "importances",
    }


def test_html_names_every_score_and_metric_escaped(report):
    page = report.to_html()
    assert page.startswith("<!DOCTYPE html>")
    for score in (PRIMARY, "baseline: min prob", "baseline: &lt;mean&gt; &amp; &#x27;prob&#x27;"):
        assert score in page
    assert "<mean>" not in page and "<135M>" not in page
    for metric in METRICS:
        assert f'title="{metric}:' in page


def test_html_is_self_contained(report):
    page = report.to_html()
    for external in ('src="http', "src='http", "<link", "<script", "url(", "@import"):
        assert external not in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(report.figures) == page.count("<img")
    decoded = [base64.b64decode(image, validate=True) for image in images]
    assert all(png.startswith(PNG_MAGIC) for png in decoded)
    assert set(decoded) == set(report.figures.values())


def test_best_values_bold_and_primary_row_highlighted(report):
    rows = MetricsTables(report.to_html()).rows
    assert set(rows) == set(report.metrics)
    assert rows[PRIMARY][0] == "primary"
    assert all(row_class == "" for name, (row_class, _) in rows.items() if name != PRIMARY)
    for metric, info in METRICS.items():
        values = {score: round(r[metric].value, 3) for score, r in report.metrics.items()}
        best = max(values.values()) if info.higher_is_better else min(values.values())
        for score, (_, cells) in rows.items():
            assert ("best" in cells[metric]) == (values[score] == best), (metric, score)


def test_html_shows_importances_ablation_and_summary(report):
    page = report.to_html()
    assert "feat_00" in page and "feat_19" in page and "feat_20" not in page  # top 20 only
    assert "all families" in page and "n_features" in page and "0.810" in page
    assert "<dt>splits</dt><dd><dl" in page  # a flat dict as a nested list
    assert re.search(r"<pre>\{\s+&quot;families&quot;", page)  # a deep dict as JSON
    assert "<dt>missing</dt><dd>n/a</dd>" in page


def test_metrics_json_round_trips(report, tmp_path):
    paths = report.write(tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "report.html",
        "metrics.json",
        "reliability.png",
    }
    assert paths == {
        "report": tmp_path / "out" / "report.html",
        "metrics": tmp_path / "out" / "metrics.json",
        "reliability": tmp_path / "out" / "reliability.png",
    }
    with open(paths["metrics"], encoding="utf-8") as handle:
        stored = json.load(handle)
    assert stored == report.to_json()
    restored = {
        score: {name: MetricValue.from_dict(value) for name, value in row.items()}
        for score, row in stored["metrics"].items()
    }
    assert restored == report.metrics
    assert stored["primary"] == PRIMARY
    assert stored["summary"]["n"] == 160 and stored["summary"]["missing"] is None
    assert stored["importances"]["feat_00"] == 300.0
    assert stored["ablation"]["index"] == ["all families", "baseline only"]
    assert paths["reliability"].read_bytes() == report.figures["reliability"]
    assert paths["report"].read_text(encoding="utf-8") == report.to_html()


def test_write_replaces_previous_files(report, tmp_path):
    (tmp_path / "report.html").write_text("old")
    report.write(tmp_path)
    report.write(tmp_path)
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == report.to_html()
    assert len(list(tmp_path.iterdir())) == 3  # no temporary files left behind


def test_report_without_figures_or_extras(tmp_path):
    metrics = {"probe": evaluate_confidence([1, 0, 1, 0], [0.9, 0.2, 0.6, 0.4], n_bootstrap=0)}
    report = Report(title="t", metrics=metrics, primary="probe", summary={})
    page = report.to_html()
    assert "<img" not in page and "Ablation" not in page and "n/a" not in page
    assert set(report.write(tmp_path)) == {"report", "metrics"}
    assert report.to_json()["importances"] is None and report.to_json()["ablation"] is None


def test_report_errors(data):
    y, scores = data
    with pytest.raises(CalibrationError, match="primary score 'probe' is not among the scores"):
        Report(title="t", metrics={"a": {}}, primary="probe", summary={})
    with pytest.raises(CalibrationError, match="primary score 'probe' is not among the scores"):
        build_report(y, scores, primary="probe", summary={}, n_bootstrap=0)
    with pytest.raises(CalibrationError, match="scores is empty"):
        build_report(y, {}, primary="probe", summary={})
    with pytest.raises(CalibrationError, match="y and p must have the same length"):
        build_report(y[:5], scores, primary=PRIMARY, summary={}, n_bootstrap=0)


# ---- the plots --------------------------------------------------------------------------------
def test_plot_reliability_draws_bin_accuracy(data):
    y, scores = data
    ax = plots.plot_reliability(y, scores[PRIMARY], n_bins=10, label="probe")
    accuracy_bars, share_bars = ax.containers
    prob_true, _ = calibration_curve(y, scores[PRIMARY], n_bins=10)  # non-empty bins only
    np.testing.assert_allclose([bar.get_height() for bar in accuracy_bars], prob_true, atol=1e-12)
    assert sum(bar.get_height() for bar in share_bars) == pytest.approx(1.0)
    assert "probe" in ax.get_title() and "ECE" in ax.get_title()
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {
        "fraction correct",
        "share of rows",
        "perfect calibration",
    }
    assert plots.figure_to_png_bytes(ax.figure).startswith(PNG_MAGIC)


def test_plots_draw_on_given_axes(data):
    y, scores = data
    fig, axes = plots.panel_grid(5, ncols=3)
    assert len(axes) == 5 and sum(ax.get_visible() for ax in fig.axes) == 5 == len(fig.axes) - 1
    assert plots.plot_confidence_histogram(y, scores[PRIMARY], ax=axes[0], label="x") is axes[0]
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == [f"correct (n = {y.sum()})", f"incorrect (n = {len(y) - y.sum()})"]
    curves = {name: (y, p) for name, p in scores.items()}
    assert plots.plot_risk_coverage(curves, ax=axes[1]) is axes[1]
    assert len(axes[1].get_lines()) == 3
    assert all("AURC" in t.get_text() for t in axes[1].get_legend().get_texts())
    importances = pd.Series([3.0, 1.0, 2.0], index=["a", "b", "c"])
    assert plots.plot_importances(importances, top=2, ax=axes[2]) is axes[2]
    assert [t.get_text() for t in axes[2].get_yticklabels()] == ["c", "a"]  # largest on top


def test_plot_errors(data):
    y, scores = data
    with pytest.raises(CalibrationError, match="curves is empty"):
        plots.plot_risk_coverage({})
    with pytest.raises(CalibrationError, match="importances is empty"):
        plots.plot_importances(pd.Series(dtype=float))
    with pytest.raises(CalibrationError, match="n_panels must be at least 1"):
        plots.panel_grid(0)
    with pytest.raises(CalibrationError, match=r"p must be probabilities in \[0, 1\]"):
        plots.plot_confidence_histogram(y, scores[PRIMARY] + 2)
