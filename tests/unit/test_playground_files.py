"""The playground's files as the gateway serves them (in process, FastAPI's TestClient): the page with its security
headers, each file it loads, nothing from another host, and every element its script looks up present in the page.
The page itself runs in a real browser in tests/integration/test_playground.py."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from sdtriton.gateway import playground
from sdtriton.gateway.app import create_app
from sdtriton.gateway.settings import GatewaySettings
from sdtriton.server import free_port

PAGE_TEXT = (playground.STATIC_DIR / playground.PAGE).read_text()
SCRIPT_TEXT = (playground.STATIC_DIR / "playground.js").read_text()


def _client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(GatewaySettings(triton_url=f"grpc://127.0.0.1:{free_port()}", data_dir=tmp_path)))


def test_the_page_and_each_file_it_loads_are_served_with_their_types(tmp_path: Path) -> None:
    loaded = re.findall(r'(?:src|href)="([^"]+)"', PAGE_TEXT)
    assert sorted(loaded) == sorted(f"{playground.ASSET_PREFIX.lstrip('/')}/{name}" for name in playground.ASSETS)
    with _client(tmp_path) as http:
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"] == playground.CONTENT_SECURITY_POLICY
        assert page.text == PAGE_TEXT
        for name, media_type in playground.ASSETS.items():
            answer = http.get(f"{playground.ASSET_PREFIX}/{name}")
            assert (answer.status_code, answer.headers["content-type"]) == (200, media_type)
            assert answer.headers["x-content-type-options"] == "nosniff"
        missing = http.get(f"{playground.ASSET_PREFIX}/..%2Fapp.py")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        # The playground is not part of the API's document.
        assert "/" not in http.get("/openapi.json").json()["paths"]


def test_nothing_is_loaded_from_another_host() -> None:
    for path in playground.STATIC_DIR.iterdir():
        assert not re.search(r"\b(?:https?:)?//[a-z0-9]", path.read_text(), re.IGNORECASE), path.name


def test_every_element_the_script_looks_up_is_in_the_page() -> None:
    looked_up = set(re.findall(r'\$\("([a-z-]+)"\)', SCRIPT_TEXT))
    present = set(re.findall(r'\bid="([a-z-]+)"', PAGE_TEXT))
    assert looked_up and looked_up <= present, looked_up - present
    # Each form control has a label naming it.
    for control in re.findall(r'<(?:input|select|textarea)\b[^>]*\bid="([a-z-]+)"', PAGE_TEXT):
        assert f'for="{control}"' in PAGE_TEXT, control
