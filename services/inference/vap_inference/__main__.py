"""``python -m vap_inference [--config FILE]``: the inference service process.

Loads the default model (verified and batch-probed), subscribes to every channel's FrameRefs and to the
scenario configs, serves InferenceService (Detect, ListModels) and grpc.health.v1 on the runtime's gRPC
port, exports Prometheus metrics, and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import sys

from vap_common.embedded import service_endpoints
from vap_common.entry import service_main
from vap_common.grpc_auth import BearerTokenInterceptor
from vap_common.nats_auth import Role
from vap_common.runtime import ServiceRuntime
from vap_inference import metrics
from vap_inference.grpc_api import InferenceApi, add_to_server
from vap_inference.manager import ModelManager
from vap_inference.service import InferenceService
from vap_inference.settings import InferenceSettings


async def run(settings: InferenceSettings) -> None:
    import cv2

    cv2.setNumThreads(settings.opencv_threads)
    refused = metrics.API_REFUSED.inc
    interceptors = [BearerTokenInterceptor(settings.api_tokens(), on_refused=lambda method: refused())]
    options = [("grpc.max_receive_message_length", settings.max_image_bytes + 1024 * 1024)]
    async with ServiceRuntime("inference", settings, interceptors=interceptors, options=options) as runtime:
        manager = ModelManager(settings)
        api = InferenceApi(settings, manager)
        add_to_server(runtime.add_grpc_service(), api)
        service = InferenceService(settings, manager)
        try:
            with service_endpoints(settings, role=Role.INFERENCE) as endpoints:
                assert endpoints.nats_url is not None
                try:
                    await service.start(endpoints.nats_url, auth=endpoints.nats_auth)
                    await runtime.set_serving(True)
                    await runtime.stopped()
                    await runtime.set_serving(False)
                finally:
                    await service.stop()
        finally:
            api.close()
            manager.close()


def main(argv: list[str] | None = None) -> int:
    return service_main(
        argv,
        prog="python -m vap_inference",
        description="VAP inference service",
        settings_type=InferenceSettings,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
