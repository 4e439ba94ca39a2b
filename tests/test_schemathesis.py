"""Schemathesis against the local server, driven by OpenMeter's own OpenAPI spec (the
events and meters operations): no 5xx, every response as the spec says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, settings

from conftest import OPENAPI

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from litellm_openmeter.server import BackgroundServer, open_store  # noqa: E402

if not OPENAPI.exists():
    pytest.skip(
        "../shared/reference/openmeter/openapi.yaml is not present", allow_module_level=True
    )

PATHS = (
    "/api/v1/events",
    "/api/v1/meters",
    "/api/v1/meters/{meterIdOrSlug}",
    "/api/v1/meters/{meterIdOrSlug}/query",
    "/api/v1/meters/{meterIdOrSlug}/subjects",
    "/api/v1/meters/{meterIdOrSlug}/group-by/{groupByKey}/values",
    "/api/v1/subjects",
    "/api/v1/subjects/{subjectIdOrKey}",
)


def _spec() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec: dict[str, Any] = yaml.load(OPENAPI.read_text(), Loader=loader)
    spec["paths"] = {path: spec["paths"][path] for path in PATHS}
    return spec


schema = schemathesis.openapi.from_dict(_spec())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db: Path = tmp_path_factory.mktemp("schemathesis") / "server.sqlite3"
    with BackgroundServer(open_store(db)) as server:
        yield server.url


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_spec_conformance(case: Any, server_url: str) -> None:
    case.call_and_validate(base_url=server_url, checks=CHECKS)
