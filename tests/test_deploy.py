"""Deployment artifacts, validated without Docker or a cluster (none exists here).

- docker-compose.yml (and the GPU override) against the Compose Specification's
  JSON schema, as vendored by check-jsonschema, plus the rules of issue 5:
  services, health checks, dependency conditions, a scalable worker-cpu.
- The Dockerfile: non-root, offline, torch from the chosen index first.
- deploy/k8s: built-in kinds against the Kubernetes OpenAPI schemas of
  kubernetes-validate (strict: unknown fields refused); KEDA ScaledObjects
  against KEDA's CRD schema (tests/schemas, source in its header); the graceful
  stop of the worker pools; the scaling rule against config.Settings.
- deploy/prometheus.yml and the in-cluster scrape config: every process scraped.
- deploy/grafana/convoq.json: only metric names of the metrics contract.

Each check is a function that returns the problems it finds, and each has a
test that feeds it a broken copy, so none of them passes vacuously.
"""

import copy
import importlib.resources
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel

from config import Settings
from devstack.supervise import read_procfile, supervisord_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "k8s"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "convoq.json"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
KEDA_SCHEMA = Path(__file__).resolve().parent / "schemas" / "keda.sh_scaledobjects.v1alpha1.yaml"

APP = "worker.celery_app:celery_app"
WORKER_COMMANDS = {
    "worker-gpu": shlex.split(
        f"celery --app {APP} worker --queues gpu --pool threads --concurrency 16"
        " --hostname gpu@%h --task-events"
    ),
    "worker-cpu": shlex.split(
        f"celery --app {APP} worker --queues cpu --pool prefork --autoscale 8,1"
        " --hostname cpu@%h --task-events"
    ),
}
API_COMMAND = shlex.split("gunicorn --config config/gunicorn.py 'api:create_app()'")
# Flower's metrics are single-process: it runs without the image's PROMETHEUS_MULTIPROC_DIR.
FLOWER_COMMAND = shlex.split(
    f"env -u PROMETHEUS_MULTIPROC_DIR celery --app {APP} flower --port 5555"
)
BEAT_COMMAND = shlex.split(f"celery --app {APP} beat --schedule /tmp/celerybeat-schedule")
# The long-running convoq processes: the Procfile's, the compose file's and the manifests'.
PROCESSES = {"api", "worker-gpu", "worker-cpu", "flower", "beat"}
COMPOSE_SERVICES = {
    "redis",
    "postgres",
    "etcd",
    "minio",
    "milvus",
    "migrate",
    "api",
    "worker-gpu",
    "worker-cpu",
    "flower",
    "beat",
    "prometheus",
    "grafana",
}
K8S_VERSIONS = ["1.30", kubernetes_validate.latest_version()]

# The metrics contract of issue 5 (the API's and the workers' /metrics).
COUNTERS = {
    "convoq_http_requests_total",
    "convoq_jobs_submitted_total",
    "convoq_jobs_finished_total",
}
HISTOGRAMS = {
    "convoq_http_request_duration_seconds",
    "convoq_job_latency_seconds",
    "convoq_job_queue_wait_seconds",
    "convoq_task_duration_seconds",
    "convoq_inference_batch_size",
    "convoq_inference_seconds",
}
GAUGES = {"convoq_queue_depth", "convoq_workers", "convoq_recommended_replicas"}
# A histogram exists in Prometheus only as its _bucket, _sum and _count series.
CONTRACT_SERIES = (
    COUNTERS | GAUGES | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- docker compose -----------------------------------------------------------


def compose_schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def compose_schema_errors(document: dict) -> list[str]:
    validator_class = jsonschema.validators.validator_for(compose_schema())
    validator = validator_class(compose_schema(), format_checker=validator_class.FORMAT_CHECKER)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default}, ${VAR:?error} and ${VAR}, with nothing set."""

    def resolve(match: re.Match[str]) -> str:
        operator, argument = match.group(2) or "", match.group(3) or ""
        if operator in (":-", "-"):
            return argument
        if operator in (":?", "?"):
            return "set-in-the-environment"
        return ""

    return re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", resolve, value)


def compose_environment(service: dict) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {key: interpolate(str(value)) for key, value in environment.items()}


def container_environment(service: dict) -> dict[str, str]:
    """A convoq service's environment: the image's, then the compose file's."""
    return {**image_environment(), **compose_environment(service)}


def duration_seconds(value: str | int) -> float:
    if isinstance(value, int):
        return float(value)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", value)
    assert parts, f"not a duration: {value}"
    assert "".join(n + u for n, u in parts) == value, f"not a duration: {value}"
    return sum(float(number) * units[unit] for number, unit in parts)


def settings_from(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a container with this environment reads (and validates)."""
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    return Settings()


def one_shot(service: dict) -> bool:
    return service.get("restart") == "no"


def compose_problems(compose: dict) -> list[str]:
    """Issue 5's rules for the compose file, beyond the schema."""
    problems = []
    services = compose.get("services", {})
    if missing := COMPOSE_SERVICES - set(services):
        problems.append(f"services missing: {sorted(missing)}")
    for name, service in services.items():
        check = service.get("healthcheck", {})
        if not one_shot(service) and (not check.get("test") or check.get("disable")):
            problems.append(f"{name}: long-running service without a health check")
        depends_on = service.get("depends_on", {})
        if not isinstance(depends_on, dict):
            problems.append(f"{name}: depends_on without conditions")
            continue
        for target, rule in depends_on.items():
            condition = rule.get("condition")
            if target not in services:
                problems.append(f"{name}: depends on unknown service {target}")
            elif condition == "service_healthy" and "healthcheck" not in services[target]:
                problems.append(f"{name}: waits for {target} to be healthy, which has no check")
            elif condition == "service_completed_successfully" and not one_shot(services[target]):
                problems.append(f"{name}: waits for {target} to complete, which restarts")
    for name in ("worker-cpu", "worker-gpu"):
        service = services.get(name, {})
        for key in ("container_name", "hostname", "ports"):
            if key in service:
                problems.append(f"{name}: {key} stops `docker compose up --scale {name}=N`")
    return problems


def test_compose_files_match_the_compose_specification():
    assert compose_schema()["title"] == "Compose Specification"
    for path in (COMPOSE, COMPOSE_GPU):
        assert compose_schema_errors(load_yaml(path)) == [], path.name


def test_the_compose_schema_refuses_what_compose_refuses():
    compose = load_yaml(COMPOSE)
    misspelt = copy.deepcopy(compose)
    misspelt["services"]["worker-cpu"]["helthcheck"] = misspelt["services"]["worker-cpu"].pop(
        "healthcheck"
    )
    assert any("helthcheck" in error for error in compose_schema_errors(misspelt))
    wrong_condition = copy.deepcopy(compose)
    wrong_condition["services"]["api"]["depends_on"]["redis"]["condition"] = "service_ready"
    assert compose_schema_errors(wrong_condition)


def test_compose_has_every_service_with_health_checks_and_conditions():
    assert compose_problems(load_yaml(COMPOSE)) == []
    one_shots = {n for n, s in load_yaml(COMPOSE)["services"].items() if one_shot(s)}
    assert one_shots == {"migrate"}


@pytest.mark.parametrize(
    ("service", "change", "problem"),
    [
        ("worker-cpu", {"container_name": "convoq-worker"}, "container_name"),
        ("worker-cpu", {"ports": ["9100:9100"]}, "ports"),
        ("worker-gpu", {"hostname": "gpu"}, "hostname"),
        ("flower", {"healthcheck": {"disable": True}}, "without a health check"),
        ("api", {"depends_on": ["redis"]}, "depends_on without conditions"),
        ("api", {"depends_on": {"migrate": {"condition": "service_healthy"}}}, "which has no"),
        (
            "api",
            {"depends_on": {"redis": {"condition": "service_completed_successfully"}}},
            "restarts",
        ),
    ],
)
def test_compose_rules_catch_a_broken_file(service, change, problem):
    compose = load_yaml(COMPOSE)
    compose["services"][service].update(change)
    assert any(problem in p for p in compose_problems(compose))


def test_compose_rules_catch_a_missing_service():
    compose = load_yaml(COMPOSE)
    del compose["services"]["grafana"]
    assert compose_problems(compose) == ["services missing: ['grafana']"]


def test_compose_runs_the_documented_commands():
    services = load_yaml(COMPOSE)["services"]
    for name, command in WORKER_COMMANDS.items():
        assert services[name]["command"] == command, name
    assert services["api"]["command"] == API_COMMAND
    assert services["flower"]["command"] == FLOWER_COMMAND
    assert services["beat"]["command"] == BEAT_COMMAND
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert compose_environment(services["api"])["API_BIND"] == "0.0.0.0:8000"
    assert compose_environment(services["flower"])["FLOWER_BASIC_AUTH"].startswith("convoq:")
    # No encryption key, no stack: compose refuses (${ENCRYPTION_KEYS:?...}) in every process.
    for name in ("migrate", "api", "worker-gpu", "worker-cpu", "beat", "flower"):
        assert compose_environment(services[name])["ENCRYPTION_KEYS"] == "set-in-the-environment"
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    assert "localhost:9091/healthz" in " ".join(services["milvus"]["healthcheck"]["test"])
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:")


def procfile_commands(procfile: dict[str, str]) -> dict[str, list[str]]:
    """The Procfile's commands as the containers run them: without the leading
    VARIABLE=value words (the image and the manifests set those) and the log level."""
    commands = {}
    for name, line in procfile.items():
        args = shlex.split(line)
        while "=" in args[0]:
            args.pop(0)
        if "--loglevel" in args:
            del args[args.index("--loglevel") : args.index("--loglevel") + 2]
        commands[name] = args
    return commands


def procfile_problems(procfile: dict[str, str]) -> list[str]:
    """make run runs what the compose file and the manifests run (the Procfile is
    devstack/supervise.py's process table)."""
    commands = procfile_commands(procfile)
    if set(commands) != PROCESSES:
        return [f"processes {sorted(commands)}, not {sorted(PROCESSES)}"]
    expected = {
        **WORKER_COMMANDS,
        "api": API_COMMAND,
        # Locally Flower's port comes from FLOWER_PORT and beat's schedule file
        # lives in the data directory.
        "flower": FLOWER_COMMAND[: FLOWER_COMMAND.index("--port")],
        "beat": BEAT_COMMAND[: BEAT_COMMAND.index("--schedule") + 1],
    }
    problems = []
    for name, command in commands.items():
        if name == "beat":
            command = command[: command.index("--schedule") + 1] if "--schedule" in command else []
        if command != expected[name]:
            problems.append(f"{name}: {shlex.join(command)}")
    return problems


def test_the_procfile_runs_the_documented_commands():
    assert procfile_problems(read_procfile()) == []
    config = supervisord_config(read_procfile(), Path("/data"), "password")
    for name in PROCESSES:
        assert f"[program:{name}]" in config


@pytest.mark.parametrize(
    ("name", "line", "problem"),
    [
        ("beat", None, "processes"),
        ("beat", f"celery --app {APP} beat", "beat: "),
        ("worker-cpu", f"celery --app {APP} worker --queues cpu --pool solo", "worker-cpu: "),
        ("api", "gunicorn 'api:create_app()'", "api: "),
    ],
)
def test_procfile_rules_catch_a_broken_procfile(name, line, problem):
    procfile = read_procfile()
    if line is None:
        del procfile[name]
    else:
        procfile[name] = line
    assert any(p.startswith(problem) for p in procfile_problems(procfile))


def test_compose_workers_outlast_the_hard_time_limit(monkeypatch):
    services = load_yaml(COMPOSE)["services"]
    for name in WORKER_COMMANDS:
        limit = settings_from(container_environment(services[name]), monkeypatch).celery
        assert limit.task_time_limit == 360
        assert duration_seconds(services[name]["stop_grace_period"]) > limit.task_time_limit, name
    assert duration_seconds("1m30s") == 90
    with pytest.raises(AssertionError, match="not a duration"):
        duration_seconds("420")


def test_compose_services_reach_each_other_by_service_name(monkeypatch):
    services = load_yaml(COMPOSE)["services"]
    settings = settings_from(container_environment(services["worker-cpu"]), monkeypatch)
    assert settings.redis_url.startswith("redis://redis:6379/")
    assert "@postgres:5432/" in settings.database_url
    assert settings.milvus_uri == "http://milvus:19530"
    # Served on the container's interfaces, where Prometheus and the check look.
    assert (settings.worker_metrics_host, settings.worker_metrics_port) == ("0.0.0.0", 9100)
    for name in WORKER_COMMANDS:
        assert ":9100/metrics" in " ".join(services[name]["healthcheck"]["test"])
    api = settings_from(container_environment(services["api"]), monkeypatch)
    assert api.api_bind == "0.0.0.0:8000"


def test_gpu_override_reserves_an_nvidia_device():
    worker = load_yaml(COMPOSE_GPU)["services"]["worker-gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "cu" in worker["build"]["args"]["TORCH_INDEX_URL"].rsplit("/", 1)[-1]
    assert "deploy" not in load_yaml(COMPOSE)["services"]["worker-gpu"]


def test_compose_mounts_the_prometheus_and_grafana_files():
    services = load_yaml(COMPOSE)["services"]
    mounts = {
        name: {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"] if v[0] == "."}
        for name in ("prometheus", "grafana")
    }
    assert mounts["prometheus"]["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus.yml"
    assert mounts["grafana"]["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    dashboard_target = next(t for t, s in mounts["grafana"].items() if s.endswith("convoq.json"))
    for source in [*mounts["prometheus"].values(), *mounts["grafana"].values()]:
        assert (ROOT / source).exists(), source
    provider = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "convoq.yml")["providers"][0]
    assert Path(dashboard_target).parent == Path(provider["options"]["path"])
    datasource = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


# --- Dockerfile -----------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [
        (part[0].upper(), part[1].strip()) for part in (s.strip().split(None, 1) for s in logical)
    ]


def dockerfile_variables(instructions: list[tuple[str, str]], keyword: str) -> dict[str, str]:
    """ENV (or ARG) values, in the ENV name=value form."""
    found = {}
    for instruction, rest in instructions:
        if instruction == keyword:
            found.update(word.partition("=")[::2] for word in shlex.split(rest))
    return found


def image_environment() -> dict[str, str]:
    """What every container of the image starts with (PATH and HOME left out)."""
    env = dockerfile_variables(dockerfile_instructions(DOCKERFILE.read_text()), "ENV")
    return {k: v for k, v in env.items() if k not in ("PATH", "HOME")}


def dockerfile_problems(text: str) -> list[str]:
    instructions = dockerfile_instructions(text)
    problems = []
    env = dockerfile_variables(instructions, "ENV")
    args = dockerfile_variables(instructions, "ARG")
    if instructions[0] != ("FROM", "python:3.11-slim"):
        problems.append(f"base image is {instructions[0]}")
    for name, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PROMETHEUS_MULTIPROC_DIR": "/tmp/convoq-metrics",
    }.items():
        if env.get(name) != value:
            problems.append(f"ENV {name} is {env.get(name)!r}, not {value!r}")
    if args.get("TORCH_INDEX_URL") != "https://download.pytorch.org/whl/cpu":
        problems.append("TORCH_INDEX_URL does not default to the CPU index")
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the image runs as root")
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    torch_pin = next(
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("torch==")
    )
    torch_step = next((i for i, r in enumerate(runs) if torch_pin in r.split()), None)
    requirements_step = next(
        (i for i, r in enumerate(runs) if "-r /tmp/requirements.txt" in r), None
    )
    if torch_step is None or '--index-url "$TORCH_INDEX_URL"' not in runs[torch_step]:
        problems.append(f"{torch_pin} is not installed from $TORCH_INDEX_URL")
    if requirements_step is None or torch_step is None or torch_step > requirements_step:
        problems.append("torch is not installed before requirements.txt")
    return problems


def test_dockerfile_is_non_root_offline_and_installs_torch_first():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []
    ignored = set(DOCKERIGNORE.read_text().split())
    assert {".venv", ".devstack", ".git", "**/__pycache__", ".pytest_cache", ".env"} <= ignored


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("USER 10001:10001", "USER root", "runs as root"),
        ("USER 10001:10001", "", "runs as root"),
        ("HF_HUB_OFFLINE=1", "HF_HUB_OFFLINE=0", "HF_HUB_OFFLINE"),
        ("FROM python:3.11-slim", "FROM python:3.11", "base image"),
        ("whl/cpu", "whl/cu128", "CPU index"),
        ('--index-url "$TORCH_INDEX_URL" ', "", "not installed from"),
    ],
)
def test_dockerfile_rules_catch_a_broken_dockerfile(old, new, problem):
    text = DOCKERFILE.read_text()
    assert old in text
    assert any(problem in p for p in dockerfile_problems(text.replace(old, new)))


# --- Kubernetes -----------------------------------------------------------------


def manifests() -> list[tuple[str, dict]]:
    found = [
        (f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(K8S.rglob("*.yaml"))
        for doc in load_all_yaml(path)
    ]
    assert found
    return found


def objects(kind: str, directory: Path = K8S) -> dict[str, dict]:
    return {
        doc["metadata"]["name"]: doc
        for path in sorted(directory.glob("*.yaml"))
        for doc in load_all_yaml(path)
        if doc["kind"] == kind
    }


def is_keda(doc: dict) -> bool:
    return doc["apiVersion"].startswith("keda.sh/")


def strict(schema: Any) -> Any:
    """Refuse unknown fields wherever the CRD lists the known ones."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


def keda_errors(doc: dict) -> list[str]:
    schema = strict(load_yaml(KEDA_SCHEMA))
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
    if doc.get("apiVersion") != "keda.sh/v1alpha1" or doc.get("kind") != "ScaledObject":
        errors.append(
            f"not a keda.sh/v1alpha1 ScaledObject: {doc.get('apiVersion')} {doc.get('kind')}"
        )
    return errors


MANIFESTS = manifests()


@pytest.mark.parametrize(
    "doc",
    [doc for _, doc in MANIFESTS if not is_keda(doc)],
    ids=[n for n, d in MANIFESTS if not is_keda(d)],
)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_match_the_kubernetes_schema(doc, version):
    # Raises ValidationError (and SchemaNotFoundError for an unknown kind).
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "doc",
    [doc for _, doc in MANIFESTS if is_keda(doc)],
    ids=[n for n, d in MANIFESTS if is_keda(d)],
)
def test_scaledobjects_match_kedas_crd_schema(doc):
    assert keda_errors(doc) == []


def test_the_validators_refuse_broken_manifests():
    deployment = copy.deepcopy(objects("Deployment")["convoq-worker-cpu"])
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 420
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    config_map = copy.deepcopy(objects("ConfigMap")["convoq-config"])
    config_map["data"]["WORKER_METRICS_PORT"] = 9100
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(config_map, K8S_VERSIONS[-1], strict=True)

    scaled = objects("ScaledObject")["convoq-worker-cpu"]
    unquoted = copy.deepcopy(scaled)
    unquoted["spec"]["triggers"][0]["metadata"]["threshold"] = 16
    assert any("threshold" in e for e in keda_errors(unquoted))
    misplaced = copy.deepcopy(scaled)
    misplaced["spec"]["minReplicas"] = misplaced["spec"].pop("minReplicaCount")
    assert any("minReplicas" in e for e in keda_errors(misplaced))
    no_target = copy.deepcopy(scaled)
    del no_target["spec"]["scaleTargetRef"]
    assert any("scaleTargetRef" in e for e in keda_errors(no_target))
    assert keda_errors({**scaled, "apiVersion": "keda.k8s.io/v1alpha1"})


def test_manifests_are_namespace_less():
    assert [name for name, doc in MANIFESTS if "namespace" in doc["metadata"]] == []


def test_the_required_objects_exist():
    assert set(objects("Deployment")) == {f"convoq-{name}" for name in PROCESSES}
    assert set(objects("ScaledObject")) == {"convoq-worker-gpu", "convoq-worker-cpu"}
    assert set(objects("ScaledObject", K8S / "fallback")) == set(objects("ScaledObject"))
    assert {"DATABASE_URL", "REDIS_URL", "FLOWER_BASIC_AUTH", "ENCRYPTION_KEYS"} <= set(
        objects("Secret")["convoq-secrets"]["stringData"]
    )
    service_ports = {
        name: {port["port"] for port in service["spec"]["ports"]}
        for name, service in objects("Service").items()
    }
    assert service_ports == {
        "convoq-api": {8000},
        "convoq-flower": {5555},
        "convoq-worker-gpu-metrics": {9100},
        "convoq-worker-cpu-metrics": {9100},
    }
    assert objects("Job")["convoq-migrate"]["spec"]["template"]["spec"]["containers"][0][
        "command"
    ] == ["alembic", "upgrade", "head"]


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict) -> dict:
    (only,) = pod_spec(deployment)["containers"]
    return only


def test_services_select_their_pods_and_ports():
    deployments = objects("Deployment")
    for name, service in objects("Service").items():
        selector = service["spec"]["selector"]
        matches = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, name
        port_names = {port["name"] for port in container(matches[0])["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, name
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items(), (
            name
        )


def test_every_deployment_has_probes_on_its_own_ports():
    for name, deployment in objects("Deployment").items():
        main = container(deployment)
        if name == "convoq-beat":  # no port: its probe reads its schedule file
            assert "/tmp/celerybeat-schedule" in " ".join(main["livenessProbe"]["exec"]["command"])
            assert cli_option(main["command"], "--schedule") == "/tmp/celerybeat-schedule"
            assert pod_spec(deployment)["securityContext"]["runAsNonRoot"] is True, name
            continue
        ports = {port["name"]: port["containerPort"] for port in main["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert main[probe]["httpGet"]["port"] in ports, f"{name} {probe}"
        assert pod_spec(deployment)["securityContext"]["runAsNonRoot"] is True, name
    api = container(objects("Deployment")["convoq-api"])
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_kubernetes_runs_the_documented_commands():
    deployments = objects("Deployment")
    compose = load_yaml(COMPOSE)["services"]
    for name, command in WORKER_COMMANDS.items():
        assert (
            container(deployments[f"convoq-{name}"])["command"]
            == command
            == compose[name]["command"]
        )
    assert container(deployments["convoq-api"])["command"] == API_COMMAND
    assert container(deployments["convoq-flower"])["command"] == FLOWER_COMMAND
    assert container(deployments["convoq-beat"])["command"] == BEAT_COMMAND
    gpu = container(deployments["convoq-worker-gpu"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in json.dumps(container(deployments["convoq-worker-cpu"]))


def test_beat_runs_once():
    """Two beats would send every periodic task twice."""
    beat = objects("Deployment")["convoq-beat"]
    assert beat["spec"]["replicas"] == 1
    # Recreate: a rollout stops the old pod before it starts the new one.
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    targets = {s["spec"]["scaleTargetRef"]["name"] for s in objects("ScaledObject").values()}
    assert "convoq-beat" not in targets
    compose_beat = load_yaml(COMPOSE)["services"]["beat"]
    assert "deploy" not in compose_beat
    assert compose_beat["healthcheck"]["test"][-1] in " ".join(
        container(beat)["livenessProbe"]["exec"]["command"]
    )


@pytest.fixture
def cluster_settings(monkeypatch) -> Settings:
    """The Settings every convoq pod reads: the image's, the ConfigMap's, the Secret's."""
    environment = {
        **image_environment(),
        **objects("ConfigMap")["convoq-config"]["data"],
        **objects("Secret")["convoq-secrets"]["stringData"],
    }
    return settings_from(environment, monkeypatch)


def cli_option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def graceful_stop_problems(deployment: dict, hard_time_limit: int) -> list[str]:
    """A worker pod stops consuming first, and outlasts its running task."""
    name = deployment["metadata"]["name"]
    spec, main = pod_spec(deployment), container(deployment)
    queue = cli_option(main["command"], "--queues")
    node = cli_option(main["command"], "--hostname")
    problems = []
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= hard_time_limit:
        problems.append(f"{name}: terminationGracePeriodSeconds {grace} <= {hard_time_limit}")
    pre_stop = main.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    script = " ".join(pre_stop)
    expected_node = node.replace("%h", "$(hostname)")
    if not re.search(rf"celery --app \"?\$app\"? control cancel_consumer {queue} ", script) or (
        "app=" + APP not in script
    ):
        problems.append(f"{name}: preStop does not cancel the consumer of {queue}")
    if f'node="{expected_node}"' not in script or '--destination "$node"' not in script:
        problems.append(f"{name}: preStop does not address {expected_node}")
    if "inspect active" not in script:
        problems.append(f"{name}: preStop does not wait for the active tasks")
    wait = re.search(r"deadline=\$\(\( \$\(date \+%s\) \+ (\d+) \)\)", script)
    if not wait or not hard_time_limit <= int(wait.group(1)) < grace:
        problems.append(
            f"{name}: preStop's wait is not bounded between the time limit and the grace"
        )
    return problems


def test_worker_pods_stop_gracefully(cluster_settings):
    limit = cluster_settings.celery.task_time_limit
    assert limit == 360
    workers = [d for n, d in objects("Deployment").items() if n.startswith("convoq-worker-")]
    assert len(workers) == 2
    for deployment in workers:
        assert graceful_stop_problems(deployment, limit) == []


def set_option(deployment: dict, name: str, value: str) -> None:
    command = container(deployment)["command"]
    command[command.index(name) + 1] = value


def replace_in_pre_stop(deployment: dict, old: str, new: str) -> None:
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert old in command[-1]
    command[-1] = command[-1].replace(old, new)


@pytest.mark.parametrize(
    ("change", "limit", "problem"),
    [
        (lambda d: None, 420, "terminationGracePeriodSeconds 420 <= 420"),
        (lambda d: pod_spec(d).update(terminationGracePeriodSeconds=300), 360, "300 <= 360"),
        (lambda d: pod_spec(d).pop("terminationGracePeriodSeconds"), 360, "30 <= 360"),
        (lambda d: container(d).pop("lifecycle"), 360, "does not cancel the consumer of cpu"),
        (lambda d: set_option(d, "--queues", "gpu"), 360, "does not cancel the consumer of gpu"),
        (lambda d: set_option(d, "--hostname", "w@%h"), 360, "does not address w@$(hostname)"),
        (
            lambda d: replace_in_pre_stop(d, "inspect active", "inspect stats"),
            360,
            "does not wait for the active tasks",
        ),
        (lambda d: replace_in_pre_stop(d, "+ 390 ", "+ 600 "), 360, "wait is not bounded"),
        (lambda d: replace_in_pre_stop(d, "+ 390 ", "+ 60 "), 360, "wait is not bounded"),
    ],
)
def test_graceful_stop_rules_catch_a_broken_worker(change, limit, problem):
    deployment = copy.deepcopy(objects("Deployment")["convoq-worker-cpu"])
    change(deployment)
    problems = graceful_stop_problems(deployment, limit)
    assert any(problem in p for p in problems), problems


def test_containers_listen_where_their_ports_and_probes_are(cluster_settings):
    deployments = objects("Deployment")
    for pool in ("gpu", "cpu"):
        ports = container(deployments[f"convoq-worker-{pool}"])["ports"]
        assert ports == [{"name": "metrics", "containerPort": cluster_settings.worker_metrics_port}]
    # On the pod's IP, where the kubelet probes and Prometheus scrapes.
    assert cluster_settings.worker_metrics_host == "0.0.0.0"
    api_port = container(deployments["convoq-api"])["ports"][0]["containerPort"]
    assert cluster_settings.api_bind == f"0.0.0.0:{api_port}"


def test_forking_containers_get_a_metrics_directory_of_their_own():
    directory = image_environment()["PROMETHEUS_MULTIPROC_DIR"]
    for name in ("convoq-api", "convoq-worker-gpu", "convoq-worker-cpu"):
        deployment = objects("Deployment")[name]
        (mount,) = [m for m in container(deployment)["volumeMounts"] if m["mountPath"] == directory]
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        assert "emptyDir" in volumes[mount["name"]], name


def prometheus_trigger(scaled_object: dict) -> dict:
    (trigger,) = [t for t in scaled_object["spec"]["triggers"] if t["type"] == "prometheus"]
    return trigger


def test_keda_scales_as_the_api_recommends(cluster_settings):
    deployments = objects("Deployment")
    for pool in ("gpu", "cpu"):
        scaled = objects("ScaledObject")[f"convoq-worker-{pool}"]
        rule = getattr(cluster_settings.scaling, pool)
        spec = scaled["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
            rule.min_replicas,
            rule.max_replicas,
        )
        trigger = prometheus_trigger(scaled)
        assert trigger.get("metricType", "AverageValue") == "AverageValue"
        assert int(trigger["metadata"]["threshold"]) == rule.target_per_worker
        query = trigger["metadata"]["query"]
        assert query == f'sum(max by (queue, state) (convoq_queue_depth{{queue="{pool}"}}))'
        assert metric_names(query) <= CONTRACT_SERIES
    assert objects("ScaledObject")["convoq-worker-cpu"]["spec"]["minReplicaCount"] == 0


class RedisListNames:
    """Kombu's own naming of the Redis list that holds a queue's messages of a priority."""

    priority_steps = PRIORITY_STEPS
    sep = RedisChannel.sep
    priority = RedisChannel.priority
    list_for = RedisChannel._q_for_pri


URGENT_PRIORITY = 0  # Redis serves it first


def test_the_redis_lists_fallback_names_the_lists_jobs_are_in(cluster_settings):
    names = RedisListNames()
    job_priority = cluster_settings.celery.task_default_priority
    # Jobs are not in the bare list: that is why one trigger per list is needed.
    assert names.list_for("cpu", job_priority) == "cpu\x06\x166"
    assert names.list_for("gpu", URGENT_PRIORITY) == "gpu"
    for pool in ("gpu", "cpu"):
        scaled = objects("ScaledObject", K8S / "fallback")[f"convoq-worker-{pool}"]
        triggers = scaled["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"redis"}
        lists = {t["metadata"]["listName"] for t in triggers}
        assert lists == {names.list_for(pool, job_priority), names.list_for(pool, URGENT_PRIORITY)}


# --- Prometheus -----------------------------------------------------------------


def jobs(config: dict) -> dict[str, dict]:
    return {job["job_name"]: job for job in config["scrape_configs"]}


def compose_scrape_problems(config: dict) -> list[str]:
    services = load_yaml(COMPOSE)["services"]
    scrape = jobs(config)
    problems = []
    expected = {
        "api": ("static", "api:8000"),
        "flower": ("static", "flower:5555"),
        "worker-gpu": ("dns", "worker-gpu:9100"),
        "worker-cpu": ("dns", "worker-cpu:9100"),
    }
    for name, (kind, target) in expected.items():
        job = scrape.get(name)
        if job is None:
            problems.append(f"no job {name}")
            continue
        if job.get("metrics_path", "/metrics") != "/metrics":
            problems.append(f"{name}: path {job['metrics_path']}")
        if kind == "static":
            targets = {t for c in job.get("static_configs", []) for t in c["targets"]}
        else:
            targets = {
                f"{n}:{c['port']}"
                for c in job.get("dns_sd_configs", [])
                if c.get("type") == "A"
                for n in c["names"]
            }
        if target not in targets:
            problems.append(f"{name}: does not scrape {target}")
        if target.split(":")[0] not in services:
            problems.append(f"{name}: {target} is no compose service")
    flower_auth = scrape.get("flower", {}).get("basic_auth", {})
    secret_targets = {s["target"] for s in services["prometheus"].get("secrets", [])}
    if Path(flower_auth.get("password_file", "")).name not in secret_targets:
        problems.append("flower: no basic_auth password from a compose secret")
    flower_user = compose_environment(services["flower"])["FLOWER_BASIC_AUTH"].split(":")[0]
    if flower_auth.get("username") != flower_user:
        problems.append(f"flower: basic_auth user is not Flower's {flower_user}")
    return problems


def test_compose_prometheus_scrapes_the_api_both_pools_and_flower():
    assert compose_scrape_problems(load_yaml(PROMETHEUS)) == []


@pytest.mark.parametrize("job", ["api", "worker-gpu", "worker-cpu", "flower"])
def test_compose_scrape_rules_catch_a_missing_job(job):
    config = load_yaml(PROMETHEUS)
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] != job]
    assert f"no job {job}" in compose_scrape_problems(config)


def test_compose_scrape_rules_catch_wrong_targets():
    config = load_yaml(PROMETHEUS)
    jobs(config)["worker-cpu"]["dns_sd_configs"][0]["port"] = 9200
    del jobs(config)["flower"]["basic_auth"]
    problems = compose_scrape_problems(config)
    assert "worker-cpu: does not scrape worker-cpu:9100" in problems
    assert "flower: no basic_auth password from a compose secret" in problems
    assert "flower: basic_auth user is not Flower's convoq" in problems


def test_cluster_prometheus_finds_every_convoq_service():
    config = yaml.safe_load(objects("ConfigMap")["convoq-prometheus"]["data"]["prometheus.yml"])
    scrape = jobs(config)
    services = objects("Service")
    kept = set()
    for name, job in scrape.items():
        assert job["kubernetes_sd_configs"] == [{"role": "endpointslice"}], name
        (keep,) = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        for service in services.values():
            labels = service["metadata"]["labels"]
            for port in service["spec"]["ports"]:
                values = [
                    labels["app.kubernetes.io/part-of"],
                    labels["app.kubernetes.io/component"],
                    port["name"],
                ]
                if re.fullmatch(keep["regex"], ";".join(values)):
                    kept.add((name, service["metadata"]["name"]))
    assert kept == {
        ("api", "convoq-api"),
        ("worker-gpu", "convoq-worker-gpu-metrics"),
        ("worker-cpu", "convoq-worker-cpu-metrics"),
        ("flower", "convoq-flower"),
    }
    flower_auth = scrape["flower"]["basic_auth"]
    user = objects("Secret")["convoq-secrets"]["stringData"]["FLOWER_BASIC_AUTH"].split(":")[0]
    assert flower_auth["username"] == user
    password_key = Path(flower_auth["password_file"]).name
    assert password_key in objects("Secret")["convoq-flower-scrape"]["stringData"]


# --- Grafana --------------------------------------------------------------------

# Aggregations, keywords and modifiers; function names are recognised by their "(".
PROMQL_KEYWORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges ($__rate_interval too)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # dashboard variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        word = match.group()
        is_call = expr[match.end() :].lstrip().startswith("(")
        if word not in PROMQL_KEYWORDS and not is_call:
            names.add(word)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ("rate(a_total[5m])", {"a_total"}),
        (
            "histogram_quantile(0.95, sum by (type, le) "
            '(rate(x_bucket{status="ok"}[$__rate_interval])))',
            {"x_bucket"},
        ),
        ('sum(a) / on (pool) group_left max(b{q="sum"}) * 1e3', {"a", "b"}),
        ("sum(rate(c[1m])) by (route) > bool 0.5", {"c"}),
    ],
)
def test_metric_names_are_read_from_promql(expr, names):
    assert metric_names(expr) == names


def allowed_metric(name: str) -> bool:
    return name in CONTRACT_SERIES or name.startswith("flower_")


def panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p["type"] != "row"]


def dashboard_problems(dashboard: dict) -> list[str]:
    problems = []
    exprs = []
    for panel in panels(dashboard):
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{panel['title']}: data source is not the variable")
        if not panel.get("targets"):
            problems.append(f"{panel['title']}: no query")
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
            if unknown := sorted(n for n in metric_names(target["expr"]) if not allowed_metric(n)):
                problems.append(f"{panel['title']}: unknown metrics {unknown}")
            if not metric_names(target["expr"]):
                problems.append(f"{panel['title']}: a query reads no metric")

    def quantile(q: str, series: str) -> Any:
        return lambda e: re.search(rf"histogram_quantile\({q}, .*\b{series}_bucket\b", e)

    required = {
        "queue depth by queue and state": lambda e: "by (queue, state) (convoq_queue_depth" in e,
        "throughput": lambda e: re.search(
            r"by \(type, status\) \(rate\(convoq_jobs_finished_total", e
        ),
        "latency p50": quantile("0.5", "convoq_job_latency_seconds"),
        "latency p95": quantile("0.95", "convoq_job_latency_seconds"),
        "latency p99": quantile("0.99", "convoq_job_latency_seconds"),
        "queue wait p95": quantile("0.95", "convoq_job_queue_wait_seconds"),
        "HTTP request rate": lambda e: "rate(convoq_http_requests_total[" in e,
        "HTTP 5xx": lambda e: 'convoq_http_requests_total{status=~"5.."}' in e,
        "HTTP 4xx": lambda e: 'convoq_http_requests_total{status=~"4.."}' in e,
        "batch size": lambda e: "convoq_inference_batch_size_bucket" in e,
        "inference seconds": lambda e: "convoq_inference_seconds_bucket" in e,
        "workers per pool": lambda e: "by (pool) (convoq_workers)" in e,
        "task duration p95": quantile("0.95", "convoq_task_duration_seconds"),
    }
    problems += [f"no panel for {n}" for n, found in required.items() if not any(map(found, exprs))]
    return problems


def test_the_dashboard_reads_only_contract_metrics_and_has_every_panel():
    assert dashboard_problems(json.loads(DASHBOARD.read_text())) == []


def test_the_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0, panel["title"]
    for panel in panels(dashboard):
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("convoq_queue_depth)", "convoq_queue_size)", "unknown metrics ['convoq_queue_size']"),
        ("convoq_job_latency_seconds_bucket", "convoq_job_latency_seconds", "unknown metrics"),
        ("(0.99, ", "(0.98, ", "no panel for latency p99"),
        ('status=~\\"5..\\"', 'status=\\"500\\"', "no panel for HTTP 5xx"),
        ("${datasource}", "prometheus", "data source is not the variable"),
    ],
)
def test_dashboard_rules_catch_a_broken_dashboard(old, new, problem):
    text = DASHBOARD.read_text()
    assert old in text
    problems = dashboard_problems(json.loads(text.replace(old, new, 1)))
    assert any(problem in p for p in problems), problems
