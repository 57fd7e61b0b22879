"""Schemathesis against a real ``sdtriton gateway`` process in front of the real tritonserver of the tiny model.

The committed ``docs/openapi.json`` is the source of truth: it equals what the running gateway serves, and every
answer to requests generated from it (valid and invalid bodies, paths, queries, headers; with the API key and
without) must be documented: no 5xx, a documented status, content type, headers and body. The cases are the same
on every run of the same tests (a fixed seed, derandomized; Hypothesis also draws constants from the project's
modules loaded by then, so a run of this file alone has other cases than the whole suite), and their count per
operation is reported at the end of the module.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sdtriton import interface
from sdtriton.gateway.process import GatewayProcess

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
KEY = "test-key-schema"
SEED = 21
# Per operation; the generations and jobs routes' valid bodies reach the engine, so this bounds the run's time.
EXAMPLES_PER_OPERATION = 25
# Generated bodies keep their step count when it is already this cheap (the schema allows up to the engine's most).
CHEAP_STEPS = 2
CHEAP_IMAGES = 2
PROMPT = "a yellow star on a purple background"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
WAIT_S = 60.0
MULTIPART = "multipart/form-data"

schema = schemathesis.openapi.from_path(
    OPENAPI,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "max-examples": EXAMPLES_PER_OPERATION,
                "deterministic": True,
                "database": "none",
                # The API key is sent by the test (and left out on purpose), not drawn at random.
                "with-security-parameters": False,
            },
        }
    ),
)
# Ids of things that exist on the gateway (a succeeded job, an image answered as a URL), so that the routes that
# take them answer 200 as well as 404; filled by the gateway fixture before any case is drawn.
KNOWN: dict[str, list[Any]] = {"job_id": [], "index": [0], "image_id": []}
# The served model's most images (n), read from the gateway.
LIMITS = {"max_images": 0}
CASES: collections.Counter[tuple[str, str]] = collections.Counter()
TIMES: collections.Counter[str] = collections.Counter()
STATUSES: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)


@schema.hook
def flatmap_path_parameters(context: schemathesis.HookContext, parameters: dict[str, Any]) -> st.SearchStrategy:
    """The generated path parameters, or the same with a known id in place of a generated one."""
    names = [name for name in KNOWN if name in (parameters or {})]
    if not names:
        return st.just(parameters)
    known = st.tuples(*(st.sampled_from(KNOWN[name]) for name in names))
    return st.one_of(st.just(parameters), known.map(lambda ids: {**parameters, **dict(zip(names, ids, strict=True))}))


def _cheap(body: Any) -> Any:
    """``body`` asking for cheap engine work: at most CHEAP_STEPS steps (the model's default is many more) and
    CHEAP_IMAGES images where it would draw more; values the gateway refuses are kept as they are. (Applied in the
    test: the coverage phase's cases bypass schemathesis' hooks.)"""
    if not isinstance(body, dict):
        return body
    steps, n = body.get("num_inference_steps"), body.get("n")
    if steps is None or (type(steps) is int and CHEAP_STEPS < steps <= interface.MAX_INFERENCE_STEPS):
        body = {**body, "num_inference_steps": CHEAP_STEPS}
    if type(n) is int and CHEAP_IMAGES < n <= LIMITS["max_images"]:
        body = {**body, "n": CHEAP_IMAGES}
    return body


@pytest.fixture(scope="module")
def gateway(grpc_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[str]:
    """A gateway with an API key (rate limit out of the way), a succeeded job and an image URL on it; its URL.
    The cases' count per operation is reported when the module ends."""
    folder = tmp_path_factory.mktemp("gateway_schema")
    (folder / "api_keys").write_text(f"{KEY}\n")
    (folder / "gateway.toml").write_text("[limits]\nrate_limit_per_s = 1000.0\nrate_limit_burst = 1000\n")
    options = ["--data-dir", str(folder / "data"), "--api-keys-file", str(folder / "api_keys")]
    options += ["--config", str(folder / "gateway.toml"), "--job-workers", "1"]
    started = time.monotonic()
    try:
        with GatewayProcess(grpc_url, options, folder / "gateway.log").running() as process:
            (model,) = httpx.get(f"{process.url}/v1/models", headers=_auth(), timeout=10).json()["data"]
            LIMITS["max_images"] = model["max_images"]
            _seed_known(process.url)
            yield process.url
    finally:
        _report(request.config, time.monotonic() - started)


def _seed_known(url: str) -> None:
    body = {"prompt": PROMPT, "num_inference_steps": CHEAP_STEPS, "seed": 1}
    answer = httpx.post(f"{url}/v1/images/generations", json=body | {"response_format": "url"}, headers=_auth())
    answer.raise_for_status()
    KNOWN["image_id"].append(answer.json()["data"][0]["url"].rsplit("/", 1)[1])
    job = httpx.post(f"{url}/v1/jobs", json=body, headers=_auth(), timeout=30).json()
    deadline = time.monotonic() + WAIT_S
    while job["status"] != "succeeded":
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.05)
        job = httpx.get(f"{url}/v1/jobs/{job['id']}", headers=_auth(), timeout=30).json()
    KNOWN["job_id"].append(job["id"])


def _unauthorized_status(case: schemathesis.Case) -> int:
    """What a request without the key is answered: 401; but 405 for a method the route lacks (the coverage phase
    tries them), and 400 for a body that is not JSON, or a multipart Content-Type without any parts where a form is
    due (FastAPI parses the body before the key is checked, and such a body has no boundary to parse by)."""
    if case.method.upper() != case.operation.method.upper():
        return 405
    takes_multipart = any(body.media_type == MULTIPART for body in case.operation.body)
    content_type = (case.headers or {}).get("Content-Type", "")
    if takes_multipart and not isinstance(case.body, dict) and content_type.startswith(MULTIPART):
        return 400
    if isinstance(case.body, bytes):  # sent as it is (other bodies are sent as JSON)
        try:
            json.loads(case.body)
        except ValueError:
            return 400
    return 401


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def _report(config: pytest.Config, elapsed_s: float) -> None:
    """Cases, their seconds and answers per operation, and the total, in the log and on the terminal."""
    lines = []
    for label in sorted(STATUSES):
        phases = [(phase, count) for (name, phase), count in sorted(CASES.items()) if name == label]
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(STATUSES[label].items()))
        lines.append(
            f"schemathesis: {sum(count for _, count in phases):4d} cases of {label} in {TIMES[label]:.1f} s "
            f"({', '.join(f'{phase} {count}' for phase, count in phases)}; answers {statuses})"
        )
    lines.append(f"schemathesis: {sum(CASES.values())} cases over {len(STATUSES)} operations in {elapsed_s:.1f} s")
    for line in lines:
        logger.info("%s", line)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:  # shown in every run's output (the log only on failures)
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)


def test_the_committed_document_is_what_the_gateway_serves(gateway: str) -> None:
    served = httpx.get(f"{gateway}/openapi.json", timeout=10).json()
    assert served == json.loads(OPENAPI.read_text()), (
        "docs/openapi.json differs from the served document: `sdtriton gateway --write-openapi docs/openapi.json`"
    )


@schema.parametrize()
def test_every_answer_is_documented(case: schemathesis.Case, gateway: str) -> None:
    label = case.operation.label
    CASES[label, case.meta.phase.name] += 1
    case.body = _cheap(case.body)
    started = time.monotonic()
    try:
        answer = case.call_and_validate(base_url=gateway, headers=_auth(), checks=CHECKS)
        STATUSES[label][answer.status_code] += 1
        if any(case.operation.security.iter_parameters()):  # the same request without the key: a documented 401
            refused = case.call_and_validate(base_url=gateway, checks=CHECKS)
            STATUSES[label][refused.status_code] += 1
            assert refused.status_code == _unauthorized_status(case), refused.text
    finally:
        TIMES[label] += time.monotonic() - started
