"""``python -m vap_web [--config FILE]``: the live web view gateway process.

Runs on a host whose decoders it shows (it maps their shared-memory rings); needs the pipeline's NATS
(NATS_URL; unset: an embedded server in ``<data_dir>/embedded``, like every VAP service) and the control API
(``control_target``). gRPC health on the runtime's health port (for `vap up`'s supervisor), Prometheus
metrics on ``metrics_port``; stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from vap_common.embedded import Endpoints, service_endpoints
from vap_common.entry import service_main
from vap_common.logs import get_logger
from vap_common.nats_auth import Role
from vap_common.runtime import ServiceRuntime
from vap_common.settings import SettingsError
from vap_framebus import AsyncFrameSubscriber
from vap_web.app import build_app
from vap_web.control import ControlClient
from vap_web.frames import FrameEncoder
from vap_web.live import Watches
from vap_web.settings import WebSettings

_log = get_logger("vap.web")


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"listen: expected host:port, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@contextlib.asynccontextmanager
async def _nats(settings: WebSettings) -> AsyncIterator[Endpoints]:
    with service_endpoints(settings, role=Role.WEB) as endpoints:
        assert endpoints.nats_url is not None
        yield endpoints


async def run(settings: WebSettings) -> None:
    host, port = split_listen(settings.listen)
    async with ServiceRuntime("web", settings) as runtime, _nats(settings) as endpoints:
        bus = AsyncFrameSubscriber()
        assert endpoints.nats_url is not None
        await bus.connect(endpoints.nats_url, name="vap-web", auth=endpoints.nats_auth)
        client = ControlClient(settings)
        encoder = FrameEncoder(settings.jpeg_quality, settings.max_width)
        watches = Watches(client, bus, encoder, settings)
        runner = web.AppRunner(build_app(settings, client, watches), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0][1] if runner.addresses else port
            _log.info("web view listening", url=f"http://{host}:{bound}/", control=settings.control_target)
            await runtime.set_serving(True)
            await runtime.stopped()
            await runtime.set_serving(False)
        finally:
            await watches.close()
            await runner.cleanup()
            await client.close()
            await bus.close()
            encoder.close()


def main(argv: list[str] | None = None) -> int:
    return service_main(
        argv,
        prog="python -m vap_web",
        description="VAP live web view",
        settings_type=WebSettings,
        run=run,
        check=lambda s: split_listen(s.listen),
    )


if __name__ == "__main__":
    sys.exit(main())
