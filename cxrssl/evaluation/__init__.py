"""Clinical-paper evaluation of a predictions table (design.md §8): metrics with patient-level
bootstrap CIs, operating-point rules, cohort table, subgroup analysis, plots and a report.

Pure functions over a DataFrame; no model code. ``evaluate_predictions`` is the one call the
``cxrssl evaluate`` command makes. Matplotlib is imported only when plots are drawn.
"""
from cxrssl.evaluation.bootstrap import BootstrapCI, bootstrap_ci, weighted_metrics
from cxrssl.evaluation.calibration import expected_calibration_error, reliability_table
from cxrssl.evaluation.cohort import cohort_table
from cxrssl.evaluation.metrics import (
    METRIC_NAMES,
    OneClassError,
    binary_metrics,
    ensure_two_classes,
    prepare_predictions,
)
from cxrssl.evaluation.plots import save_plots
from cxrssl.evaluation.report import evaluate_predictions, format_terminal_table
from cxrssl.evaluation.subgroups import subgroup_metrics, subgroup_tests
from cxrssl.evaluation.thresholds import VALID_RULES, choose_threshold

__all__ = [
    "METRIC_NAMES", "VALID_RULES", "BootstrapCI", "OneClassError", "binary_metrics", "bootstrap_ci",
    "choose_threshold", "cohort_table", "ensure_two_classes", "evaluate_predictions",
    "expected_calibration_error", "format_terminal_table", "prepare_predictions", "reliability_table",
    "save_plots", "subgroup_metrics", "subgroup_tests", "weighted_metrics",
]
