"""The inbox: results (detections, tracks, events, counts) from JetStream into PostgreSQL.

``parse`` turns NATS messages into a typed batch, ``repo.results.store`` writes it idempotently and
``consume`` runs the JetStream consumer (fetch, store, ack, linger). Nothing is imported here, so that
``repo.results`` can use ``parse`` without loading the consumer.
"""
