"""Batch jobs without a server: reading the prompts file, planning a resumed run, atomic writes, one run."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from sdtriton import batch
from sdtriton.batch import BatchFileError, BatchJob, plan_batch, read_jobs, run_batch, write_atomically


def _prompts(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _problems(tmp_path: Path, *lines: str) -> list[tuple[int, str]]:
    with pytest.raises(BatchFileError) as caught:
        read_jobs(_prompts(tmp_path, *lines))
    return caught.value.problems


def test_lines_become_jobs_named_by_id_or_line_number(tmp_path):
    jobs = read_jobs(
        _prompts(
            tmp_path,
            '{"prompt": "a red circle", "seed": 3, "width": 64, "guidance_scale": 7, "scheduler": "ddim"}',
            "",
            '{"prompt": "a blue square", "id": "square-1"}',
            '{"prompt": "a star", "id": 17, "vae_tiling": true}',
        )
    )
    assert [(job.line, job.job_id) for job in jobs] == [(1, "1"), (3, "square-1"), (4, "17")]
    assert jobs[2].parameters["vae_tiling"] is True
    assert jobs[0].parameters == {
        "prompt": "a red circle",
        "seed": 3,
        "width": 64,
        "guidance_scale": 7,
        "scheduler": "ddim",
    }
    assert jobs[1].parameters == {"prompt": "a blue square"}  # the id is not a parameter


def test_every_bad_line_is_named_and_nothing_is_run(tmp_path):
    problems = _problems(
        tmp_path,
        '{"prompt": "fine"}',
        '{"prompt": "a", "steps": 20}',  # line 2: unknown key
        '{"prompt": "b",',  # line 3: bad JSON
        '["a list"]',  # line 4
        '{"negative_prompt": "no prompt"}',  # line 5
        '{"prompt": "c", "width": "64"}',  # line 6: a string for an integer
        '{"prompt": "d", "seed": true}',  # line 7: a bool is not a seed
        '{"prompt": "e", "id": "../escape"}',  # line 8
        '{"prompt": "f", "id": "x.error"}',  # line 9: would collide with x's error file
        '{"prompt": "g", "vae_tiling": 1}',  # line 10: a number is not a bool
    )
    assert [line for line, _ in problems] == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    messages = dict(problems)
    assert "unknown key 'steps'" in messages[2] and "num_inference_steps" in messages[2]
    assert messages[3].startswith("not JSON")
    assert "JSON object" in messages[4]
    assert messages[5] == "prompt: is required"
    assert messages[6].startswith("width: must be an integer")
    assert messages[7].startswith("seed: must be an integer")
    assert messages[8].startswith("id:") and messages[9].startswith("id:")
    assert messages[10].startswith("vae_tiling: must be true or false")


def test_the_error_message_names_the_line(tmp_path):
    with pytest.raises(BatchFileError, match=r"line 2: unknown key 'colour'"):
        read_jobs(_prompts(tmp_path, '{"prompt": "a"}', '{"prompt": "b", "colour": "red"}'))


def test_duplicate_ids_are_refused_with_both_lines(tmp_path):
    problems = _problems(
        tmp_path,
        '{"prompt": "a", "id": "same"}',
        '{"prompt": "b", "id": "same"}',
        '{"prompt": "c"}',  # id "3" by its line number ...
        '{"prompt": "d", "id": 3}',  # ... and again, explicitly
    )
    assert problems == [(2, "id 'same' is already used by line 1"), (4, "id '3' is already used by line 3")]


def _job(job_id: str, **parameters) -> BatchJob:
    return BatchJob(line=1, job_id=job_id, parameters={"prompt": "a red circle", **parameters})


def _finish(out_dir: Path, job: BatchJob, *, png: bool = True, record: dict | None = None) -> None:
    if png:
        job.png_path(out_dir).write_bytes(b"png")
    if record is not None:
        job.json_path(out_dir).write_text(json.dumps(record))


def test_resume_skips_done_lines_and_redoes_half_done_ones(tmp_path):
    done = _job("done", seed=1)
    drawn = _job("drawn")  # no seed in the line: the recorded one was drawn for it
    png_only = _job("png_only", seed=2)
    json_only = _job("json_only", seed=3)
    failed = _job("failed", seed=4)
    changed = _job("changed", seed=5)
    corrupt = _job("corrupt", seed=6)
    _finish(tmp_path, done, record={"parameters": dict(done.parameters)})
    _finish(tmp_path, drawn, record={"parameters": {**drawn.parameters, "seed": 123}})
    _finish(tmp_path, png_only)
    _finish(tmp_path, json_only, png=False, record={"parameters": dict(json_only.parameters)})
    failed.error_path(tmp_path).write_text("{}")
    _finish(tmp_path, changed, record={"parameters": {**changed.parameters, "seed": 99}})
    _finish(tmp_path, corrupt)
    corrupt.json_path(tmp_path).write_text('{"parame')
    plan = plan_batch([done, drawn, png_only, json_only, failed, changed, corrupt], tmp_path)
    assert [job.job_id for job in plan.skipped] == ["done", "drawn"]
    assert [job.job_id for job in plan.to_run] == ["png_only", "json_only", "failed", "changed", "corrupt"]


def test_an_atomic_write_replaces_whole_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a.json"
    write_atomically(target, b"first")
    write_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.json"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_write_killed_before_the_rename_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")

    def killed(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.png"]


def test_temporary_files_of_a_killed_run_are_removed_and_finished_ones_kept(tmp_path):
    (tmp_path / ".a.png.x1y2.tmp").write_bytes(b"half")
    (tmp_path / "a.png").write_bytes(b"whole")
    (tmp_path / "b.json").write_bytes(b"{}")
    assert batch.remove_temporary_files(tmp_path) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.png", "b.json"]


@dataclass(frozen=True)
class _Result:
    image: Image.Image
    seed: int


class _FakeClient:
    """Answers a plain image for every prompt, refuses width 7 as the server does; records its threads."""

    def __init__(self, threads: list[set[int]]) -> None:
        self.threads: set[int] = set()
        threads.append(self.threads)

    def generate(self, prompt: str, **parameters):
        self.threads.add(threading.get_ident())
        if parameters.get("width") == 7:
            raise ValueError("width: must be a positive multiple of 8, got 7")
        return _Result(image=Image.new("RGB", (8, 8), (parameters["seed"] % 256, 0, 0)), seed=parameters["seed"])

    def close(self) -> None:
        pass


def test_a_run_writes_png_then_json_records_failures_and_goes_on(tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    jobs = read_jobs(
        _prompts(
            tmp_path,
            '{"prompt": "a", "seed": 5, "id": "five"}',
            '{"prompt": "b", "width": 7}',
            '{"prompt": "c"}',
            '{"prompt": "d", "seed": 9}',
        )
    )
    written: list[str] = []
    real_write = batch.write_atomically

    def recording_write(path: Path, data: bytes) -> None:
        written.append(path.name)
        real_write(path, data)

    monkeypatch.setattr(batch, "write_atomically", recording_write)
    threads: list[set[int]] = []
    summary = run_batch(
        plan_batch(jobs, out_dir),
        out_dir,
        client_factory=lambda: _FakeClient(threads),
        concurrency=2,
        metadata={"model": "stable_diffusion"},
        show_progress=False,
    )
    assert (summary.done, summary.skipped, summary.failed) == (3, 0, 1)
    assert summary.describe().startswith("done 3, skipped 0, failed 1 (4 lines)")
    # One client per thread, each used by one thread only.
    assert len(threads) == 2 and all(len(used) <= 1 for used in threads)
    # Each line's PNG before its JSON.
    for job_id in ("five", "3", "4"):
        assert written.index(f"{job_id}.png") < written.index(f"{job_id}.json")
    record = json.loads((out_dir / "five.json").read_text())
    assert record["parameters"] == {"prompt": "a", "seed": 5}
    assert (record["seed"], record["model"], record["width"], record["line"]) == (5, "stable_diffusion", 8, 1)
    drawn = json.loads((out_dir / "3.json").read_text())
    assert drawn["parameters"]["seed"] == drawn["seed"]  # drawn by the batch, sent, and used
    assert Image.open(out_dir / "3.png").getpixel((0, 0))[0] == drawn["seed"] % 256
    error = json.loads((out_dir / "2.error.json").read_text())
    assert error["error"] == "ValueError" and "width: must be a positive multiple of 8" in error["message"]
    assert error["line"] == 2 and error["parameters"]["width"] == 7
    assert not (out_dir / "2.png").exists() and not (out_dir / "2.json").exists()

    # Resumed: the done lines are skipped; the failed one is tried again (and fails again, alone).
    before = {name: (out_dir / name).stat().st_mtime_ns for name in ("five.png", "five.json", "3.png")}
    written.clear()
    again = run_batch(
        plan_batch(jobs, out_dir),
        out_dir,
        client_factory=lambda: _FakeClient([]),
        concurrency=2,
        show_progress=False,
    )
    assert (again.done, again.skipped, again.failed) == (0, 3, 1)
    assert written == ["2.error.json"]
    assert before == {name: (out_dir / name).stat().st_mtime_ns for name in before}


def test_a_line_that_succeeds_later_loses_its_error_file(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    job = _job("x", seed=1)
    job.error_path(out_dir).write_text("{}")
    outcome = batch.run_job(_FakeClient([]), job, out_dir, metadata={})
    assert not outcome.failed
    assert sorted(path.name for path in out_dir.iterdir()) == ["x.json", "x.png"]
