"""``python -m vap_control [--config FILE]``: the control service process.

Serves ControlService, grpc.health.v1 and server reflection on ``listen`` (TLS when configured), health also
on the runtime's local health port, Prometheus metrics on ``metrics_port``; stops cleanly on SIGTERM/SIGINT.
Without NATS_URL / DATABASE_URL it starts embedded servers in ``<data_dir>/embedded``.
"""

from __future__ import annotations

import sys

from vap_common.camera_secrets import load_camera_keys
from vap_common.embedded import service_endpoints
from vap_common.entry import service_main
from vap_common.logs import get_logger
from vap_common.nats_auth import Role
from vap_common.runtime import ServiceRuntime
from vap_control.service import CONTROL_SERVICE, ControlService, grpc_server_setup
from vap_control.settings import ControlSettings

_log = get_logger("vap.control")


async def run(settings: ControlSettings) -> None:
    interceptors, options, ports = grpc_server_setup(settings)
    async with ServiceRuntime(
        "control", settings, interceptors=interceptors, options=options, ports=ports
    ) as runtime:
        with service_endpoints(settings, role=Role.CONTROL, need_postgres=True) as endpoints:
            assert endpoints.nats_url is not None and endpoints.database_url is not None
            service = ControlService(
                settings,
                nats_url=endpoints.nats_url,
                database_url=endpoints.database_url,
                nats_auth=endpoints.nats_auth,
            )
            try:
                await service.start(runtime.add_grpc_service())
                _log.info(
                    "control API listening",
                    address=settings.listen,
                    port=runtime.bound_ports[0],
                    tls=settings.tls_cert_file is not None,
                )
                await runtime.set_serving(True)
                await runtime.set_serving(True, CONTROL_SERVICE)
                await runtime.stopped()
                await runtime.set_serving(False)
                await runtime.set_serving(False, CONTROL_SERVICE)
            finally:
                await service.stop()


def _check(settings: ControlSettings) -> None:
    # The camera keys (made on first start when none are given): a bad key is a settings error, one line.
    load_camera_keys(settings.data_dir, create=True)


def main(argv: list[str] | None = None) -> int:
    return service_main(
        argv,
        prog="python -m vap_control",
        description="VAP control service",
        settings_type=ControlSettings,
        run=run,
        check=_check,
    )


if __name__ == "__main__":
    sys.exit(main())
