"""Metrics within domains: the within-domain AUROC, the per-domain table, and the report."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn.metrics as skm
from synthetic_features import synthetic_featureset

from perturbprobe.calibration import metrics as M
from perturbprobe.calibration.domains import (
    DOMAIN_COLUMNS,
    WithinDomainAUROC,
    evaluate_domains,
    per_domain_metrics,
    within_domain_auroc,
)
from perturbprobe.calibration.metrics import MetricValue
from perturbprobe.calibration.report import build_report
from perturbprobe.errors import CalibrationError, PerturbprobeWarning
from perturbprobe.training import evaluate_bundles, fit_bundle

N_BOOTSTRAP = 200
TOL = 1e-12

# A hand example: three domains, rows interleaved so that grouping is exercised.
#   domain a: y 1    0    1    0      correct {0.9, 0.4}, incorrect {0.3, 0.5}
#             p 0.9  0.3  0.4  0.5    pairs (correct > incorrect): 0.9>0.3 1, 0.9>0.5 1,
#                                     0.4>0.3 1, 0.4<0.5 0                  -> 3/4
#   domain b: y 1    1    0           correct {0.2, 0.6}, incorrect {0.6}
#             p 0.2  0.6  0.6         0.2<0.6 0, 0.6=0.6 a tie, 1/2          -> 0.5/2 = 1/4
#   domain c: y 0    1    0    0      correct {0.7}, incorrect {0.1, 0.8, 0.2}
#             p 0.1  0.7  0.8  0.2    0.7>0.1 1, 0.7<0.8 0, 0.7>0.2 1       -> 2/3
HAND = pd.DataFrame(
    {
        "domain": ["a", "b", "c", "a", "b", "c", "a", "b", "c", "a", "c"],
        "y": [1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0],
        "p": [0.9, 0.2, 0.1, 0.3, 0.6, 0.7, 0.4, 0.6, 0.8, 0.5, 0.2],
    }
)
HAND_AUROC = {"a": 3 / 4, "b": 1 / 4, "c": 2 / 3}


def domain_mix(n_per_domain: int, seed: int = 0, accuracy=(0.02, 0.1, 0.5, 0.9, 0.98)):
    """Answers of len(accuracy) domains, right with the domain's accuracy; ``by_domain`` knows
    only the domain (its accuracy + noise), ``probe`` also the answer's own signal."""
    rng = np.random.default_rng(seed)
    acc = np.asarray(accuracy)
    domain = np.repeat(np.arange(len(acc)), n_per_domain)
    y = (rng.random(len(domain)) < acc[domain]).astype(int)
    by_domain = np.clip(acc[domain] + rng.normal(0, 0.01, len(y)), 0, 1)
    signal = rng.normal(size=len(y)) + (y - 0.5) * 1.5
    probe = 1 / (1 + np.exp(-(np.log(acc[domain] / (1 - acc[domain])) + signal)))
    names = np.array([f"d{k}" for k in range(len(acc))], dtype=object)[domain]
    return y, {"probe": probe, "by_domain": by_domain}, names


# ---- the within-domain AUROC ------------------------------------------------------------------
def test_within_domain_auroc_against_hand_counted_pairs():
    result = within_domain_auroc(HAND.y, HAND.p, HAND.domain, n_bootstrap=0)
    assert isinstance(result, WithinDomainAUROC) and isinstance(result, MetricValue)
    assert result.value == pytest.approx((3 / 4 + 1 / 4 + 2 / 3) / 3, abs=TOL)
    assert (result.n_domains, result.n_skipped) == (3, 0)
    assert np.isnan(result.low) and np.isnan(result.high)  # no bootstrap asked for
    table = per_domain_metrics(HAND.y, HAND.p, HAND.domain, n_bootstrap=0)
    assert table.index.tolist() == ["a", "b", "c"] and table.index.name == "domain"
    for name, auroc in HAND_AUROC.items():
        rows = HAND[HAND.domain == name]
        assert table.loc[name, "auroc"] == pytest.approx(auroc, abs=TOL)
        assert auroc == pytest.approx(skm.roc_auc_score(rows.y, rows.p), abs=TOL)
    # the pooled AUROC is another number: the mean is over domains, not over all pairs
    assert M.roc_auc_score(HAND.y, HAND.p) != pytest.approx(result.value)


def test_per_domain_table_matches_the_metrics_on_each_subset():
    y, scores, domains = domain_mix(60, seed=3)
    table = per_domain_metrics(y, scores["probe"], domains, n_bins=10, n_bootstrap=N_BOOTSTRAP)
    assert list(table.columns) == list(DOMAIN_COLUMNS)
    assert table["n"].dtype == np.int64 and table["n"].tolist() == [60] * 5
    for name, row in table.iterrows():
        inside = domains == name
        yd, pd_ = y[inside], scores["probe"][inside]
        assert row["accuracy"] == pytest.approx(yd.mean(), abs=TOL)
        assert row["mean_confidence"] == pytest.approx(pd_.mean(), abs=TOL)
        assert row["ece"] == pytest.approx(M.expected_calibration_error(yd, pd_, 10), abs=TOL)
        assert row["brier"] == pytest.approx(M.brier_score_loss(yd, pd_), abs=TOL)
        if 0 < yd.sum() < len(yd):
            assert row["auroc"] == pytest.approx(skm.roc_auc_score(yd, pd_), abs=TOL)
            assert row["auroc_low"] <= row["auroc"] <= row["auroc_high"]
        else:
            assert np.isnan(row["auroc"]) and np.isnan(row["auroc_low"])
    formats = per_domain_metrics(y, scores["probe"], domains, index_name="format", n_bootstrap=0)
    assert formats.index.name == "format"


def test_pooled_auroc_high_but_within_domain_is_chance_for_a_domain_recogniser():
    y, scores, domains = domain_mix(1000)
    pooled = M.roc_auc_score(y, scores["by_domain"])
    within = within_domain_auroc(y, scores["by_domain"], domains, n_bootstrap=N_BOOTSTRAP)
    assert pooled > 0.9
    assert within.value == pytest.approx(0.5, abs=0.05)
    assert within.low < 0.5 < within.high
    # a score that knows the answers, not only their domain, keeps a within-domain AUROC
    probe = within_domain_auroc(y, scores["probe"], domains, n_bootstrap=N_BOOTSTRAP)
    assert probe.low > 0.75


def test_single_class_domains_are_skipped_with_a_counting_warning():
    y = np.concatenate([HAND.y, [1, 1, 1]])
    p = np.concatenate([HAND.p, [0.9, 0.1, 0.5]])
    domains = np.concatenate([HAND.domain, ["all right"] * 3])
    with pytest.warns(PerturbprobeWarning, match=r"1 of 4 domains hold a single class") as caught:
        result = within_domain_auroc(y, p, domains, n_bootstrap=50)
    assert "'all right'" in str(caught[0].message) and "other 3" in str(caught[0].message)
    assert (result.n_domains, result.n_skipped) == (3, 1)
    stored = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert stored["n_domains"] == 3 and WithinDomainAUROC.from_dict(stored) == result
    assert result.value == pytest.approx(np.mean(list(HAND_AUROC.values())), abs=TOL)
    table = per_domain_metrics(y, p, domains, n_bootstrap=0)
    assert np.isnan(table.loc["all right", "auroc"]) and table.loc["all right", "accuracy"] == 1


def test_no_domain_with_both_classes_gives_nan_with_a_warning():
    with pytest.warns(PerturbprobeWarning, match="undefined: none of the 2 domains holds both"):
        result = within_domain_auroc([1, 1, 0, 0], [0.2, 0.4, 0.6, 0.8], ["a", "a", "b", "b"])
    assert np.isnan(result.value) and np.isnan(result.low) and np.isnan(result.high)
    assert (result.n_domains, result.n_skipped) == (0, 2)


def test_answers_without_a_domain_are_left_out_with_a_warning():
    domains = [*HAND.domain.tolist(), None, np.nan, None]
    y = np.concatenate([HAND.y, [1, 0, 1]])
    p = np.concatenate([HAND.p, [0.0, 1.0, 0.0]])  # would pull an "unknown" domain down
    with pytest.warns(PerturbprobeWarning, match="3 of 14 answers have no domain"):
        result = within_domain_auroc(y, p, domains, n_bootstrap=0)
    assert result.value == pytest.approx(np.mean(list(HAND_AUROC.values())), abs=TOL)
    assert result.n_domains == 3


def test_interval_contains_the_value_narrows_with_more_data_and_is_paired():
    widths = []
    for n in (40, 1000):
        y, scores, domains = domain_mix(n, seed=1, accuracy=(0.2, 0.5, 0.8))
        result = within_domain_auroc(y, scores["probe"], domains, n_bootstrap=N_BOOTSTRAP)
        assert result.low <= result.value <= result.high
        widths.append(result.high - result.low)
    assert widths[1] < widths[0] / 3  # ~ 1 / sqrt(25) = 1/5 expected
    # the resamples depend on the labels, domains and seed only: a strictly increasing
    # transform of a score (same ranks in every domain) gets the very same interval
    squashed = scores["probe"] ** 3
    assert within_domain_auroc(y, squashed, domains, n_bootstrap=N_BOOTSTRAP) == result
    other_seed = within_domain_auroc(
        y, scores["probe"], domains, n_bootstrap=N_BOOTSTRAP, random_state=1
    )
    assert other_seed.value == result.value and other_seed.low != result.low


def test_rare_class_domains_keep_both_classes_in_every_resample():
    # one correct answer among 50: a plain resample would lose it ~36% of the time; the
    # stratified one keeps it, so the domain's interval comes from every resample
    rng = np.random.default_rng(0)
    y = np.array([1] + [0] * 49 + [1, 0] * 25)
    p = rng.random(len(y))
    domains = ["rare"] * 50 + ["even"] * 50
    evaluation = evaluate_domains(y, {"s": p}, domains, n_bootstrap=N_BOOTSTRAP)
    rare = evaluation.table.loc[("s", "rare")]
    assert np.isfinite(rare["auroc_low"]) and rare["auroc_low"] <= rare["auroc"]
    assert evaluation.skipped == () and evaluation.n_unknown == 0


def test_evaluate_domains_is_the_single_score_functions_on_shared_resamples():
    y, scores, domains = domain_mix(80, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every domain has both classes at this size and seed
        evaluation = evaluate_domains(y, scores, domains, n_bootstrap=N_BOOTSTRAP)
    assert evaluation.table.index.names == ["score", "domain"]
    for name, p in scores.items():
        assert evaluation.within[name] == within_domain_auroc(
            y, p, domains, n_bootstrap=N_BOOTSTRAP
        )
        pd.testing.assert_frame_equal(
            evaluation.table.loc[name],
            per_domain_metrics(y, p, domains, n_bootstrap=N_BOOTSTRAP),
        )


def test_bad_input_is_refused():
    with pytest.raises(CalibrationError, match=r"domains must be a 1-D array with one entry"):
        within_domain_auroc([1, 0], [0.5, 0.5], ["a"])
    with pytest.raises(CalibrationError, match="n_bootstrap must be a non-negative integer"):
        within_domain_auroc([1, 0], [0.5, 0.5], ["a", "a"], n_bootstrap=-1)
    with pytest.raises(CalibrationError, match=r"p must be probabilities in \[0, 1\]"):
        per_domain_metrics([1, 0], [0.5, 2.0], ["a", "a"])
    with pytest.raises(CalibrationError, match="scores is empty"):
        evaluate_domains([1, 0], {}, ["a", "a"])


# ---- the report -------------------------------------------------------------------------------
PRIMARY = "probe"


@pytest.fixture(scope="module")
def mix():
    y, scores, domains = domain_mix(60, seed=5)
    scores["noise"] = np.random.default_rng(9).random(len(y))
    formats = np.array(["number", "text"] * (len(y) // 2), dtype=object)
    return y, scores, domains, formats


@pytest.fixture(scope="module")
def domain_report(mix):
    y, scores, domains, formats = mix
    return build_report(
        y,
        scores,
        primary=PRIMARY,
        summary={"n": len(y)},
        n_bootstrap=40,
        domains=domains,
        formats=formats,
    )


def test_report_gains_within_domain_auroc_for_every_score(domain_report, mix):
    y, scores, domains, _ = mix
    for name, p in scores.items():
        row = domain_report.metrics[name]
        assert row["within_domain_auroc"] == (
            within_domain_auroc(y, p, domains, n_bootstrap=40).metric_value()
        )
        pooled = {k: v for k, v in row.items() if k != "within_domain_auroc"}
        assert pooled == M.evaluate_confidence(y, p, n_bootstrap=40)  # unchanged
    table = domain_report.domain_table
    assert table.index.names == ["score", "domain"] and list(table.columns) == list(DOMAIN_COLUMNS)
    assert list(dict.fromkeys(table.index.get_level_values(0))) == list(scores)
    assert domain_report.format_table.index.names == ["score", "format"]
    assert domain_report.format_table.loc[PRIMARY].index.tolist() == ["number", "text"]


def test_report_html_shows_the_column_explanation_and_tables(domain_report):
    report = domain_report
    page = report.to_html()
    ranking = page[page.index("<h3>Ranking and selective prediction</h3>") :]
    headers = re.findall(r'<th title="([a-z_@0-9]+):', ranking[: ranking.index("</thead>")])
    assert headers[:2] == ["auroc", "within_domain_auroc"]
    assert page.count('<th title="within_domain_auroc:') == 1
    assert "cannot raise it by recognising which kind of question it is" in page
    assert "the LLM is right on" in page and "It averages the 5 domains" in page
    section = page[page.index("<h2>By domain</h2>") : page.index("<h2>By answer format</h2>")]
    shown, hidden = section.split("<details>")
    # the primary and the best other score by within-domain AUROC in full, the rest folded
    within = {name: row["within_domain_auroc"].value for name, row in report.metrics.items()}
    best, worst = sorted(["by_domain", "noise"], key=within.__getitem__, reverse=True)
    assert "<h3>probe<span" in shown and f"<h3>{best}</h3>" in shown
    assert f"<h3>{worst}</h3>" in hidden and f"<h3>{worst}</h3>" not in shown
    assert all(f'<td class="name">d{k}</td>' in shown for k in range(5))
    value = domain_report.domain_table.loc[(PRIMARY, "d2"), "auroc"]
    assert f'<span class="v">{value:.3f}</span>' in shown
    assert "<th>mean confidence</th>" in shown and "AUROC&nbsp;&uarr;" in shown
    assert '<td class="name">number</td>' in page[page.index("<h2>By answer format</h2>") :]


def test_report_metrics_json_holds_the_column_and_tables(domain_report, tmp_path):
    paths = domain_report.write(tmp_path)
    stored = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    assert stored == domain_report.to_json()
    for name, row in stored["metrics"].items():
        value = domain_report.metrics[name]["within_domain_auroc"]
        assert MetricValue.from_dict(row["within_domain_auroc"]) == value
    table = domain_report.domain_table
    assert set(stored["domain_table"]) == set(domain_report.metrics)
    entry = stored["domain_table"][PRIMARY]["d0"]
    assert list(entry) == list(DOMAIN_COLUMNS)
    assert entry["n"] == 60 and entry["auroc"] == table.loc[(PRIMARY, "d0"), "auroc"]
    assert set(stored["format_table"][PRIMARY]) == {"number", "text"}


def test_report_without_domains_is_as_before(mix):
    y, scores, _, _ = mix
    kwargs = {"primary": PRIMARY, "summary": {"n": len(y)}, "n_bootstrap": 20}
    plain = build_report(y, scores, **kwargs)
    unknown = np.full(len(y), None, dtype=object)  # what an old FeatureSet gives
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = build_report(y, scores, domains=unknown, formats=unknown, **kwargs)
    assert old.domain_table is None and old.format_table is None
    assert old.to_html() == plain.to_html() and old.to_json() == plain.to_json()
    page = plain.to_html()
    assert "within_domain" not in page and "By domain" not in page and "By answer" not in page
    assert set(plain.to_json()) == {
        "title",
        "primary",
        "perturbprobe_version",
        "metrics",
        "summary",
        "importances",
        "ablation",
        "selection",
    }
    assert all(set(row) == set(M.METRICS) for row in plain.metrics.values())
    with pytest.raises(CalibrationError, match="domains must be a 1-D array"):
        build_report(y, scores, domains=unknown[:-1], **kwargs)


def test_report_warns_once_about_single_class_domains(mix):
    y, scores, domains, _ = mix
    y = y.copy()
    y[domains == "d4"] = 1
    with pytest.warns(PerturbprobeWarning) as caught:
        report = build_report(
            y, scores, primary=PRIMARY, summary={}, n_bootstrap=0, domains=domains
        )
    messages = [str(w.message) for w in caught if "single class" in str(w.message)]
    assert len(messages) == 1 and "'d4'" in messages[0]
    assert all(np.isfinite(row["within_domain_auroc"].value) for row in report.metrics.values())
    assert "(1 single-class domain skipped)" in report.to_html()


# ---- evaluate_bundles -------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:the scores rank correct answers below:UserWarning")
def test_evaluate_bundles_passes_the_domains_and_formats():
    featureset = synthetic_featureset(90, seed=4)
    bundle = fit_bundle(featureset, probe="logistic", n_bootstrap=0)
    plain = evaluate_bundles(bundle, featureset, n_bootstrap=0)
    assert plain.domain_table is None and plain.format_table is None
    question = np.arange(len(featureset)) // 3  # three records (generated, gold, wrong) each
    featureset.features["domain"] = np.array(["math", "trivia"], dtype=object)[question % 2]
    featureset.features["format"] = np.array(["number", "text"], dtype=object)[question // 45]
    report = evaluate_bundles(bundle, featureset, n_bootstrap=0)
    assert set(report.domain_table.index.get_level_values("domain")) == {"math", "trivia"}
    assert set(report.format_table.index.get_level_values("format")) <= {"number", "text"}
    assert set(report.domain_table.index.get_level_values("score")) == set(report.metrics)
    assert all("within_domain_auroc" in row for row in report.metrics.values())
