"""Fixtures of the scale-out tests: a three-server NATS cluster; the models the nodes' inference needs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vap_common.embedded_nats import EmbeddedNatsCluster


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsCluster]:
    cluster = EmbeddedNatsCluster(tmp_path_factory.mktemp("nats-cluster"), size=3)
    with cluster:
        cluster.start()
        yield cluster


@pytest.fixture(scope="module")
def models_available() -> None:
    registry = pytest.importorskip("vap_models.catalogue")
    from vap_inference.testing import missing_model_reason

    if reason := missing_model_reason(registry.SSDLITE):
        pytest.skip(reason)
