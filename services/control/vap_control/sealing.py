# ruff: noqa: S608  (SQL is assembled from constant fragments only; every value is a bound parameter)
"""Camera URLs at rest: sealed with the camera keys (``vap_common.camera_secrets``), never in plaintext.

The control service seals a URL as it arrives (CreateScenario, UpdateScenario) and stores the sealed URL with
a redacted copy for display; StartChannel commands carry the sealed URL, which only decoder agents open.
Control itself never opens a stored URL.

At start-up ``seal_stored_urls`` brings the database in line with the keys:

- rows from before migration 0004 (plaintext URL, nothing sealed) are sealed and their URL redacted, and
  outbox StartChannel payloads that still carry a plaintext URL get it sealed instead;
- URLs sealed under an older key (the first key changed: rotation) are sealed again under the first key,
  in scenarios and outbox payloads alike, so the old key can be dropped afterwards;
- reasons stored before redaction caught every URL shape (status, transition and health reasons, outbox
  errors) are redacted again.
"""

from __future__ import annotations

from dataclasses import dataclass

from vap_common.camera_secrets import CameraKeyError, CameraKeys
from vap_common.logs import get_logger
from vap_common.redact import redact_text, redact_url
from vap_control.db.pool import Pool
from vap_control.repo.outbox import START
from vap_control.repo.scenarios import Conn, SealedUrl
from vap_proto.v1 import agent_pb2, health_pb2

_log = get_logger("vap.control.sealing")

# (table, key column, text column) of free text that may quote a URL.
_REASON_COLUMNS = (
    ("scenarios", "id", "status_reason"),
    ("scenario_transitions", "id", "reason"),
    ("outbox", "id", "last_error"),
)


def seal_url(keys: CameraKeys, url: str) -> SealedUrl:
    return SealedUrl(redacted=redact_url(url), sealed=keys.seal(url))


@dataclass(slots=True)
class SealReport:
    sealed: int = 0  # plaintext URLs sealed (scenarios and outbox payloads)
    resealed: int = 0  # URLs sealed again under the first key
    unopenable: int = 0  # sealed URLs that no key opens (their scenarios cannot start until it is back)
    reasons: int = 0  # stored reasons redacted again

    def changed(self) -> bool:
        return bool(self.sealed or self.resealed or self.reasons)


async def _scenarios(conn: Conn, keys: CameraKeys, report: SealReport) -> None:
    cur = await conn.execute("SELECT id, redacted_url, sealed_url FROM scenarios FOR UPDATE")
    for scenario_id, text, sealed in await cur.fetchall():
        if sealed is None:  # written before 0004: the column still holds the plaintext URL
            new = seal_url(keys, text)
            await conn.execute(
                "UPDATE scenarios SET redacted_url = %s, sealed_url = %s WHERE id = %s",
                (new.redacted, new.sealed, scenario_id),
            )
            report.sealed += 1
            continue
        if not keys.needs_reseal(sealed):
            continue
        try:
            resealed = keys.reseal(sealed)
        except CameraKeyError:
            report.unopenable += 1
            continue
        await conn.execute("UPDATE scenarios SET sealed_url = %s WHERE id = %s", (resealed, scenario_id))
        report.resealed += 1


async def _outbox(conn: Conn, keys: CameraKeys, report: SealReport) -> None:
    cur = await conn.execute("SELECT id, payload FROM outbox WHERE kind = %s FOR UPDATE", (START,))
    for row_id, payload in await cur.fetchall():
        command = agent_pb2.AgentCommand.FromString(payload)
        start = command.start_channel
        if start.source.url:
            start.sealed_url = keys.seal(start.source.url)
            start.source.url = ""
            start.source.redacted_url = ""
            report.sealed += 1
        elif start.sealed_url and keys.needs_reseal(start.sealed_url):
            try:
                start.sealed_url = keys.reseal(start.sealed_url)
            except CameraKeyError:
                report.unopenable += 1
                continue
            report.resealed += 1
        else:
            continue
        await conn.execute(
            "UPDATE outbox SET payload = %s WHERE id = %s", (command.SerializeToString(), row_id)
        )


async def _reasons(conn: Conn, report: SealReport) -> None:
    for table, key, column in _REASON_COLUMNS:
        # Only text that can hold a URL's credentials or a secret parameter: an '@' or an '='.
        query = f"SELECT {key}, {column} FROM {table} WHERE {column} LIKE '%%@%%' OR {column} LIKE '%%=%%'"
        cur = await conn.execute(query.encode())
        for row_key, text in await cur.fetchall():
            clean = redact_text(text)
            if clean != text:
                await conn.execute(
                    f"UPDATE {table} SET {column} = %s WHERE {key} = %s".encode(), (clean, row_key)
                )
                report.reasons += 1
    cur = await conn.execute("SELECT id, health FROM scenarios WHERE health IS NOT NULL")
    for scenario_id, data in await cur.fetchall():
        health = health_pb2.ChannelHealth.FromString(data)
        clean = redact_text(health.reason)
        if clean != health.reason:
            health.reason = clean
            await conn.execute(
                "UPDATE scenarios SET health = %s WHERE id = %s", (health.SerializeToString(), scenario_id)
            )
            report.reasons += 1


async def seal_stored_urls(pool: Pool, keys: CameraKeys) -> SealReport:
    """Seal plaintext URLs, re-seal URLs under older keys, redact old reasons (see the module docstring).
    One transaction; two control instances starting together wait for each other's row locks."""
    report = SealReport()
    async with pool.connection() as conn, conn.transaction():
        await _scenarios(conn, keys, report)
        await _outbox(conn, keys, report)
        await _reasons(conn, report)
    if report.changed():
        _log.info(
            "camera URLs sealed",
            sealed=report.sealed,
            resealed=report.resealed,
            reasons_redacted=report.reasons,
            keys=repr(keys),
        )
    if report.unopenable:
        _log.error(
            "sealed camera URLs that no camera key opens: their scenarios cannot start"
            " (was a key dropped before control re-sealed under the new one?)",
            count=report.unopenable,
            keys=repr(keys),
        )
    return report
