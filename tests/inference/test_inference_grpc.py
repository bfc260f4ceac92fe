"""InferenceService over gRPC: Detect on JPEG/PNG uploads (people found, limits, corrupt images), ListModels;
and the service process itself (python -m vap_inference): health SERVING, InferenceService on the same
port, clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vap_inference.grpc_api import InferenceApi, add_to_server
from vap_inference.imageio import ImageError, header_size
from vap_inference.manager import ModelManager
from vap_inference.settings import InferenceSettings
from vap_models.catalogue import NANODET, NANODET_INT8, SSDLITE
from vap_proto.v1 import inference_pb2, inference_pb2_grpc


@pytest_asyncio.fixture(loop_scope="session")
async def stub(models_dir: Path) -> AsyncIterator[inference_pb2_grpc.InferenceServiceStub]:
    settings = InferenceSettings.load(
        None,
        models_dir=models_dir,
        backend="onnxruntime",
        max_image_bytes=2_000_000,
        max_image_pixels=2_000_000,
    )
    manager = ModelManager(settings)
    api = InferenceApi(settings, manager)
    server = grpc.aio.server()
    add_to_server(server, api)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield inference_pb2_grpc.InferenceServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(None)
        api.close()
        manager.close()


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return bytes(buf)


async def test_detect_finds_people_in_a_jpeg_and_a_png(
    stub: inference_pb2_grpc.InferenceServiceStub, frames: dict[int, np.ndarray]
) -> None:
    resp = await stub.Detect(inference_pb2.DetectRequest(image=encode(frames[200], ".jpg")))
    assert (resp.image_width, resp.image_height) == (768, 576)
    people = [d for d in resp.detections if d.class_name == "person"]
    assert len(people) >= 4
    # The default model: the INT8 build of NanoDet.
    assert resp.stats.model_name == NANODET_INT8.name and resp.stats.inference_us > 0
    scores = [d.confidence for d in resp.detections]
    assert scores == sorted(scores, reverse=True)
    png = await stub.Detect(
        inference_pb2.DetectRequest(
            image=encode(frames[200], ".png"), model=SSDLITE.name, class_names=["person"], max_detections=2
        )
    )
    assert len(png.detections) == 2 and png.stats.model_name == SSDLITE.name


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\0" * 100, "not a decodable JPEG/PNG"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, "truncated PNG"),
        (b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"\xde\xad" * 50, "not a decodable"),
    ],
    ids=["empty", "gif", "truncated-png", "corrupt-jpeg"],
)
async def test_detect_rejects_bad_images(
    stub: inference_pb2_grpc.InferenceServiceStub, image: bytes, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(inference_pb2.DetectRequest(image=image))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")


async def test_detect_corrupt_jpeg_body(
    stub: inference_pb2_grpc.InferenceServiceStub, frames: dict[int, np.ndarray]
) -> None:
    """A real JPEG header (the size reads fine) with a garbled body: OpenCV cannot decode it."""
    data = bytearray(encode(frames[0], ".jpg"))
    data[600:] = b"\x00" * (len(data) - 600)
    data[len(data) // 2 :] = b""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(inference_pb2.DetectRequest(image=bytes(data[:700])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_detect_limits_and_unknown_model(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(inference_pb2.DetectRequest(image=b"\xff\xd8\xff" + b"\0" * 2_100_000))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and (
        "limit of 2000000 bytes (max_image_bytes)" in (err.value.details() or "")
    )
    # 2000x2000 black PNG: ~10 KB on the wire, 4 MP decoded: refused from its header before decoding.
    big = encode(np.zeros((2000, 2000, 3), np.uint8), ".png")
    assert len(big) < 100_000 and header_size(big) == (2000, 2000)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(inference_pb2.DetectRequest(image=big))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pixels" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(
            inference_pb2.DetectRequest(image=encode(np.zeros((8, 8, 3), np.uint8), ".png"), model="nope")
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(
            inference_pb2.DetectRequest(
                image=encode(np.zeros((8, 8, 3), np.uint8), ".png"), confidence_threshold=1.5
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_models(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    resp = await stub.ListModels(inference_pb2.ListModelsRequest())
    names = [m.name for m in resp.models]
    assert names[0] == NANODET_INT8.name and resp.models[0].is_default
    assert {NANODET.name, SSDLITE.name} <= set(names)
    nanodet = resp.models[0]
    assert nanodet.family == inference_pb2.MODEL_FAMILY_NANODET and len(nanodet.class_names) == 80


def test_jpeg_header_parsing(frames: dict[int, np.ndarray]) -> None:
    assert header_size(encode(frames[0], ".jpg")) == (768, 576)
    with pytest.raises(ImageError):
        header_size(b"\xff\xd8\xff\xe0\x00")


@pytest.mark.integration
def test_service_process_serves_health_and_detect(
    nats_url: str, models_dir: Path, tmp_path: Path, frames: dict[int, np.ndarray]
) -> None:
    env = dict(
        os.environ,
        NATS_URL=nats_url,
        VAP_MODELS_DIR=str(models_dir),
        VAP_INFERENCE_DATA_DIR=str(tmp_path),
        VAP_INFERENCE_BACKEND="onnxruntime",
        VAP_INFERENCE_LOG_FORMAT="json",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "vap_inference"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        port = 0
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        lines = []
        while not port and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "service started" in line:
                port = int(json.loads(line)["health_port"])
        assert port, "".join(lines)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            status = None
            while time.monotonic() < deadline:
                status = health.Check(health_pb2.HealthCheckRequest()).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.1)
            assert status == health_pb2.HealthCheckResponse.SERVING
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            request = inference_pb2.DetectRequest(image=encode(frames[200], ".jpg"))
            # The API wants the control API's token (here the one the service made in its data dir).
            with pytest.raises(grpc.RpcError) as refused:
                stub.Detect(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            token = (tmp_path / "control" / "api-token").read_text().strip()
            resp = stub.Detect(request, timeout=30, metadata=(("authorization", f"Bearer {token}"),))
            assert sum(d.class_name == "person" for d in resp.detections) >= 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
