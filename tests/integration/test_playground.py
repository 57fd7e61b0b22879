"""The gateway's playground page in a real browser (Debian's chromium driven by Playwright) against a real gateway
in front of the real tritonserver of the tiny model: the page's image equals the project's client's for the same
seed and settings (which test_parity.py proves equal to diffusers')."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from sdtriton.client import StableDiffusionClient
from sdtriton.gateway.playground import CONTENT_SECURITY_POLICY
from sdtriton.gateway.process import GatewayProcess
from sdtriton.interface import PIPELINE_MODEL_NAME, ModelDescription
from sdtriton.pipeline_config import PipelineConfig
from tests.integration.oracle import start_picture

pytestmark = pytest.mark.integration

KEY = "playground-key"
# A key whose bucket the page's first two calls (the models, the recent jobs) empty: its Generate is a 429.
LIMITED_KEY = "playground-key-limited"
PROMPT = "a red circle on a blue background"
NEGATIVE_PROMPT = "a green square"
# Enough steps for the progress bar to pass through values between 0 and done, and for a preview.
STEPS = 10
SEED = 11
GUIDANCE = 5.0
SCHEDULER = "euler"
EXPECT_TIMEOUT_MS = 30_000
KEY_STORAGE = "sdtriton.apiKey"
SCREENSHOT_DIR_ENVIRONMENT = "SDTRITON_SCREENSHOT_DIR"
# Every value the progress bar takes, recorded in the page (an attribute's old value, then the current one).
RECORD_PROGRESS = """() => {
  const bar = document.getElementById("progress");
  window.progressSeen = [];
  new MutationObserver((records) => {
    for (const record of records) window.progressSeen.push(record.oldValue);
    window.progressSeen.push(bar.getAttribute("value"));
  }).observe(bar, {attributes: true, attributeFilter: ["value"], attributeOldValue: true});
}"""
# The result as the browser decoded it: RGBA rows from a canvas.
RESULT_PIXELS = """() => {
  const image = document.getElementById("result");
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  return [canvas.width, canvas.height, Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data)];
}"""


@pytest.fixture(scope="module")
def gateway(grpc_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway that requires an API key."""
    folder = tmp_path_factory.mktemp("playground")
    keys = folder / "api_keys"
    keys.write_text(f"{KEY}\n{LIMITED_KEY} rate_limit_per_s=0.01 rate_limit_burst=2\n")
    options = ["--data-dir", str(folder / "data"), "--api-keys-file", str(keys), "--job-workers", "2"]
    with GatewayProcess(grpc_url, options, folder / "gateway.log").running() as process:
        yield process.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium (scripts/setup.sh installs it; Playwright's own browser downloads are not used)."""
    executable = shutil.which("chromium")
    assert executable is not None, "chromium is not installed: run scripts/setup.sh"
    # Playwright's assertions wait 5 s by default: too little for a generation on a shared CPU.
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        # --no-sandbox: chromium refuses to sandbox as root (CI runs as root).
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (its own local storage) whose page fails the test on an uncaught script error."""
    context = browser.new_context(viewport={"width": 1100, "height": 860})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    yield page
    context.close()
    assert not script_errors, f"the page's script failed: {script_errors}"


@pytest.fixture(scope="module")
def exported(tiny_repository: Path) -> ModelDescription:
    """What the export says of the tiny model (the page's choices come from it, through /v1/models)."""
    return PipelineConfig.load(tiny_repository / PIPELINE_MODEL_NAME / "1").description


@pytest.fixture(scope="module")
def client(grpc_url: str) -> Iterator[StableDiffusionClient]:
    with StableDiffusionClient(grpc_url) as client:
        yield client


def _screenshot(page: Page, tmp_path: Path, name: str) -> None:
    """The whole page as a PNG people can look at: in the test's folder, and in $SDTRITON_SCREENSHOT_DIR when set
    (``SDTRITON_SCREENSHOT_DIR=docs/images`` renews the README's screenshots)."""
    page.screenshot(path=tmp_path / name, full_page=True)
    assert (tmp_path / name).stat().st_size > 0
    if folder := os.environ.get(SCREENSHOT_DIR_ENVIRONMENT):
        shutil.copyfile(tmp_path / name, Path(folder) / name)


def _open_with_key(page: Page, gateway: str, key: str = KEY) -> None:
    page.context.add_init_script(f"localStorage.setItem({json.dumps(KEY_STORAGE)}, {json.dumps(key)})")
    page.goto(gateway)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#model option")).not_to_have_count(0)


def test_the_page_takes_a_key_then_offers_the_models_schedulers_and_sizes(
    page: Page, gateway: str, exported: ModelDescription
) -> None:
    answer = page.goto(gateway)
    assert answer is not None and answer.ok
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # No key yet: the gateway's 401 is shown.
    expect(page.locator("#error")).to_contain_text("401")
    expect(page.locator("#error")).to_contain_text("API key")
    # ... and the key field opened.
    expect(page.locator("#key-panel")).to_have_attribute("open", "")
    page.get_by_label("Bearer key").fill(KEY)
    page.get_by_role("button", name="Save key").click()
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#model option")).to_have_text(["stable_diffusion"])
    # The schedulers and sizes this model takes, as its export wrote them.
    schedulers = page.locator("#scheduler option")
    expect(schedulers).to_have_count(1 + len(exported.scheduler_names))
    assert schedulers.evaluate_all("options => options.map(option => option.value)") == [
        "",
        *exported.scheduler_names,
    ]
    default_size = f"{exported.default_width}x{exported.default_height}"
    expect(page.locator("#size option").first).to_contain_text(default_size)
    sizes = page.locator("#size option").evaluate_all("options => options.map(option => option.value)")[1:]
    for size in sizes:
        width, height = (int(side) for side in size.split("x"))
        assert width % exported.size_multiple == 0 and height % exported.size_multiple == 0
    expect(page.get_by_label("Steps")).to_have_attribute("placeholder", str(exported.default_num_inference_steps))
    # The key survives a reload (local storage).
    page.reload()
    expect(page.locator("#model option")).to_have_text(["stable_diffusion"])
    assert page.evaluate(f"localStorage.getItem({json.dumps(KEY_STORAGE)})") == KEY


def test_generate_shows_progress_and_previews_then_the_clients_image(
    page: Page, gateway: str, client: StableDiffusionClient, tmp_path: Path
) -> None:
    _open_with_key(page, gateway)
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_label("Negative prompt").fill(NEGATIVE_PROMPT)
    size = page.locator("#size option").nth(-1).get_attribute("value")
    assert size
    page.get_by_label("Size").select_option(size)
    page.get_by_label("Steps").fill(str(STEPS))
    page.get_by_label("Guidance scale").fill(str(GUIDANCE))
    page.get_by_label("Seed").fill(str(SEED))
    page.get_by_label("Scheduler").select_option(SCHEDULER)
    page.evaluate(RECORD_PROGRESS)
    page.get_by_role("button", name="Generate").click()

    expect(page.locator("#output")).to_have_attribute("data-job-status", "succeeded")
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("succeeded")
    # The bar moved through the steps, and at least one preview arrived as a PNG data URL.
    seen = {value for value in page.evaluate("window.progressSeen") if value is not None}
    assert any(0 < float(value) < STEPS for value in seen), seen
    expect(page.locator("#progress")).to_have_attribute("value", str(STEPS))
    assert int(page.locator("#preview").get_attribute("data-previews") or 0) >= 1
    assert (page.locator("#preview").get_attribute("src") or "").startswith("data:image/png;base64,")
    expect(page.locator("#result-caption")).to_have_text(f"seed {SEED}")

    width, height, rgba = page.evaluate(RESULT_PIXELS)
    shown = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3]
    expected = client.generate(
        PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        seed=SEED,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        scheduler=SCHEDULER,
        width=int(size.split("x")[0]),
        height=int(size.split("x")[1]),
    )
    assert np.array_equal(shown, np.asarray(expected.image))

    # The recent jobs list it first, with its thumbnail.
    job_id = page.locator("#result").get_attribute("data-job-id")
    recent = page.locator("#jobs li").first
    expect(recent).to_have_attribute("id", f"job-{job_id}")
    expect(recent).to_have_attribute("data-status", "succeeded")
    expect(recent.locator("img")).to_be_visible()
    _screenshot(page, tmp_path, "playground.png")


def test_a_start_image_gives_the_clients_image_to_image(
    page: Page, gateway: str, client: StableDiffusionClient, tmp_path: Path
) -> None:
    """A PNG chosen as the start image goes into the job (base64) with the strength: the client's image-to-image,
    at the image's size whatever the size field says."""
    start = start_picture(64, 48)
    start.save(tmp_path / "start.png")
    _open_with_key(page, gateway)
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_label("Steps").fill("4")
    page.get_by_label("Seed").fill(str(SEED))
    page.get_by_label("Scheduler").select_option("ddim")
    page.get_by_label("Start image (PNG)").set_input_files(tmp_path / "start.png")
    page.get_by_label("Strength").fill("0.5")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#output")).to_have_attribute("data-job-status", "succeeded")
    expect(page.locator("#result")).to_be_visible()
    width, height, rgba = page.evaluate(RESULT_PIXELS)
    shown = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3]
    expected = client.generate(PROMPT, image=start, strength=0.5, seed=SEED, num_inference_steps=4, scheduler="ddim")
    assert np.array_equal(shown, np.asarray(expected.image))
    _screenshot(page, tmp_path, "playground_start_image.png")


def test_cancel_shows_cancelled(page: Page, gateway: str, exported: ModelDescription) -> None:
    _open_with_key(page, gateway)
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    # The most steps the model takes: still running when Cancel is pressed.
    page.get_by_label("Steps").fill(str(exported.max_inference_steps))
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#output")).to_have_attribute("data-job-status", "running")
    job_id = page.locator("#output").get_attribute("data-job-id")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_contain_text("cancelled")
    expect(page.locator("#output")).to_have_attribute("data-job-status", "cancelled")
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    expect(page.locator("#result")).to_be_hidden()
    job = httpx.get(f"{gateway}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert job["status"] == "cancelled" and job["step"] < exported.max_inference_steps
    expect(page.locator(f"#job-{job_id}")).to_have_attribute("data-status", "cancelled")


def test_a_bad_value_shows_the_message_naming_the_field(page: Page, gateway: str, exported: ModelDescription) -> None:
    _open_with_key(page, gateway)
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    steps = page.get_by_label("Steps")
    generate = page.get_by_role("button", name="Generate")
    error = page.get_by_role("alert")
    # Refused at submit by the gateway's own check: the 400 and the field.
    steps.fill("0")
    generate.click()
    expect(error).to_contain_text("400")
    expect(error).to_contain_text("num_inference_steps")
    expect(generate).to_be_enabled()
    # Past the model's own limit: the job fails with the engine's refusal, which names the field and its range.
    steps.fill(str(exported.max_inference_steps + 1))
    generate.click()
    expect(page.locator("#output")).to_have_attribute("data-job-status", "failed")
    expect(error).to_contain_text(f"num_inference_steps: must be an integer in 1..{exported.max_inference_steps}")
    expect(generate).to_be_enabled()


def test_a_rate_limited_generate_shows_the_429_and_when_to_retry(page: Page, gateway: str) -> None:
    with page.expect_response(lambda response: "/v1/jobs?" in response.url) as listed:
        _open_with_key(page, gateway, LIMITED_KEY)
    assert listed.value.status == 200
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_role("button", name="Generate").click()
    error = page.get_by_role("alert")
    expect(error).to_contain_text("429: rate limit reached")
    expect(error).to_contain_text(re.compile(r"\(retry in \d+ s\)"))
    expect(page.locator("#status")).to_have_text("Not submitted.")
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
