"""vap_control: the control plane of VAP (``python -m vap_control``).

- ``grpc_api.py``: the ControlService servicer; ``auth.py`` bearer tokens; ``validation.py`` request checks.
- ``scenario_ops.py``: scenario use cases (one transaction each: scenario + outbox rows);
  ``lifecycle.py`` the legal status transitions.
- ``outbox.py``: the relay to NATS; ``agent_sync.py``: agent replies, health and heartbeats -> scenarios and
  workers; ``inbox.py``: JetStream results -> PostgreSQL, exactly once; ``retention.py``.
- ``subscriptions.py``: live fan-out with bounded per-subscriber queues; ``queries.py``: stored results.
- ``db/``: pool and migrations; ``repo/``: SQL; ``service.py``: assembly; ``testing.py``: test helpers.
"""
