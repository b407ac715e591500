"""The report of a grid run: paper-style tables, the retained-knowledge headline, code flips and plots."""

from qunlearn.report.tables import build_report, headline, index_results
from qunlearn.report.write import write_report

__all__ = ["build_report", "headline", "index_results", "write_report"]
