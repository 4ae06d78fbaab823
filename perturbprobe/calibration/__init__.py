"""Calibrators, metrics, risk-controlled abstention thresholds, plots and reports.

- metrics (pure functions, bootstrap intervals): :func:`evaluate_confidence`, ECE, Brier, …;
- metrics within domains (not gamed by recognising the domain): :func:`within_domain_auroc`,
  :func:`per_domain_metrics`, :func:`evaluate_domains`;
- calibrators: :func:`make_calibrator` (temperature, Platt, isotonic, histogram, none);
- abstention: :func:`risk_controlled_threshold` (Clopper–Pearson, fixed-sequence testing);
- base-rate change: :func:`adjust_to_prior` (known-prior label-shift correction);
- distribution shift: :class:`ShiftReference` → :class:`ShiftCheck` (KS tests, Bonferroni);
- reports: :func:`build_report` → :class:`Report` (self-contained HTML + JSON).
"""

from .calibrators import CALIBRATORS, Calibrator, calibrator_from_dict, make_calibrator
from .domains import (
    DOMAIN_METRICS,
    DomainEvaluation,
    WithinDomainAUROC,
    evaluate_domains,
    per_domain_metrics,
    within_domain_auroc,
)
from .metrics import METRICS, MetricValue, evaluate_confidence, metrics_table
from .prior_shift import adjust_to_prior
from .report import Report, build_report
from .risk_control import (
    RiskControlledThreshold,
    clopper_pearson_upper,
    risk_controlled_threshold,
    threshold_candidates,
)
from .shift import ShiftCheck, ShiftReference

__all__ = [
    "CALIBRATORS",
    "DOMAIN_METRICS",
    "METRICS",
    "Calibrator",
    "DomainEvaluation",
    "MetricValue",
    "Report",
    "RiskControlledThreshold",
    "ShiftCheck",
    "ShiftReference",
    "WithinDomainAUROC",
    "adjust_to_prior",
    "build_report",
    "calibrator_from_dict",
    "clopper_pearson_upper",
    "evaluate_confidence",
    "evaluate_domains",
    "make_calibrator",
    "metrics_table",
    "per_domain_metrics",
    "risk_controlled_threshold",
    "threshold_candidates",
    "within_domain_auroc",
]
