"""What the gateway really exports at ``/metrics`` and which routes it really has, read from the app itself
(``sdtriton.gateway.app.create_app``, in process, no Triton), for the monitoring and deployment tests: the rules,
the dashboard, the chart's autoscaling and probes are checked against these, never against copied names."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sdtriton.gateway.app import create_app
from sdtriton.gateway.settings import GatewaySettings

# Each Prometheus metric type's series, as the text format names them after the family.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
# Never reached: the app's requests here end in the gateway, before any call to Triton.
_NO_TRITON = "grpc://127.0.0.1:1"


@dataclass(frozen=True)
class GatewayExposition:
    """The gateway's metrics and routes.

    Attributes:
        series: every series name its registry can export (``sdtriton_gateway_requests_total``, ...).
        labels: series name -> the label names seen on it, after a few real requests.
        routes: its routes' templates, as its OpenAPI document lists them (``/healthz``, ``/v1/images/{image_id}``).
    """

    series: frozenset[str]
    labels: dict[str, frozenset[str]]
    routes: frozenset[str]


@functools.cache
def gateway_exposition() -> GatewayExposition:
    """The app's registry and routes, and the series its ``/metrics`` serves after a health check and a refused
    generation (a 400 from the body check)."""
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(GatewaySettings(triton_url=_NO_TRITON, data_dir=Path(data_dir)))
        with TestClient(app) as http:
            assert http.get("/healthz").status_code == 200
            assert http.post("/v1/images/generations", json={"n": 1}).status_code == 400
            text = http.get("/metrics").text
        families = list(app.state.metrics.registry.collect())
    series = {family.name + suffix for family in families for suffix in _SUFFIXES[family.type]}
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    assert set(labels) <= series, f"/metrics serves series the registry does not name: {set(labels) - series}"
    routes = frozenset(app.openapi()["paths"])  # the templates, as the metrics' route label has them
    return GatewayExposition(
        series=frozenset(series),
        labels={name: frozenset(names) for name, names in labels.items()},
        routes=routes,
    )
