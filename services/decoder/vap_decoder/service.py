"""The decoder agent process: settings, logging, health/metrics endpoints, NATS, the agent, shutdown.

    python -m vap_decoder agent [--config vap.yaml]

Without NATS_URL an embedded NATS server is started in ``data_dir`` (DESIGN.md "Embedded default").
"""

from __future__ import annotations

from pydantic import SecretStr

from vap_common.bus import connect_nats
from vap_common.embedded import service_endpoints
from vap_common.entry import service_main
from vap_common.logs import get_logger
from vap_common.nats_auth import Role
from vap_common.redact import redact_url
from vap_common.runtime import ServiceRuntime
from vap_decoder.agent import DecoderAgent
from vap_decoder.settings import DecoderSettings
from vap_shmring import cleanup_stale_rings

_log = get_logger("vap.decoder.service")


async def run_agent(settings: DecoderSettings) -> None:
    async with ServiceRuntime("decoder-agent", settings) as runtime:
        with service_endpoints(settings, role=Role.DECODER_AGENT) as endpoints:
            nats_url, auth = endpoints.nats_url, endpoints.nats_auth
            assert nats_url is not None
            # The agent's decoder processes get the URL (and, without their own, the credentials) from the
            # settings.
            settings = settings.model_copy(
                update={
                    "nats_url": nats_url,
                    "nats_user": auth.user,
                    "nats_password": SecretStr(auth.password),
                }
            )
            # Rings of decoders that died with a previous agent (their writers are gone).
            removed = cleanup_stale_rings()
            if removed:
                _log.info("removed stale rings", rings=removed)
            nc = await connect_nats(nats_url, name=f"decoder-agent-{settings.agent_id}", auth=auth)
            agent = DecoderAgent(settings, nc)
            try:
                await agent.start()
                await runtime.set_serving(True)
                _log.info(
                    "decoder agent running",
                    agent_id=settings.agent_id,
                    nats=redact_url(nats_url),
                    metrics_port=runtime.metrics_port,
                )
                await runtime.stopped()
                await runtime.set_serving(False)
            finally:
                await agent.close()
                await nc.drain()


def main(argv: list[str] | None = None) -> int:
    return service_main(
        argv,
        prog="python -m vap_decoder agent",
        description="VAP decoder agent",
        settings_type=DecoderSettings,
        run=run_agent,
    )
