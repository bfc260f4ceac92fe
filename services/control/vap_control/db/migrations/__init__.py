"""Versioned schema migrations: ``NNNN_name.sql``, applied in order by vap_control.db.migrate."""
