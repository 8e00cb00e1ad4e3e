"""Report writing: markdown helpers, shared plots, and reports rebuilt from run folders."""

from neuralode.report.collect import collect, find_runs, read_metrics, summary_report, write_summary
from neuralode.report.markdown import format_value, image, link, metrics_table

__all__ = [
    "collect",
    "find_runs",
    "format_value",
    "image",
    "link",
    "metrics_table",
    "read_metrics",
    "summary_report",
    "write_summary",
]
