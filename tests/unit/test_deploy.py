"""deploy/: the Dockerfile, docker-compose.yml, the Kubernetes manifests and the systemd unit set only real
settings, and agree with the worker on port, probes, grace period, migration and privileges.

No container engine is needed: the files are parsed (pyyaml for YAML) and checked, and the image's
HEALTHCHECK command is run against a local HTTP server.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
import yaml

from worker.config import all_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
UNIT = DEPLOY / "systemd" / "autopromote.service"

DEFAULTS = {info.env: info.default for info in all_settings()}
SETTING_NAMES = set(DEFAULTS)
PORT_VAR, GRACE_VAR = "AUTO_PROMOTION_HTTP_PORT", "AUTO_PROMOTION_SHUTDOWN_GRACE"
SECRET_VARS = {
    "DATABASE_URL",
    "SLACK_WEBHOOK_URL",
    "SLACK_SIGNING_SECRET",
    "SMTP_PASSWORD",
    "PAGERDUTY_ROUTING_KEY",
    "WEBHOOK_SECRET",
    "AUTO_PROMOTION_API_TOKENS",
}
WORKER_BUDGET_BYTES = 200 * 10**6  # the worker must stay under 200 MB at 10,000 experiments


def assert_real_settings(names: Any, where: str) -> None:
    unknown = sorted(set(names) - SETTING_NAMES)
    assert not unknown, f"{where} sets variables that are not settings (see worker/config/models.py): {unknown}"


def seconds(value: Any) -> float:
    """A duration as compose (``1m30s``) or systemd (``30``, ``30s``, ``1min``) writes it."""
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"h": 3600, "min": 60, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), f"unreadable duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def quantity_bytes(value: str) -> float:
    """A Kubernetes memory quantity (``256Mi``, ``200M``, ``1Gi``) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(value))
    assert match, f"unreadable quantity {value!r}"
    factors = {None: 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(match.group(1)) * factors[match.group(2)]


# ------------------------------------------------------------------------------------------------ Dockerfile
@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_stages() -> tuple[dict[str, str], list[list[Instruction]]]:
    """The global ARG defaults and the instructions of each stage (a stage starts at its FROM)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#") or (not raw.strip() and not pending):
            continue
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            stages.append([ins])
        elif stages:
            stages[-1].append(ins)
        elif ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            global_args[name] = default
    return global_args, stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages()[1][-1]


def image_env() -> dict[str, str]:
    """The ENV of the final stage (both ``ENV A=1 B=2`` and the legacy ``ENV A 1``)."""
    env: dict[str, str] = {}
    for ins in final_stage():
        if ins.keyword != "ENV":
            continue
        tokens = shlex.split(ins.args)
        if "=" in tokens[0]:
            for token in tokens:
                key, _, value = token.partition("=")
                env[key] = value
        else:
            env[tokens[0]] = " ".join(tokens[1:])
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not an exec-form array: {args}"
    return value


def image_port() -> int:
    return int(image_env().get(PORT_VAR, DEFAULTS[PORT_VAR]))


def image_uid() -> int:
    users = [ins.args for ins in final_stage() if ins.keyword == "USER"]
    assert users, "the final stage has no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {user} should be numeric so Kubernetes' runAsNonRoot can verify it"
    return int(user)


def test_dockerfile_builds_in_a_builder_stage_on_python_slim() -> None:
    global_args, stages = dockerfile_stages()
    assert len(stages) >= 2, "build wheels in a builder stage, install them in a clean final stage"

    def base(stage: list[Instruction]) -> str:
        ref = stage[0].args.split()[0]
        return re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], ref)

    assert base(stages[-1]) == "python:3.12-slim"
    assert base(stages[0]) == "python:3.12-slim"
    builder = " ".join(ins.args for ins in stages[0] if ins.keyword == "RUN")
    assert "build-essential" in builder and "pip wheel" in builder


def test_final_stage_has_no_compilers() -> None:
    text = " ".join(ins.args for ins in final_stage()).lower()
    for word in ("gcc", "g++", "build-essential", "clang", "apt-get install"):
        assert word not in text, f"the final stage mentions {word!r}"


def test_image_runs_as_a_non_root_user() -> None:
    assert image_uid() != 0


def test_image_env_is_real_settings_for_a_container() -> None:
    env = image_env()
    assert_real_settings(env, "deploy/Dockerfile ENV")
    assert env["AUTO_PROMOTION_HTTP_HOST"] == "0.0.0.0"
    schema_copies = [ins.args.split() for ins in final_stage() if ins.keyword == "COPY"]
    destinations = {parts[-1] for parts in schema_copies if parts[0] == "schema"}
    assert env["AUTO_PROMOTION_SCHEMA_DIR"] in destinations, "AUTO_PROMOTION_SCHEMA_DIR must be where schema/ is copied"
    exposed = [ins.args for ins in final_stage() if ins.keyword == "EXPOSE"]
    assert exposed == [str(image_port())]


def test_image_runs_the_worker_and_migrate_can_replace_the_command() -> None:
    stage = final_stage()
    cmds = [exec_form(ins.args) for ins in stage if ins.keyword == "CMD"]
    assert cmds and cmds[-1] == ["autopromote", "run"]
    # With an ENTRYPOINT, `docker run IMAGE autopromote migrate` would become its arguments.
    assert not [ins for ins in stage if ins.keyword == "ENTRYPOINT"]


def healthcheck_command() -> list[str]:
    checks = [ins.args for ins in final_stage() if ins.keyword == "HEALTHCHECK"]
    assert len(checks) == 1, "the final stage needs one HEALTHCHECK"
    options, sep, command = checks[0].partition("CMD ")
    assert sep, "HEALTHCHECK needs a CMD"
    assert "--start-period" in options
    return exec_form(command)


class _Health(http.server.BaseHTTPRequestHandler):
    # Class attributes: the server makes a new handler per request; the fixture gives each test a subclass.
    status: ClassVar[int]
    paths: ClassVar[list[str]]

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the test reads `paths` instead


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Health", (_Health,), {"status": 200, "paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_asks_healthz_and_fails_when_it_does(health_server: tuple[int, type[_Health]]) -> None:
    port, handler = health_server
    command = healthcheck_command()
    assert command[0] == "python", "slim has no curl: the check runs the image's python"
    run = [sys.executable, *command[1:]]
    env = {PORT_VAR: str(port)}
    ok = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert handler.paths == ["/healthz"]
    handler.status = 503
    failing = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30)
    assert failing.returncode != 0


def test_dockerignore_sends_only_what_the_dockerfile_copies() -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", "start from nothing and allow what the build needs, so .env never reaches it"
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    _, stages = dockerfile_stages()
    for stage in stages:
        for ins in stage:
            if ins.keyword == "COPY" and "--from" not in ins.args:
                for source in ins.args.split()[:-1]:
                    assert source in allowed, f"COPY {source} is excluded by {DOCKERIGNORE.name}"
    assert not {".env", ".venv", ".git"} & allowed


# -------------------------------------------------------------------------------------------- docker compose
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def our_services() -> dict[str, dict[str, Any]]:
    """The services that run the ab-autopromote image."""
    services = compose()["services"]
    return {
        name: svc
        for name, svc in services.items()
        if "build" in svc or str(svc.get("image", "")).startswith("ab-autopromote")
    }


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_sets_only_real_settings() -> None:
    services = our_services()
    assert set(services) >= {"migrate", "worker"}
    for name, service in services.items():
        assert_real_settings(compose_env(service), f"docker-compose.yml service {name!r}")


def test_compose_reads_an_optional_env_file_at_the_repository_root() -> None:
    for name, service in our_services().items():
        files = service.get("env_file")
        assert isinstance(files, list) and files, f"{name}: settings come from .env"
        for entry in files:
            assert isinstance(entry, dict) and entry.get("required") is False, f"{name}: a missing .env must work"
            assert (COMPOSE.parent / entry["path"]).resolve() == ROOT / ".env"


def test_compose_postgres_is_16_with_a_healthcheck() -> None:
    postgres = compose()["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_compose_database_url_points_at_the_postgres_service() -> None:
    postgres_env = compose_env(compose()["services"]["postgres"])
    for name, service in our_services().items():
        url = urlsplit(compose_env(service)["DATABASE_URL"])
        assert url.hostname == "postgres", name
        assert url.username == postgres_env["POSTGRES_USER"]
        assert url.password == postgres_env["POSTGRES_PASSWORD"]
        assert url.path.lstrip("/") == postgres_env["POSTGRES_DB"]


def test_compose_migrates_once_before_two_workers() -> None:
    services = our_services()
    migrate, worker = services["migrate"], services["worker"]
    assert migrate["command"] == ["autopromote", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"
    assert worker.get("command", ["autopromote", "run"]) == ["autopromote", "run"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_stop_grace_outlasts_the_worker_grace() -> None:
    worker = our_services()["worker"]
    grace = float(compose_env(worker).get(GRACE_VAR, DEFAULTS[GRACE_VAR]))
    assert seconds(worker["stop_grace_period"]) > grace


# ---------------------------------------------------------------------------------------------- Kubernetes
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc)
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [doc for doc in manifests() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_specs() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc["spec"]["template"]["spec"] for doc in manifests() if doc["kind"] in {"Deployment", "Job"}}


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def config_map() -> dict[str, str]:
    return one("ConfigMap")["data"]


def configured(var: str) -> float:
    return float(config_map().get(var, DEFAULTS[var]))


def worker_container() -> dict[str, Any]:
    pod = one("Deployment")["spec"]["template"]["spec"]
    (worker,) = [c for c in pod["containers"] if c.get("command") == ["autopromote", "run"]]
    return worker


def test_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_manifests() -> None:
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc)
    assert kinds == sorted(doc["kind"] for doc in manifests())


def test_k8s_sets_only_real_settings() -> None:
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in manifests()}
    for kind, pod in pod_specs().items():
        for container in containers(pod):
            where = f"{kind} container {container['name']!r}"
            assert_real_settings([e["name"] for e in container.get("env", [])], where)
            for source in container.get("envFrom", []):
                ref_kind = "ConfigMap" if "configMapRef" in source else "Secret"
                ref = source.get("configMapRef") or source["secretRef"]
                target = objects.get((ref_kind, ref["name"]))
                assert target is not None, f"{where} reads {ref_kind} {ref['name']!r}, which is not in deploy/k8s"
                keys = {**target.get("data", {}), **target.get("stringData", {})}
                assert_real_settings(keys, f"{ref_kind} {ref['name']!r}")


def test_config_map_and_secret_values_are_strings_and_secrets_stay_secret() -> None:
    secret = one("Secret")
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    assert secret_keys >= SECRET_VARS
    assert not SECRET_VARS & set(config_map()), "secrets belong in the Secret, not the ConfigMap"
    for name, values in (("ConfigMap", config_map()), ("Secret", secret.get("stringData", {}))):
        wrong = [key for key, value in values.items() if not isinstance(value, str)]
        assert not wrong, f"{name} values must be strings (quote them): {wrong}"


def test_deployment_runs_two_replicas_with_probes_on_the_http_port() -> None:
    deployment = one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    worker = worker_container()
    ports = {p.get("name"): p["containerPort"] for p in worker["ports"]}
    port = configured(PORT_VAR)
    assert port == image_port()
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = worker[probe]["httpGet"]
        assert get["path"] == path, probe
        probe_port = ports.get(get["port"], get["port"])
        assert probe_port == port, f"{probe} asks port {probe_port}, the worker listens on {port:.0f}"


def test_termination_grace_outlasts_the_worker_grace() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > configured(GRACE_VAR)


def test_prometheus_scrapes_metrics_on_the_http_port() -> None:
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert float(annotations["prometheus.io/port"]) == configured(PORT_VAR)


def test_worker_has_requests_and_a_memory_limit_above_its_budget() -> None:
    resources = worker_container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    limit = quantity_bytes(resources["limits"]["memory"])
    assert WORKER_BUDGET_BYTES < limit <= quantity_bytes("512Mi")
    assert quantity_bytes(resources["requests"]["memory"]) <= limit


def test_pods_run_as_the_image_user_on_a_read_only_root() -> None:
    for kind, pod in pod_specs().items():
        pod_context = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, kind
        for container in containers(pod):
            context = {**pod_context, **container.get("securityContext", {})}
            where = f"{kind} container {container['name']!r}"
            assert context.get("runAsNonRoot") is True, where
            assert context.get("runAsUser", image_uid()) == image_uid(), where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert "resources" in container and "limits" in container["resources"], where


def test_migrate_job_runs_migrate_once() -> None:
    job = one("Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    assert [c["command"] for c in pod["containers"]] == [["autopromote", "migrate"]]
    images = {c["image"] for p in pod_specs().values() for c in containers(p)}
    assert len(images) == 1, f"the Job and the Deployment should run one image, not {images}"


# -------------------------------------------------------------------------------------------------- systemd
def unit() -> dict[str, list[tuple[str, str]]]:
    """Sections of the unit file as lists of (key, value): systemd allows a key more than once."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"unreadable line in {UNIT.name}: {raw!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def service(key: str) -> list[str]:
    return [value for k, value in unit()["Service"] if k == key]


def unit_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for value in service("Environment"):
        for token in shlex.split(value):
            key, _, setting = token.partition("=")
            env[key] = setting
    return env


def test_systemd_unit_sets_only_real_settings() -> None:
    env = unit_env()
    assert_real_settings(env, "the systemd unit's Environment=")
    assert "AUTO_PROMOTION_SCHEMA_DIR" in env


def test_systemd_unit_migrates_then_runs_from_the_env_file() -> None:
    assert service("EnvironmentFile") == ["/etc/autopromote/env"]
    (pre,) = service("ExecStartPre")
    (start,) = service("ExecStart")
    assert shlex.split(pre)[1:] == ["migrate"] and shlex.split(start)[1:] == ["run"]
    assert shlex.split(pre)[0] == shlex.split(start)[0]
    assert shlex.split(start)[0].endswith("/autopromote")


def test_systemd_unit_stops_gracefully_and_restarts_on_failure() -> None:
    assert service("KillSignal") == ["SIGTERM"]
    grace = float(unit_env().get(GRACE_VAR, DEFAULTS[GRACE_VAR]))
    assert seconds(service("TimeoutStopSec")[-1]) > grace
    assert service("Restart") == ["on-failure"]


def test_systemd_unit_is_hardened() -> None:
    assert service("NoNewPrivileges") == ["yes"]
    assert service("ProtectSystem") == ["strict"]
    dynamic = service("DynamicUser") == ["yes"]
    users = service("User")
    assert dynamic or (users and users[-1] not in {"root", "0"}), "run as DynamicUser or a dedicated user"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit() -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    # The binaries live on the target VM, not here; anything else systemd says is a problem.
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "is not executable" not in line
    ]
    assert not complaints, "\n".join(complaints)
