"""``sdtriton batch`` as a person runs it: killed mid-run and started again, it finishes, skips what was done,
writes nothing twice, records a bad line without stopping, and each PNG is the image its JSON describes."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdtriton.client import StableDiffusionClient

pytestmark = pytest.mark.integration

# Slow enough (about a second a line on this CPU) that the run can be killed part way.
STEPS = 20
SIZE = 64
GOOD_IDS = ["1", "2", "star", "4", "6", "7", "8"]
BAD_ID = "bad"
KILL_AFTER_DONE = 3


def _lines() -> list[dict]:
    common = {"num_inference_steps": STEPS, "width": SIZE, "height": SIZE, "scheduler": "ddim"}
    lines = [
        {"prompt": "a red circle on a white background", "seed": 11, **common},
        {"prompt": "a blue square", **common},  # no seed: drawn by the batch
        {"id": "star", "prompt": "a yellow star", "seed": 13, "guidance_scale": 1.0, **common},
        {"prompt": "a green cross", "negative_prompt": "blurry", **common},
        {"id": BAD_ID, "prompt": "a white circle", "seed": 5, **{**common, "width": 7}},
        {"prompt": "an orange triangle", "seed": 16, **common},
        {"prompt": "a purple star", **common},
        {"prompt": "a black square", "seed": 18, **common},
    ]
    return lines


def _command(prompts: Path, out_dir: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "sdtriton.cli", "batch", str(prompts), "--out", str(out_dir), "--url", url]


def _done_ids(out_dir: Path) -> set[str]:
    """Ids with both files: done (a PNG without its JSON is not)."""
    return {
        path.name.removesuffix(".json")
        for path in out_dir.glob("*.json")
        if not path.name.endswith(".error.json") and (out_dir / path.name.replace(".json", ".png")).is_file()
    }


def _identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_ino, status.st_mtime_ns


def test_a_killed_batch_resumes_and_writes_nothing_twice(grpc_url: str, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in _lines()))
    out_dir = tmp_path / "out"
    command = [*_command(prompts, out_dir, grpc_url), "--concurrency", "2"]

    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = time.monotonic()
    while len(_done_ids(out_dir)) < KILL_AFTER_DONE:
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() - started < 60, "no outputs after 60 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    first.stderr.close()
    done_before = _done_ids(out_dir)
    assert KILL_AFTER_DONE <= len(done_before) < len(GOOD_IDS), done_before
    identities = {
        name: _identity(out_dir / name) for job_id in done_before for name in (f"{job_id}.png", f"{job_id}.json")
    }

    resumed = time.monotonic()
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    logging.getLogger(__name__).info(
        "killed after %.1f s with %d lines done; the second run took %.1f s: %s",
        resumed - started,
        len(done_before),
        time.monotonic() - resumed,
        second.stdout.strip(),
    )
    assert second.returncode == 1, second.stderr  # one line failed
    summary = second.stdout.strip().splitlines()[-1]
    expected = f"done {len(GOOD_IDS) - len(done_before)}, skipped {len(done_before)}, failed 1 (8 lines)"
    assert summary.startswith(expected), summary
    assert "100%" in second.stderr  # the progress bar ran to the end
    # Nothing done before was written again.
    assert identities == {name: _identity(out_dir / name) for name in identities}
    assert _done_ids(out_dir) == set(GOOD_IDS)
    assert not [path.name for path in out_dir.iterdir() if path.name.startswith(".")]  # no temporary files

    failure = json.loads((out_dir / f"{BAD_ID}.error.json").read_text())
    assert failure["error"] == "InvalidRequestError" and failure["line"] == 5
    assert re.match(r"width: .*got 7", failure["message"]), failure["message"]
    assert not (out_dir / f"{BAD_ID}.png").exists() and not (out_dir / f"{BAD_ID}.json").exists()

    # Each PNG is its JSON's image: the seed recorded is the one sent and the one the server used.
    with StableDiffusionClient(grpc_url) as client:
        for job_id in ("2", "7"):  # lines without a seed of their own
            record = json.loads((out_dir / f"{job_id}.json").read_text())
            parameters = dict(record["parameters"])
            assert parameters["seed"] == record["seed"]
            assert (record["width"], record["height"], record["model"]) == (SIZE, SIZE, "stable_diffusion")
            expected_image = client.generate(parameters.pop("prompt"), **parameters).image
            written = Image.open(out_dir / f"{job_id}.png")
            assert np.array_equal(np.asarray(written), np.asarray(expected_image))


def test_a_bad_prompts_file_is_refused_before_any_work(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle"}\n{"prompt": "a", "steps": 3}\n{"prompt": "b", "id": "1"}\n')
    out_dir = tmp_path / "out"
    done = subprocess.run(_command(prompts, out_dir, "http://127.0.0.1:9"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "line 2: unknown key 'steps'" in done.stderr
    assert "line 3: id '1' is already used by line 1" in done.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())
