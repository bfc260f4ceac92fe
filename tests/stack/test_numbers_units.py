"""`vap counts` / `vap events` without a server: times and spans as users type them, rows named by the
site file's direction labels, totals, and the output formats."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from vap_proto.v1 import analytics_pb2
from vap_stack.numbers import UsageError, counts_rows, parse_span, parse_when, print_counts

NOW = dt.datetime(2026, 12, 6, 10, 30, tzinfo=dt.UTC)


def test_times_users_type() -> None:
    assert parse_when("15m", "--since", NOW) == NOW - dt.timedelta(minutes=15)
    assert parse_when("2h", "--since", NOW) == NOW - dt.timedelta(hours=2)
    assert parse_when("7d", "--since", NOW) == NOW - dt.timedelta(days=7)
    assert parse_when("today", "--since", NOW) == dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    assert parse_when("2026-12-06T08:00+00:00", "--since", NOW) == dt.datetime(2026, 12, 6, 8, tzinfo=dt.UTC)
    assert parse_when("2026-12-06", "--since", NOW).tzinfo is not None  # local time, made explicit
    with pytest.raises(UsageError, match="--until: 'soon' is not a time"):
        parse_when("soon", "--until", NOW)
    assert parse_span("60", "--interval") == 60 and parse_span("15m", "--interval") == 900
    with pytest.raises(UsageError, match="--interval"):
        parse_span("0", "--interval")


def _counts() -> list[analytics_pb2.IntervalCounts]:
    return [
        analytics_pb2.IntervalCounts(
            rule_id="door", interval_start_ns=60 * 10**9, interval_end_ns=120 * 10**9,
            line=analytics_pb2.LineCounts(a_to_b=2, b_to_a=1),
        ),
        analytics_pb2.IntervalCounts(
            rule_id="door", interval_start_ns=120 * 10**9, interval_end_ns=180 * 10**9, partial=True,
            line=analytics_pb2.LineCounts(a_to_b=3),
        ),
        analytics_pb2.IntervalCounts(
            rule_id="lobby", interval_start_ns=60 * 10**9, interval_end_ns=120 * 10**9,
            zone=analytics_pb2.ZoneCounts(enters=4, exits=3, max_occupancy=2),
        ),
    ]  # fmt: skip


def test_rows_use_the_direction_labels_and_totals_add_up(capsys: pytest.CaptureFixture[str]) -> None:
    rows = counts_rows(_counts(), {"door": ("out", "in")})
    assert rows[0]["kind"] == "line" and (rows[0]["out"], rows[0]["in"]) == (2, 1)
    assert rows[1]["partial"] and rows[2]["max_occupancy"] == 2
    print_counts(rows, "text")
    text = capsys.readouterr().out.splitlines()
    assert text[1].endswith("*")  # the open interval is marked
    assert [line.split()[1:] for line in text if line.startswith("total")] == [
        ["door", "out", "5", "in", "1"],
        ["lobby", "enters", "4", "exits", "3", "max_occupancy", "2"],
    ]
    print_counts(rows, "json")
    assert json.loads(capsys.readouterr().out) == rows
    print_counts(rows, "csv")
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["rule"] for r in parsed] == ["door", "door", "lobby"] and parsed[2]["enters"] == "4"
