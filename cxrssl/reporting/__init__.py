"""One page per model (`report.html`) and a model card per fine-tuned checkpoint.

Both read the files the commands already write (metrics.csv, subgroups.csv, localisation.csv,
...) rather than recomputing anything, so the page shows exactly the numbers in those tables.
"""
from cxrssl.reporting.html import write_report
from cxrssl.reporting.model_card import write_model_card

__all__ = ["write_model_card", "write_report"]
