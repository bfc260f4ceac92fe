"""Prometheus metrics of the control service (served on the runtime's metrics port).

Labels are method names, codes, kinds and statuses only: never URLs (credentials) and never per-channel ids
(unbounded cardinality; ListChannels has the per-channel figures).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RPC_TOTAL = Counter(
    "vap_control_rpc_total", "gRPC calls handled, by method and status code", ["method", "code"]
)
RPC_SECONDS = Histogram(
    "vap_control_rpc_seconds",
    "Time to answer unary gRPC calls",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
AUTH_FAILURES = Counter("vap_control_auth_failures_total", "Calls refused with UNAUTHENTICATED")

SCENARIOS = Gauge("vap_control_scenarios", "Scenarios by lifecycle status", ["status"])
TRANSITIONS = Counter("vap_control_transitions_total", "Scenario status changes", ["to"])

OUTBOX_PENDING = Gauge("vap_control_outbox_pending", "Outbox rows not yet delivered")
OUTBOX_DELIVERIES = Counter(
    "vap_control_outbox_deliveries_total", "Outbox delivery attempts by kind and result", ["kind", "result"]
)
AGENT_REPLIES = Counter("vap_control_agent_replies_total", "Agent replies applied, by code", ["code"])

INBOX_MESSAGES = Counter(
    "vap_control_inbox_messages_total", "Result messages taken from JetStream, by kind", ["kind"]
)
INBOX_STORED = Counter("vap_control_inbox_stored_total", "Result rows stored, by kind", ["kind"])
INBOX_DUPLICATES = Counter(
    "vap_control_inbox_duplicates_total", "Redelivered or repeated results skipped, by kind", ["kind"]
)
INBOX_REDELIVERED = Counter(
    "vap_control_inbox_redelivered_total", "Result messages JetStream delivered more than once"
)
INBOX_DROPPED = Counter(
    "vap_control_inbox_dropped_total", "Result messages not stored, by reason", ["reason"]
)
INBOX_BATCH_SECONDS = Histogram(
    "vap_control_inbox_batch_seconds",
    "Time to store one fetched batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RETENTION_DELETED = Counter("vap_control_retention_deleted_total", "Rows deleted by retention", ["table"])

SUBSCRIBERS = Gauge("vap_control_subscribers", "Live gRPC subscribers, by stream", ["stream"])
SUBSCRIBER_DROPPED = Counter(
    "vap_control_subscriber_dropped_total",
    "Messages dropped because a subscriber read too slowly, by stream",
    ["stream"],
)
FANOUT_MESSAGES = Counter(
    "vap_control_fanout_messages_total", "Bus messages fanned out, by stream", ["stream"]
)


def refused_call(method: str) -> None:
    """A call refused with UNAUTHENTICATED (vap_common.grpc_auth)."""
    AUTH_FAILURES.inc()
    RPC_TOTAL.labels(method, "UNAUTHENTICATED").inc()
