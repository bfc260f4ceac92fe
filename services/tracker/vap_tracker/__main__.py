"""``python -m vap_tracker [--config FILE]``: the tracker service process.

Connects to NATS (NATS_URL; the stack launcher passes its embedded server's URL; unset: an embedded server in
``<data_dir>/embedded``, like every VAP service), tracks every channel
(or the ``channels`` of its settings), serves grpc.health.v1 and Prometheus metrics, and stops cleanly on
SIGTERM/SIGINT, publishing the open count intervals first.
"""

from __future__ import annotations

import sys

from vap_common.bus import NatsBus
from vap_common.embedded import service_endpoints
from vap_common.entry import service_main
from vap_common.nats_auth import Role
from vap_common.runtime import ServiceRuntime
from vap_models import PackagedModelError
from vap_tracker.attributes.classifier import ClassifierLoadError
from vap_tracker.service import TrackerService
from vap_tracker.settings import TrackerServiceSettings


async def run(settings: TrackerServiceSettings) -> int:
    async with ServiceRuntime("tracker", settings) as runtime:
        service = TrackerService(settings)
        try:
            service.load_attribute_classifiers()
        except (ClassifierLoadError, PackagedModelError, ValueError) as exc:
            print(f"tracker.attributes: {exc}", file=sys.stderr)
            return 2
        with service_endpoints(settings, role=Role.TRACKER) as endpoints:
            assert endpoints.nats_url is not None
            bus = await NatsBus.connect(endpoints.nats_url, name="vap-tracker", auth=endpoints.nats_auth)
            service.bus = bus
            try:
                await service.start()
                await runtime.set_serving(True)
                await runtime.stopped()
                await runtime.set_serving(False)
            finally:
                await service.stop()
                await bus.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return service_main(
        argv,
        prog="python -m vap_tracker",
        description="VAP tracker service",
        settings_type=TrackerServiceSettings,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
