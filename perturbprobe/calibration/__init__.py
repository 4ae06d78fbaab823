"""Calibrators, metrics, risk-controlled abstention thresholds, plots and reports.

- metrics (pure functions, bootstrap intervals): :func:`evaluate_confidence`, ECE, Brier, …;
- calibrators: :func:`make_calibrator` (temperature, Platt, isotonic, histogram, none);
- abstention: :func:`risk_controlled_threshold` (Clopper–Pearson, fixed-sequence testing);
- reports: :func:`build_report` → :class:`Report` (self-contained HTML + JSON).
"""

from .calibrators import CALIBRATORS, Calibrator, calibrator_from_dict, make_calibrator
from .metrics import METRICS, MetricValue, evaluate_confidence, metrics_table
from .report import Report, build_report
from .risk_control import (
    RiskControlledThreshold,
    clopper_pearson_upper,
    risk_controlled_threshold,
    threshold_candidates,
)

__all__ = [
    "CALIBRATORS",
    "METRICS",
    "Calibrator",
    "MetricValue",
    "Report",
    "RiskControlledThreshold",
    "build_report",
    "calibrator_from_dict",
    "clopper_pearson_upper",
    "evaluate_confidence",
    "make_calibrator",
    "metrics_table",
    "risk_controlled_threshold",
    "threshold_candidates",
]
