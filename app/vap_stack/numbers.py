"""``vap counts`` and ``vap events``: the numbers users ask for, from the control API.

    vap counts SCENARIO [--since WHEN] [--until WHEN] [--interval 15m] [--rule ID]... [--json | --csv]
    vap events SCENARIO [--since WHEN] [--until WHEN] [--rule ID]... [--kind KIND]... [--limit N] [--json]

SCENARIO is an id or a name. WHEN is an ISO date/time (``2026-12-06``, ``2026-12-06T08:00``, local time
unless it says its zone), a span back from now (``90s``, ``15m``, ``2h``, ``7d``) or ``today`` (local
midnight). ``counts`` defaults to the last hour, like the web view and ``vap watch``; its rows are
QueryCounts' intervals (``*`` = partial: still open, counted from its events so far) and a total per rule.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from google.protobuf import duration_pb2, json_format

from vap_proto.v1 import analytics_pb2, common_pb2, control_pb2, scenario_pb2

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
KINDS = {
    "line": analytics_pb2.EVENT_KIND_LINE_CROSSING,
    "enter": analytics_pb2.EVENT_KIND_ZONE_ENTER,
    "exit": analytics_pb2.EVENT_KIND_ZONE_EXIT,
    "dwell": analytics_pb2.EVENT_KIND_ZONE_DWELL,
    "loitering": analytics_pb2.EVENT_KIND_LOITERING,
}


class UsageError(ValueError):
    """A bad argument; the message names it."""


def parse_when(text: str, option: str, now: dt.datetime | None = None) -> dt.datetime:
    """An aware datetime from ``text`` (see the module docstring); UsageError naming ``option``."""
    now = now or dt.datetime.now().astimezone()
    value = text.strip().lower()
    if value == "today":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if m := _SPAN.match(value):
        return now - dt.timedelta(seconds=float(m[1]) * _UNIT_S[m[2]])
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option}: {text!r} is not a time (ISO like 2026-12-06T08:00, a span back like 15m / 2h / 7d, "
            "or 'today')"
        ) from None
    return when if when.tzinfo else when.astimezone()


def parse_span(text: str, option: str) -> float:
    """Seconds of a span like ``60``, ``90s``, ``15m``, ``1h``."""
    value = text.strip().lower()
    if value.replace(".", "", 1).isdigit():
        seconds = float(value)
    elif m := _SPAN.match(value):
        seconds = float(m[1]) * _UNIT_S[m[2]]
    else:
        raise UsageError(f"{option}: {text!r} is not a duration (e.g. 60, 90s, 15m, 1h)")
    if seconds <= 0:
        raise UsageError(f"{option}: must be > 0")
    return seconds


def time_range(args: argparse.Namespace, default_since: str | None) -> common_pb2.TimeRange:
    out = common_pb2.TimeRange()
    since = args.since or default_since
    if since:
        out.start_time.FromDatetime(parse_when(since, "--since").astimezone(dt.UTC).replace(tzinfo=None))
    if args.until:
        out.end_time.FromDatetime(parse_when(args.until, "--until").astimezone(dt.UTC).replace(tzinfo=None))
    if args.since and args.until and out.end_time.ToNanoseconds() <= out.start_time.ToNanoseconds():
        raise UsageError("--until must be after --since")
    return out


def _local(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _labels(scenario: scenario_pb2.Scenario) -> dict[str, tuple[str, str]]:
    return {
        r.rule_id: (r.line.a_to_b_label or "a_to_b", r.line.b_to_a_label or "b_to_a")
        for r in scenario.analytics.rules
        if r.WhichOneof("kind") == "line"
    }


def counts_rows(
    counts: Sequence[analytics_pb2.IntervalCounts], labels: dict[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    """One row per interval and rule, with the line directions named as the site file names them."""
    rows = []
    for c in counts:
        row: dict[str, Any] = {
            "start": _local(c.interval_start_ns),
            "end": _local(c.interval_end_ns),
            "rule": c.rule_id,
            "partial": c.partial,
        }
        if c.WhichOneof("counts") == "zone":
            z = c.zone
            row |= {"kind": "zone", "enters": z.enters, "exits": z.exits, "max_occupancy": z.max_occupancy}
        else:
            a, b = labels.get(c.rule_id, ("a_to_b", "b_to_a"))
            row |= {"kind": "line", a: c.line.a_to_b, b: c.line.b_to_a}
        rows.append(row)
    return rows


def print_counts(rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return
    if fmt == "csv":
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        return
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        figures = {k: v for k, v in row.items() if k not in ("start", "end", "rule", "partial", "kind")}
        text = "  ".join(f"{k} {v}" for k, v in figures.items())
        print(f"{row['start']}  {row['rule']:16} {text}{'  *' if row['partial'] else ''}")
        total = totals.setdefault(row["rule"], {})
        for k, v in figures.items():
            total[k] = max(total.get(k, 0), v) if k == "max_occupancy" else total.get(k, 0) + v
    for rule, total in totals.items():
        text = "  ".join(f"{k} {v}" for k, v in total.items())
        print(f"{'total':19}  {rule:16} {text}")
    if not rows:
        print("(no counts in that time range)")


async def run_counts(api: Any, args: argparse.Namespace, scenario: scenario_pb2.Scenario) -> None:
    request = control_pb2.QueryCountsRequest(
        scenario_id=scenario.id, time_range=time_range(args, "1h"), rule_ids=args.rule or [], page_size=1000
    )
    if args.interval:
        request.interval.CopyFrom(
            duration_pb2.Duration(seconds=round(parse_span(args.interval, "--interval")))
        )
    counts: list[analytics_pb2.IntervalCounts] = []
    while True:
        reply = await api.call(api.stub.QueryCounts, request)
        counts += reply.counts
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    print_counts(
        counts_rows(counts, _labels(scenario)), "json" if args.json else "csv" if args.csv else "text"
    )


def event_line(ev: analytics_pb2.AnalyticsEvent) -> str:
    kind = ev.WhichOneof("kind") or "-"
    what: str = kind
    if kind == "line_crossing":
        what = f"crossed ({ev.line_crossing.direction_label or ev.line_crossing.direction})"
    elif kind == "zone_exit":
        what = f"left after {ev.zone_exit.dwell_ms / 1000:.1f} s"
    elif kind in ("zone_dwell", "loitering"):
        what = f"{kind} {getattr(ev, kind).dwell_ms / 1000:.1f} s"
    elif kind == "zone_enter":
        what = f"entered (occupancy {ev.zone_enter.occupancy})"
    return f"{_local(ev.event_time_ns)}  {ev.rule_id:16} {ev.class_name or '-'} #{ev.track_id}  {what}"


async def run_events(api: Any, args: argparse.Namespace, scenario: scenario_pb2.Scenario) -> None:
    kinds = [KINDS[k] for k in args.kind or []]
    request = control_pb2.QueryEventsRequest(
        scenario_id=scenario.id,
        time_range=time_range(args, "1h"),
        rule_ids=args.rule or [],
        kinds=kinds,
        page_size=min(1000, args.limit),
    )
    events: list[analytics_pb2.AnalyticsEvent] = []
    while len(events) < args.limit:
        reply = await api.call(api.stub.QueryEvents, request)
        events += reply.events
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    events = events[: args.limit]
    if args.json:
        print(
            json.dumps(
                [json_format.MessageToDict(e, preserving_proto_field_name=True) for e in events], indent=2
            )
        )
        return
    for ev in events:
        print(event_line(ev))
    if not events:
        print("(no events in that time range)")


def add_parsers(sub: Any, conn: argparse.ArgumentParser) -> None:
    when = argparse.ArgumentParser(add_help=False)
    when.add_argument("scenario", help="scenario id or name")
    when.add_argument("--since", help="ISO time, a span back (15m, 2h, 7d) or 'today' (default: 1h)")
    when.add_argument("--until", help="ISO time or a span back (default: now)")
    when.add_argument("--rule", action="append", metavar="ID", help="only this rule (repeatable)")
    when.add_argument("--json", action="store_true")
    counts = sub.add_parser("counts", parents=[conn, when], help="counts per interval and rule, with totals")
    counts.add_argument("--interval", help="interval of the rows (a multiple of the scenario's), e.g. 15m")
    counts.add_argument("--csv", action="store_true")
    events = sub.add_parser("events", parents=[conn, when], help="line crossings and zone events")
    events.add_argument("--kind", action="append", choices=sorted(KINDS), help="only this kind (repeatable)")
    events.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
