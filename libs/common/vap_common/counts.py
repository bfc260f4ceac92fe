"""Counts over a window as every VAP surface shows them: the control API's QueryCounts (stored intervals
plus the events not yet in one, see IntervalCounts.partial), all pages, summed per rule.

The live web view, the camera list, `vap up`'s table and `vap watch` all read their counts through here, so
for the same window they show the same numbers as QueryCounts and QueryEvents. (They used to show the
tracker's running totals since it started, which matched no window a user could ask the API for.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from vap_proto.v1 import analytics_pb2, common_pb2, control_pb2

# The window every live surface shows: the last hour.
WINDOW_MINUTES = 60.0
_MAX_ROWS = 20_000


@dataclass(slots=True)
class RuleTotals:
    kind: str  # "line" | "zone"
    a_to_b: int = 0
    b_to_a: int = 0
    enters: int = 0
    exits: int = 0


def since(seconds: float, now_ns: int | None = None) -> common_pb2.TimeRange:
    """The time range from ``seconds`` ago to now (QueryCounts includes the interval holding its start)."""
    start = timestamp_pb2.Timestamp()
    start.FromNanoseconds((time.time_ns() if now_ns is None else now_ns) - int(seconds * 1e9))
    return common_pb2.TimeRange(start_time=start)


async def query_counts(
    stub: Any, scenario_id: str, *, minutes: float, metadata: Any = None, timeout: float = 10.0
) -> tuple[list[analytics_pb2.IntervalCounts], float]:
    """Every interval of the last ``minutes`` (oldest first, all pages) and the interval length (s)."""
    out: list[analytics_pb2.IntervalCounts] = []
    request = control_pb2.QueryCountsRequest(
        scenario_id=scenario_id, time_range=since(minutes * 60), page_size=1000
    )
    while True:
        reply = await stub.QueryCounts(request, metadata=metadata, timeout=timeout)
        out.extend(reply.counts)
        if not reply.next_page_token or len(out) > _MAX_ROWS:
            return out, reply.interval.seconds + reply.interval.nanos / 1e9
        request.page_token = reply.next_page_token


def totals(counts: list[analytics_pb2.IntervalCounts]) -> dict[str, RuleTotals]:
    """Per rule, the sums over ``counts``."""
    out: dict[str, RuleTotals] = {}
    for c in counts:
        kind = c.WhichOneof("counts") or "line"
        t = out.setdefault(c.rule_id, RuleTotals(kind))
        if kind == "line":
            t.a_to_b += c.line.a_to_b
            t.b_to_a += c.line.b_to_a
        else:
            t.enters += c.zone.enters
            t.exits += c.zone.exits
    return out
