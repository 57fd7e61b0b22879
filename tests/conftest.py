"""Shared fixtures: the tiny model, its exported repository, and a real tritonserver on free loopback ports."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

# The test repositories decode in tiles only where a request sends vae_tiling (export --vae-tile-above 0): their
# images are compared with diffusers' default, untiled, at sizes above the tiny VAEs' 64 px tile.
UNTILED = 0


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdtriton.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_repository(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdtriton.export import export_repository

    repository = tmp_path_factory.mktemp("repository")
    export_repository(tiny_model_dir, repository, show_progress=False, vae_tile_above_px=UNTILED)
    return repository


@pytest.fixture(scope="session")
def shapes_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default model, exported by its built-in name."""
    from sdtriton.export import export_repository

    repository = tmp_path_factory.mktemp("shapes_repository")
    export_repository("shapes", repository, show_progress=False)
    return repository


# A model instance is a Python stub of its own that starts in turn: seen up to 10 s each under a load average of 18
# (two test workers beside other work on 2 cores), so family_server's 63 models missed the default 300 s.
READY_S_PER_MODEL = 10.0


def _models(repository: Path, extra_args: tuple[str, ...]) -> int:
    """The models a server over ``repository`` (and the ``--model-repository=`` ones in ``extra_args``) loads."""
    prefix = "--model-repository="
    folders = [repository, *(Path(arg.removeprefix(prefix)) for arg in extra_args if arg.startswith(prefix))]
    return sum(1 for folder in folders for _ in folder.glob("*/config.pbtxt"))


def ready_budget_s(repository: Path, extra_args: tuple[str, ...] = ()) -> float:
    """How long a server over ``repository`` (and the ``--model-repository=`` ones in ``extra_args``) may take to be
    ready: the default, or :data:`READY_S_PER_MODEL` for each model it loads, whichever is longer."""
    from sdtriton.server import DEFAULT_READY_TIMEOUT_S

    return max(DEFAULT_READY_TIMEOUT_S, READY_S_PER_MODEL * _models(repository, extra_args))


# As it stops, each model's stub runs its finalize and ends its interpreter: a pipeline's (torch, diffusers) about 2 s
# of CPU, so family_server's ten pipelines took 17 s of tritonserver's default 30 s exit timeout, and ran it out
# beside the other test worker. Past it, tritonserver exits and the stubs left are killed: their finalize never runs,
# nor does the crash check on it. A test server's exit timeout grows with its models as its ready budget does.
EXIT_S_PER_MODEL = 1.0
DEFAULT_EXIT_TIMEOUT_S = 30
# What tritonserver logs when its exit timeout ran out with models still loaded.
EXIT_TIMEOUT_EXPIRED = "Exit timeout expired"


def exit_timeout_s(repository: Path, extra_args: tuple[str, ...] = ()) -> int:
    """The ``--exit-timeout-secs`` of a test server: tritonserver's default, or :data:`EXIT_S_PER_MODEL` for each
    model it loads, whichever is longer."""
    return max(DEFAULT_EXIT_TIMEOUT_S, math.ceil(EXIT_S_PER_MODEL * _models(repository, extra_args)))


# What a stub's crash writes into the server log: every sdtriton stub turns Python's faulthandler on
# (triton_common.report_crashes), and tritonserver itself logs nothing when a stub dies.
CRASH_REPORT = "Fatal Python error"


def crash_reports(log_path: Path) -> list[str]:
    """The lines of a server's log that report a stub's crash (a fatal signal: SIGSEGV, SIGABRT, ...)."""
    return [line for line in log_path.read_text(errors="replace").splitlines() if CRASH_REPORT in line]


def serve(
    repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
    extra_args: tuple[str, ...] = (),
    *,
    admin_access: object | None = None,
) -> Iterator[object]:
    """A real tritonserver over ``repository`` on free loopback ports, stopped when the generator closes."""
    from sdtriton.server import ServerAddress, TritonServer

    address = ServerAddress.on_free_ports()
    log_path = tmp_path_factory.mktemp("server") / "tritonserver.log"
    given = [arg.split("=", 1)[1] for arg in extra_args if arg.startswith("--exit-timeout-secs=")]
    exit_s = int(given[-1]) if given else exit_timeout_s(repository, extra_args)
    if not given:
        extra_args = (*extra_args, f"--exit-timeout-secs={exit_s}")
    server = TritonServer(
        repository, address=address, log_path=log_path, extra_args=extra_args, admin_access=admin_access
    )
    server.start()
    try:
        ready_s = server.wait_ready(timeout_s=ready_budget_s(repository, extra_args))
        logger.info("tritonserver on %s ready after %.1f s at %s", repository.name, ready_s, address.http_url)
        yield server
    finally:
        started_stop = time.monotonic()
        exit_code = server.stop(timeout_s=exit_s + 30)
        logger.info("tritonserver stopped with exit code %s in %.1f s", exit_code, time.monotonic() - started_stop)
    # A stub that died while the server ran or as it stopped fails the tests that used it (tritonserver says nothing);
    # so does one killed because it had not ended within the exit timeout (its finalize never ran).
    reports = crash_reports(log_path)
    assert not reports, f"{len(reports)} stub crash(es) in {log_path}: {reports}"
    assert EXIT_TIMEOUT_EXPIRED not in log_path.read_text(errors="replace"), (
        f"models still loaded after the {exit_s} s exit timeout: their stubs were killed ({log_path})"
    )


def supervise(repository: Path, log_path: Path) -> Iterator[object]:
    """A real tritonserver over ``repository`` on free loopback ports, kept up by a ``ServerSupervisor`` (restarted
    half a second after it dies); stopped when the generator closes, and then nothing of its process group left."""
    from sdtriton.ops.supervisor import RestartBackoff, ServerSupervisor
    from sdtriton.server import ServerAddress, TritonServer, process_group_members

    server = TritonServer(repository, address=ServerAddress.on_free_ports(), log_path=log_path)
    supervisor = ServerSupervisor(server, backoff=RestartBackoff(initial_s=0.5))
    supervisor.start()
    try:
        yield supervisor
    finally:
        group = server.pid
        supervisor.stop()
    assert group is None or process_group_members(group) == []


@pytest.fixture(scope="session")
def triton_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real tritonserver over the random-weight tiny model (parity and validation tests)."""
    yield from serve(tiny_repository, tmp_path_factory)


@pytest.fixture(scope="session")
def shapes_server(shapes_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real tritonserver over the trained 'shapes' model (adherence tests)."""
    yield from serve(shapes_repository, tmp_path_factory)


# One image denoised at a time and at most this many requests held (the entry refuses the next at once).
ONE_IMAGE_MAX_PENDING = 3


@pytest.fixture(scope="session")
def one_image_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The tiny model denoising one image at a time and holding at most :data:`ONE_IMAGE_MAX_PENDING` requests: the
    queue bound's and the metrics' tests share it (``tests/worker_groups.py`` keeps them on one worker). A test that
    leaves a request running waits for its end, so that the next one starts on an idle engine."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from sdtriton.export.configs import RenderOptions, write_model_files
    from sdtriton.pipeline_config import PipelineConfig

    repository = tmp_path_factory.mktemp("one_image") / "repository"
    shutil.copytree(tiny_repository, repository, symlinks=True)
    config = PipelineConfig.load(repository / "pipeline" / "1")
    write_model_files(
        repository, config, RenderOptions(max_running_images=1, max_pending_requests=ONE_IMAGE_MAX_PENDING)
    )
    for server in serve(repository, tmp_path_factory):
        # Warm, with a burst like the queue bound's test: the first requests after start pay one-off costs (measured
        # on a quiet machine: refusals of a first burst 102-114 ms, of the next ones 5-57 ms).
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(_warm_up, [server.address.grpc_url] * 6))
        yield server


def _warm_up(url: str) -> None:
    from sdtriton.client import ServerBusyError, StableDiffusionClient

    with StableDiffusionClient(url) as client:
        try:
            client.generate("a yellow star on a purple background", seed=0, num_inference_steps=2)
        except ServerBusyError:
            pass


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real redis-server on a free loopback port with its own temporary folder (tests/redis_server.py)."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    ready_s = server.start()
    logger.info("redis-server ready after %.2f s at %s", ready_s, server.url)
    try:
        yield server
    finally:
        logger.info("redis-server stopped with exit code %s", server.stop())


@pytest.fixture(scope="session")
def http_url(triton_server) -> str:
    return triton_server.address.http_url


@pytest.fixture(scope="session")
def grpc_url(triton_server) -> str:
    return triton_server.address.grpc_url


@pytest.fixture(scope="session")
def diffusers_pipeline(tiny_model_dir: Path):
    """The oracle: diffusers' own StableDiffusionPipeline on the same weights."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def diffusers_img2img_pipeline(diffusers_pipeline):
    """The image-to-image oracle: diffusers' StableDiffusionImg2ImgPipeline on the same modules."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipeline = StableDiffusionImg2ImgPipeline.from_pipe(diffusers_pipeline)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def shapes_diffusers_pipeline():
    """The oracle for the trained default model: diffusers on the built-in 'shapes' weights, in fp32 as exported."""
    import torch
    from diffusers import StableDiffusionPipeline

    from sdtriton.shapes.builtin import materialize

    pipeline = StableDiffusionPipeline.from_pretrained(materialize(), torch_dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# The tiny SD 3.5's blocks its skip-layer guidance skips (export --skip-guidance-layers): its first, a dual-attention
# block (SD 3.5 Medium's recommended 7, 8, 9 are among its 13 dual-attention blocks).
SD35_SKIP_GUIDANCE_LAYERS = (0,)


# The SD 3 without T5 of other geometry than make-tiny's: a transformer of 1x1 patches (make-tiny's: 2x2) over a VAE
# of 4 latent channels (16), its position table widened to the same largest side (48 latents, 96 px).
SD3_OTHER_GEOMETRY = {"patch_size": 1, "latent_channels": 4, "pos_embed_max_size": 48}
# The FLUX.1-schnell's T5 width (make-tiny's: 88, the tiny SD 3's); exported at schnell's usual 256 rows (512).
SCHNELL_T5_WIDTH = 56


# LoRA adapters the SD 3.5 and FLUX.1-dev exports carry (their rows without one are the base network exactly): name ->
# (seed, rank, alpha, CLIP text encoders it adapts besides the transformer's joint attention). ``glow`` touches the
# text encoders diffusers' load_lora_weights loads LoRAs into (SD 3: both CLIPs; FLUX: its CLIP; never T5). Large
# alphas: at alpha / rank 0.5 the tiny FLUX's image moved 1/255 (measured); at these, 13-46/255 at its default 256 px
# and 18-60/255 at test_lora's 64 px, SD 3.5's 115-182.
TRANSFORMER_LORAS: dict[str, tuple[int, int, float, dict[str, tuple[str, ...]]]] = {
    "glow": (6, 4, 16.0, {"sd3": ("text_encoder", "text_encoder_2"), "flux": ("text_encoder",)}),
    "grain": (7, 8, 64.0, {"sd3": (), "flux": ()}),
}


def transformer_lora_files(folder: Path) -> dict[str, Path]:
    """The :data:`TRANSFORMER_LORAS` files of the tiny SD 3 / FLUX pipeline in ``folder`` (made beside it by
    :func:`_make_transformer_loras`), by adapter name."""
    from sdtriton.tiny import LORA_WEIGHT_NAME

    return {name: folder.parent / f"{folder.name}_loras" / name / LORA_WEIGHT_NAME for name in TRANSFORMER_LORAS}


def _make_transformer_loras(folder: Path, family: str) -> list[object]:
    """Makes :func:`transformer_lora_files` (saved by diffusers' save_lora_weights); returns them as ``--lora``s."""
    from sdtriton.export import LoraSource
    from sdtriton.tiny import make_tiny_lora

    sources = []
    for name, path in transformer_lora_files(folder).items():
        seed, rank, alpha, encoders = TRANSFORMER_LORAS[name]
        made = make_tiny_lora(folder, path.parent, seed=seed, rank=rank, alpha=alpha, text_encoders=encoders[family])
        sources.append(LoraSource(name, made))
    return sources


def _resave(folder: Path, model_class: type, seed: int, **changes: object) -> None:
    """Replaces a component of a diffusers folder by a seeded random one of its config with ``changes``."""
    import torch

    config = model_class.load_config(folder)
    torch.manual_seed(seed)
    model_class.from_config({**config, **changes}).save_pretrained(folder)


def _sd3_of_other_geometry(folder: Path) -> None:
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    channels = SD3_OTHER_GEOMETRY["latent_channels"]
    _resave(folder / "vae", AutoencoderKL, 10, latent_channels=channels)
    transformer = {key: SD3_OTHER_GEOMETRY[key] for key in ("patch_size", "pos_embed_max_size")}
    _resave(
        folder / "transformer", SD3Transformer2DModel, 11, in_channels=channels, out_channels=channels, **transformer
    )


def _flux_of_other_t5_width(folder: Path) -> None:
    import torch
    from diffusers import FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    t5_config = T5Config.from_pretrained(folder / "text_encoder_2")
    t5_config.d_model = SCHNELL_T5_WIDTH
    torch.manual_seed(12)
    T5EncoderModel(t5_config).eval().save_pretrained(folder / "text_encoder_2")
    _resave(folder / "transformer", FluxTransformer2DModel, 13, joint_attention_dim=SCHNELL_T5_WIDTH)


def _export_prefixed(folder: Path, repository: Path, prefix: str, **options: object) -> None:
    """Exports a tiny model with its models named ``prefix`` + role (one server holds it beside the others), untiled
    as the other parity repositories."""
    from sdtriton.export import RenderOptions, export_repository

    export_repository(
        folder,
        repository,
        options=RenderOptions(model_prefix=prefix),
        show_progress=False,
        vae_tile_above_px=UNTILED,
        **options,
    )


@pytest.fixture(scope="session")
def sd3_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    """Tiny SD 3.5 (dual attention, RMS q/k norm, T5, the published static shift; exported with skip-guidance layers,
    so every SD 3.5 request goes through the transformer's per-row skip flag) and SD 3 without T5 of other geometry
    (:data:`SD3_OTHER_GEOMETRY`: 1x1 patches, 4 latent channels; the plain transformer; its scheduler config with
    ``use_dynamic_shifting``, so ``mu`` comes from the image's patch count): (diffusers folder, exported repository,
    model-name prefix) of each, under the prefixes ``sd35_`` and ``no_t5_`` so that one server holds both beside the
    tiny SD repository. The SD 3.5 one carries the LoRA adapters :data:`TRANSFORMER_LORAS`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from sdtriton.tiny import make_tiny

    root = tmp_path_factory.mktemp("sd3")
    exports = {}
    for name, family, t5, prefix, layers in (
        ("sd35", "sd35", True, "sd35_", SD35_SKIP_GUIDANCE_LAYERS),
        ("sd3_no_t5", "sd3", False, "no_t5_", ()),
    ):
        folder = make_tiny(root / name, family=family, t5=t5)
        if name == "sd3_no_t5":
            _sd3_of_other_geometry(folder)
            scheduler = folder / "scheduler"
            config = FlowMatchEulerDiscreteScheduler.load_config(scheduler)
            FlowMatchEulerDiscreteScheduler.from_config(config, use_dynamic_shifting=True).save_pretrained(scheduler)
        repository = root / f"{name}_repository"
        _export_prefixed(
            folder,
            repository,
            prefix,
            skip_guidance_layers=layers,
            loras=_make_transformer_loras(folder, "sd3") if name == "sd35" else (),
        )
        exports[name] = (folder, repository, prefix)
    return exports


@pytest.fixture(scope="session")
def flux_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    """Tiny FLUX.1-dev (guidance embedding, dynamic shifting, T5 at FluxPipeline's 512 rows) and FLUX.1-schnell (no
    guidance, no shifting; a T5 of another width, :data:`SCHNELL_T5_WIDTH`, at schnell's usual 256 rows, export
    --max-sequence-length): (diffusers folder, exported repository, model-name prefix) of each, under the prefixes
    ``flux_`` and ``schnell_`` so one server holds both beside the other families' repositories (``family_server``).
    The dev one carries the LoRA adapters :data:`TRANSFORMER_LORAS`."""
    from sdtriton.tiny import make_tiny

    root = tmp_path_factory.mktemp("flux")
    exports = {}
    for family, prefix, max_sequence_length in (("flux-dev", "flux_", None), ("flux-schnell", "schnell_", 256)):
        folder = make_tiny(root / family, family=family)
        if family == "flux-schnell":
            _flux_of_other_t5_width(folder)
        repository = root / f"{family}_repository"
        _export_prefixed(
            folder,
            repository,
            prefix,
            max_sequence_length=max_sequence_length,
            loras=_make_transformer_loras(folder, "flux") if family == "flux-dev" else (),
        )
        exports[family] = (folder, repository, prefix)
    return exports


SDXL_PREFIX = "sdxl_"
# The tiny SD and SDXL with a dedicated inpainting UNet (9 input channels), in family_server beside the plain ones.
INPAINT_PREFIX = "inpaint_"
SDXL_INPAINT_PREFIX = "xlinpaint_"
# The tiny SD once more, taking sides up to this many times its native 64 px (tiled VAE decoding's memory test), one
# image at a time: a VAE call holds at most two tiles (twice the larger of max_batch_size and max_running_images).
LARGE_PREFIX = "large_"
LARGE_SIZE_FACTOR = 8
LARGE_IMAGES_AT_ONCE = 1


@pytest.fixture(scope="session")
def sdxl_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny SDXL base and its refiner (``make-tiny --family sdxl`` / ``sdxl-refiner``)."""
    from sdtriton.tiny import make_tiny

    models = tmp_path_factory.mktemp("sdxl_models")
    return make_tiny(models / "base", family="sdxl"), make_tiny(models / "refiner", family="sdxl-refiner")


LORA_PREFIX = "lora_"


@pytest.fixture(scope="session")
def lora_files(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random LoRA adapters of the tiny SD model, saved by diffusers' save_lora_weights: ``style`` (rank 4, alpha
    8: the UNet's and the text encoder's attention) and ``detail`` (rank 8, alpha 4: the UNet's attention and its
    ResNet convolutions, Conv2d LoRA layers)."""
    from sdtriton.tiny import make_tiny_lora

    root = tmp_path_factory.mktemp("loras")
    return {
        "style": make_tiny_lora(
            tiny_model_dir, root / "style", seed=1, rank=4, alpha=8.0, text_encoders=("text_encoder",)
        ),
        "detail": make_tiny_lora(tiny_model_dir, root / "detail", seed=2, rank=8, alpha=4.0, conv=True),
    }


@pytest.fixture(scope="session")
def lora_repository(
    tiny_model_dir: Path, lora_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny SD model exported with both adapters of ``lora_files`` (models ``lora_*``; no preview fit)."""
    from sdtriton.export import LoraSource, RenderOptions, export_repository

    repository = tmp_path_factory.mktemp("lora_repository")
    export_repository(
        tiny_model_dir,
        repository,
        options=RenderOptions(model_prefix=LORA_PREFIX),
        loras=[LoraSource(name, path) for name, path in lora_files.items()],
        fit_preview=False,
        show_progress=False,
        vae_tile_above_px=UNTILED,
    )
    return repository


@pytest.fixture(scope="session")
def sdxl_lora_file(sdxl_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LoRA adapter of the tiny SDXL base (rank 4, alpha 2: the UNet's and the second text encoder's
    attention), exported into family_server's SDXL repository as ``xl``."""
    from sdtriton.tiny import make_tiny_lora

    root = tmp_path_factory.mktemp("sdxl_lora")
    return make_tiny_lora(sdxl_dirs[0], root, seed=3, rank=4, alpha=2.0, text_encoders=("text_encoder_2",))


@pytest.fixture(scope="session")
def inpainting_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    """Tiny SD and SDXL inpainting models (``make-tiny --family sd-inpaint`` / ``sdxl-inpaint``: the plain ones'
    shapes with a 9-channel UNet, saved as their inpainting pipelines): (diffusers folder, exported repository,
    model-name prefix) of each, under :data:`INPAINT_PREFIX` and :data:`SDXL_INPAINT_PREFIX` (no preview fit)."""
    from sdtriton.tiny import make_tiny

    root = tmp_path_factory.mktemp("inpainting")
    exports = {}
    for family, prefix in (("sd-inpaint", INPAINT_PREFIX), ("sdxl-inpaint", SDXL_INPAINT_PREFIX)):
        folder = make_tiny(root / family, family=family)
        repository = root / f"{family}_repository"
        _export_prefixed(folder, repository, prefix, fit_preview=False)
        exports[family] = (folder, repository, prefix)
    return exports


@pytest.fixture(scope="session")
def large_repository(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD exported for sides up to :data:`LARGE_SIZE_FACTOR` times its own, models ``large_*``, no previews."""
    from sdtriton.export import RenderOptions, export_repository

    repository = tmp_path_factory.mktemp("large_repository")
    export_repository(
        tiny_model_dir,
        repository,
        options=RenderOptions(
            model_prefix=LARGE_PREFIX, max_batch_size=LARGE_IMAGES_AT_ONCE, max_running_images=LARGE_IMAGES_AT_ONCE
        ),
        max_size_factor=LARGE_SIZE_FACTOR,
        show_progress=False,
        fit_preview=False,
        vae_tile_above_px=UNTILED,
    )
    return repository


@pytest.fixture(scope="session")
def family_server(
    tiny_repository: Path,
    large_repository: Path,
    sdxl_dirs: tuple[Path, Path],
    sd3_exports,
    flux_exports,
    lora_repository: Path,
    sdxl_lora_file: Path,
    inpainting_exports,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[object]:
    """One real tritonserver holding a repository of every family side by side: the tiny SD one, SDXL with its
    refiner (models ``sdxl_*``), SD 3.5 (``sd35_*``), SD 3 without T5 (``no_t5_*``), FLUX.1-dev (``flux_*``) and
    FLUX.1-schnell (``schnell_*``), the tiny SD again with sides up to 8 times its own (``large_*``) and the tiny SD
    one with two LoRA adapters (``lora_*``), and the SD and SDXL inpainting models (``inpaint_*``, ``xlinpaint_*``).
    The SDXL one carries the LoRA adapter ``xl`` (its rows without it are the
    base model's, exactly)."""
    from sdtriton.export import LoraSource, RenderOptions, export_repository

    base, refiner = sdxl_dirs
    sdxl_repository = tmp_path_factory.mktemp("sdxl_repository")
    export_repository(
        base,
        sdxl_repository,
        refiner=refiner,
        options=RenderOptions(model_prefix=SDXL_PREFIX),
        loras=[LoraSource("xl", sdxl_lora_file)],
        show_progress=False,
        vae_tile_above_px=UNTILED,
    )
    exported = (*sd3_exports.values(), *flux_exports.values(), *inpainting_exports.values())
    repositories = (sdxl_repository, large_repository, *(repository for _, repository, _ in exported), lora_repository)
    extra_args = tuple(f"--model-repository={repository}" for repository in repositories)
    # About 70 models, loaded one after the other (each pipeline warms its engine's code for 15-30 s under load):
    # measured 300 s not enough under a load average of 17.
    yield from serve(tiny_repository, tmp_path_factory, extra_args=extra_args)


# Parallel runs (scripts/test.sh: pytest-xdist's ``-n 2``): tests/worker_groups.py keeps each module on one worker and
# the modules sharing an expensive session server on the same one, and runs those groups first.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    from tests.worker_groups import run_order

    items.sort(key=lambda item: run_order(item.path))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from tests.worker_groups import GroupScheduling

    return GroupScheduling(config, log)
