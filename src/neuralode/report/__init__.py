"""Report writing: markdown helpers, headline tables, HTML twins, and reports rebuilt from run folders."""

from neuralode.report.collect import collect, find_runs, read_metrics, run_report, summary_report, write_summary
from neuralode.report.headlines import Headline, declare, headline_table
from neuralode.report.html import markdown_to_html, write_html
from neuralode.report.markdown import format_value, image, link, metrics_table

__all__ = [
    "Headline",
    "collect",
    "declare",
    "find_runs",
    "format_value",
    "headline_table",
    "image",
    "link",
    "markdown_to_html",
    "metrics_table",
    "read_metrics",
    "run_report",
    "summary_report",
    "write_html",
    "write_summary",
]
