"""vap_control: the control plane of VAP (``python -m vap_control``).

- ``grpc_api.py``: the ControlService servicer; ``auth.py`` bearer tokens; ``validation.py`` request checks.
- ``scenario_ops.py``: scenario use cases (one transaction each: scenario + outbox rows); ``status.py``
  decides every status change, ``lifecycle.py`` holds the legal transitions.
- ``outbox.py``: the relay to NATS; ``agent_sync.py``: agent replies, health and heartbeats -> scenarios and
  workers; ``placement.py``: nodes, placement and moves; ``retention.py``.
- ``inbox/``: JetStream results -> PostgreSQL, exactly once (``parse.py`` messages -> batch, ``consume.py``
  the consumer loop; storing is ``repo/results.py``).
- ``subscriptions.py``: live fan-out with bounded per-subscriber queues; ``queries.py``: stored results.
- ``db/``: pool and migrations; ``repo/``: all SQL; ``service.py``: assembly; ``testing.py``: test helpers.
"""
