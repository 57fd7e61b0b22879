"""`sdtriton serve` closes Triton's admin endpoints (model control, repository index, shared memory, trace, log
settings) to requests without the operator's key, over HTTP and gRPC; inference and health stay open."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from sdtriton import cli, server
from sdtriton.client import StableDiffusionClient
from sdtriton.ops.serve import admin_access
from tests.conftest import serve

pytestmark = pytest.mark.integration

KEY = "operator-key-0123456789"


@pytest.fixture(scope="module")
def restricted_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    yield from serve(tiny_repository, tmp_path_factory, admin_access=server.AdminAccess(key=KEY))


def _post(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_http_admin_endpoints_need_the_key(restricted_server) -> None:
    index_url = f"{restricted_server.address.http_url}/v2/repository/index"
    status, body = _post(index_url, {})
    assert status == 403, body
    assert server.ADMIN_KEY_HEADER in body  # Triton names the header it wants
    status, body = _post(index_url, {server.ADMIN_KEY_HEADER: "wrong-key-0123456789"})
    assert status == 403
    status, body = _post(index_url, {server.ADMIN_KEY_HEADER: KEY})
    assert status == 200
    assert {"stable_diffusion", "pipeline", "unet"} <= {model["name"] for model in json.loads(body)}
    # Unloading a model is model control: refused without the key, and the model stays.
    status, _ = _post(f"{restricted_server.address.http_url}/v2/repository/models/unet/unload", {})
    assert status == 403
    status, _ = _post(f"{restricted_server.address.http_url}/v2/logging", {})
    assert status == 403


def test_grpc_admin_calls_need_the_key(restricted_server) -> None:
    client = grpcclient.InferenceServerClient(restricted_server.address.grpc_url.removeprefix("grpc://"))
    with pytest.raises(InferenceServerException, match=r"(?i)restricted|permission|unavailable|denied"):
        client.get_model_repository_index()
    with pytest.raises(InferenceServerException):
        client.get_cuda_shared_memory_status()
    access = server.AdminAccess(key=KEY)
    with pytest.raises(InferenceServerException):
        client.get_model_repository_index(headers={server.ADMIN_KEY_HEADER: KEY})  # gRPC wants its own name
    index = client.get_model_repository_index(headers={access.grpc_header: KEY})
    assert "stable_diffusion" in {model.name for model in index.models}
    assert client.is_model_ready("unet")


def test_inference_and_health_stay_open(restricted_server) -> None:
    with urllib.request.urlopen(f"{restricted_server.address.http_url}/v2/health/ready", timeout=10) as response:
        assert response.status == 200
    for url in (restricted_server.address.http_url, restricted_server.address.grpc_url):
        with StableDiffusionClient(url) as client:
            assert client.generate("a red circle", num_inference_steps=2, seed=1).image.size[0] > 0


def test_serve_closes_admin_endpoints_unless_the_operator_opts_out(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli.build_parser()
    monkeypatch.delenv(server.ADMIN_KEY_ENVIRONMENT, raising=False)
    closed = admin_access(parser.parse_args(["serve", "repo"]))
    assert closed is not None and closed.categories == server.ADMIN_API_CATEGORIES
    assert any(
        arg.startswith("--grpc-restricted-protocol=model-repository,shared-memory")
        for arg in closed.tritonserver_args()
    )
    monkeypatch.setenv(server.ADMIN_KEY_ENVIRONMENT, KEY)
    assert admin_access(parser.parse_args(["serve", "repo"])).key == KEY
    assert admin_access(parser.parse_args(["serve", "repo", "--unrestricted-admin-api"])) is None
    monkeypatch.setenv(server.ADMIN_KEY_ENVIRONMENT, "short")
    with pytest.raises(SystemExit, match="16 to 256"):
        admin_access(parser.parse_args(["serve", "repo"]))


@pytest.mark.parametrize("with_key", [False, True])
def test_the_gateway_reads_the_index_with_the_key_and_serves_the_entry_without(
    restricted_server, with_key: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from sdtriton.gateway.app import create_app
    from sdtriton.gateway.settings import GatewaySettings

    if with_key:
        monkeypatch.setenv(server.ADMIN_KEY_ENVIRONMENT, KEY)
    else:
        monkeypatch.delenv(server.ADMIN_KEY_ENVIRONMENT, raising=False)
    settings = GatewaySettings(triton_url=restricted_server.address.grpc_url, data_dir=tmp_path)
    with TestClient(create_app(settings)) as http:
        assert http.get("/readyz").json() == {"ready": True, "triton": True, "models": {"stable_diffusion": True}}
        assert [model["id"] for model in http.get("/v1/models").json()["data"]] == ["stable_diffusion"]
    closed = [record for record in caplog.records if "repository index is closed" in record.getMessage()]
    assert bool(closed) != with_key
