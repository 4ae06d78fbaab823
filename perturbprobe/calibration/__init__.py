"""Calibrators, metrics, risk-controlled thresholds, reliability diagrams and reports.
Not implemented yet: planned in the next issues (see ARCHITECTURE.md)."""
