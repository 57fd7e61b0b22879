"""What both profiles' runs share: ``sdtriton perf``'s options, the time limit, the machine, the model and
repository under test, and the server.

:mod:`sdtriton.perf.runner` (the perf_analyzer profile) and :mod:`sdtriton.perf.engine_runner` (the engine
profile) each run a profile with these.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sdtriton import interface
from sdtriton.components import TOKENIZER_DIR_NAME, UNET
from sdtriton.perf.run import MachineInfo
from sdtriton.server import ServerAddress, TritonServer, named_triton_installation

logger = logging.getLogger(__name__)

# The repository's perf/ folder: scenarios.json and input_data/ (read by path; the package is installed editable).
DEFAULT_PERF_DIR = Path(__file__).resolve().parents[2] / "perf"
DEFAULT_OUTPUT_DIR = Path("outputs/perf")
BUILTIN_PROFILE = "shapes"
FALLBACK_PROFILE = "tiny"


@dataclass(frozen=True)
class PerfOptions:
    """Options of ``sdtriton perf``.

    Attributes:
        profile: a profile of ``perf/scenarios.json``: ``shapes`` (the default model), ``tiny`` (its stand-in
            until the trained weights land), ``sd15`` (the heavy one), ``engine`` (the diffusion engine's
            ceiling, batching, fairness, refusals and scaling on the default model; ``perf_analyzer`` unused).
        output_dir: where the CSV files, plot, summary and logs go.
        perf_dir: the folder holding ``scenarios.json`` and ``input_data/``.
        model_dir: a diffusers pipeline folder of the profile's model; made with ``make-tiny`` there if it
            has none (make-tiny profiles). Default: made in the work folder, or the built-in model's.
        repository: a model repository of that model; exported from ``model_dir`` if it has no models.
            Default: exported into the work folder.
        work_dir: where a made model and an exported repository go; default: a temporary folder deleted at
            the end (the heavy profile's are about 4 GB each).
        perf_analyzer: the binary; default: ``$PERF_ANALYZER``, ``tools/perf_analyzer``, or PATH.
        tritonserver: a tritonserver binary (e.g. the NGC container's); default: the pip wheel's.
        skip_diffusers: leave out baseline (a), e.g. when ``model_dir`` is unavailable on a serving host.
        gpu: run baselines (a) and (b) on the GPU, for a repository exported with ``--gpu`` (not run on
            this project's CPU machine).
        time_limit_s: overrides the profile's.
        show_progress: a progress bar over the load levels.
    """

    profile: str = FALLBACK_PROFILE
    output_dir: Path = DEFAULT_OUTPUT_DIR
    perf_dir: Path = DEFAULT_PERF_DIR
    model_dir: Path | None = None
    repository: Path | None = None
    work_dir: Path | None = None
    perf_analyzer: Path | None = None
    tritonserver: Path | None = None
    skip_diffusers: bool = False
    gpu: bool = False
    time_limit_s: float | None = None
    show_progress: bool = True


class Deadline:
    """A run's time limit, counted from its start."""

    def __init__(self, limit_s: float) -> None:
        self.started = time.monotonic()
        self.limit_s = limit_s

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def left_s(self) -> float:
        return self.limit_s - self.elapsed_s


def machine_info(
    *, started_utc: str, triton_version: str, load_before: tuple[float, float, float], gpu: bool
) -> MachineInfo:
    """This machine, the server's version and the load averages before and now."""
    cpu_model = platform.processor() or platform.machine()
    memory_gib = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = int(line.split()[1]) / 2**20
                break
    except OSError:
        pass
    return MachineInfo(
        started_utc=started_utc,
        hostname=platform.node(),
        cpu_model=cpu_model,
        cpu_count=os.cpu_count() or 1,
        memory_gib=memory_gib,
        triton_version=triton_version,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        gpu=gpu,
    )


@contextmanager
def work_folder(explicit: Path | None) -> Iterator[Path]:
    """``explicit`` (kept), or a temporary folder removed at the end."""
    if explicit is not None:
        explicit.mkdir(parents=True, exist_ok=True)
        yield explicit
        return
    directory = Path(tempfile.mkdtemp(prefix="sdtriton-perf-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        logger.info("removed the work folder %s", directory)


def default_profile() -> str:
    """``shapes``, the default model, once its trained weights are in the package; ``tiny`` until then."""
    from sdtriton.shapes.builtin import WEIGHTS_DIR

    return BUILTIN_PROFILE if (WEIGHTS_DIR / "model_index.json").is_file() else FALLBACK_PROFILE


def ensure_model(model_dir: Path | None, model: str, work_dir: Path) -> Path:
    """A diffusers folder of ``model``: ``model_dir`` if it holds one, else made (make-tiny) or the built-in one."""
    from sdtriton.tiny import PROFILES, make_tiny

    if model_dir is not None and (model_dir / "model_index.json").is_file():
        return model_dir
    if model not in PROFILES:
        if model_dir is not None:
            raise FileNotFoundError(f"{model_dir} holds no diffusers pipeline (model_index.json)")
        from sdtriton.shapes.builtin import resolve_source

        return Path(resolve_source(model))
    target = model_dir or work_dir / "model"
    started = time.monotonic()
    make_tiny(target, profile=model)
    logger.info("made the %s model in %.0f s", model, time.monotonic() - started)
    return target


# Load tests measure the engine's work: the same seeded request sent again and again would otherwise be answered
# from the response cache, and repeated prompts would skip the text encoder the baselines run.
PERF_RENDER_OPTIONS_CACHES_OFF = {"response_cache_mb": 0, "text_cache_entries": 0}


def _caches_off(repository: Path) -> bool:
    from sdtriton.perf.variants import engine_limits_of

    limits = engine_limits_of(repository)
    return limits.response_cache_bytes == 0 and limits.text_cache_entries == 0


def ensure_repository(repository: Path, model_dir: Path, *, show_progress: bool, work_dir: Path) -> Path:
    """The export to load-test: ``repository`` if it holds one with the engine's caches off; a variant of it in
    ``work_dir`` with them off if they are on; else ``model_dir`` exported into ``repository`` with them off."""
    exported = (
        (repository / interface.ENTRY_MODEL_NAME / "config.pbtxt").is_file()
        and (repository / interface.PIPELINE_MODEL_NAME / "1" / TOKENIZER_DIR_NAME).is_dir()
        and (repository / UNET.model_name / "1").is_dir()
    )
    if exported:
        if _caches_off(repository):
            return repository
        from sdtriton.perf.variants import engine_variant

        variant = work_dir / "caches_off_repository"
        shutil.rmtree(variant, ignore_errors=True)
        logger.info("load-testing %s with the engine's caches off (a variant in %s)", repository, variant)
        return engine_variant(repository, variant, caches_off=True)
    from sdtriton.export import RenderOptions, export_repository

    started = time.monotonic()
    options = RenderOptions(**PERF_RENDER_OPTIONS_CACHES_OFF)
    export_repository(model_dir, repository, options=options, show_progress=show_progress)
    logger.info("exported %s to %s in %.0f s", model_dir, repository, time.monotonic() - started)
    return repository


def model_under_test(options: PerfOptions, model: str, work_dir: Path) -> tuple[Path, Path]:
    """The profile's diffusers folder and the repository to load-test (:func:`ensure_model`,
    :func:`ensure_repository`): ``options``' own, or made and exported into ``work_dir``."""
    model_dir = ensure_model(options.model_dir, model, work_dir)
    repository = ensure_repository(
        options.repository or work_dir / "repository",
        model_dir,
        show_progress=options.show_progress,
        work_dir=work_dir,
    )
    return model_dir, repository


def server_version(http_url: str) -> str:
    """The running server's version (``GET /v2``)."""
    with urllib.request.urlopen(f"{http_url}/v2", timeout=10) as response:
        return str(json.load(response).get("version", "unknown"))


def start_server(repository: Path, options: PerfOptions, *, log_path: Path) -> TritonServer:
    """Starts ``options.tritonserver`` (or the pip wheel's) over ``repository`` on free loopback ports."""
    server = TritonServer(
        repository,
        address=ServerAddress.on_free_ports(),
        installation=named_triton_installation(options.tritonserver) if options.tritonserver else None,
        log_path=log_path,
    )
    server.start()
    return server
