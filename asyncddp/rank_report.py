"""``asyncddp.comm.rank_report`` under the name the README gave it before it moved into ``comm/``:
``asyncddp.rank_report.report_lost_ranks`` keeps working for scripts that call it."""

from __future__ import annotations

from asyncddp.comm.rank_report import parse_lost_ranks, parse_rank_end, rank_end_line, report_lost_ranks

__all__ = ["rank_end_line", "parse_rank_end", "report_lost_ranks", "parse_lost_ranks"]
