"""docker-compose.yml, validated by docker-compose itself (`config`; no Docker engine needed)
and checked against what the deployment promises: api, worker-cpu, worker-gpu (NVIDIA device
reservation), redis with persistence, postgres; healthchecks, service_healthy dependencies,
named volumes for artifacts and the database, required variables refused when unset, and every
NERN_* variable a setting the service knows."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from api.jobstore.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: scripts/test.sh installs Debian's docker-compose package (as root)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NERN_")}
    return subprocess.run([exe, "-f", str(REPO / "docker-compose.yml"), *args], cwd=REPO,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)


def _volumes(service: dict) -> dict[str, str]:
    """Named volume → mount point, from the short ("src:target:rw") or the long syntax."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            src, target = v.split(":")[:2]
            if not src.startswith(("/", ".")):
                out[src] = target
        elif v.get("type") == "volume":
            out[v["source"]] = v["target"]
    return out


@pytest.fixture(scope="module")
def config() -> dict:
    r = _compose("config", env={"NERN_DB_PASSWORD": "s3cret"})
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_required_variables_are_refused_when_unset():
    r = _compose("config", env={})
    assert r.returncode != 0 and "NERN_DB_PASSWORD" in r.stderr


def test_services_healthchecks_and_dependencies(config):
    services = config["services"]
    assert set(services) == {"api", "worker-cpu", "worker-gpu", "redis", "postgres"}
    for name in ("api", "redis", "postgres"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("api", "worker-cpu", "worker-gpu"):
        deps = services[name]["depends_on"]
        assert {d: deps[d]["condition"] for d in ("postgres", "redis")} == {
            "postgres": "service_healthy", "redis": "service_healthy"}, name
        env = services[name]["environment"]
        assert env["NERN_DATABASE_URL"] == "postgresql+psycopg://nern:s3cret@postgres:5432/nern"
        assert env["NERN_BROKER_URL"].startswith("redis://redis:6379/")
        assert _volumes(services[name]) == {"artifacts": "/var/lib/nern/artifacts"}, name
    for name in ("worker-cpu", "worker-gpu"):
        assert services[name]["depends_on"]["api"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"


def test_gpu_worker_reserves_nvidia_devices_and_uses_the_cuda_image(config):
    gpu = config["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.cuda" and "gpu" in " ".join(gpu["command"])
    assert "gpu" not in " ".join(config["services"]["worker-cpu"]["command"])
    assert (REPO / "docker" / "Dockerfile.cuda").read_text().count("whl/cu") == 1
    assert "whl/cpu" in (REPO / "docker" / "Dockerfile").read_text()


def test_redis_persists_and_state_lives_in_named_volumes(config):
    redis = config["services"]["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    volumes = {s: _volumes(config["services"][s]) for s in ("redis", "postgres")}
    assert volumes["redis"] == {"redis-data": "/data"}
    assert volumes["postgres"] == {"postgres-data": "/var/lib/postgresql/data"}
    assert {"artifacts", "postgres-data", "redis-data"} <= set(config["volumes"])


def test_every_nern_variable_is_a_known_setting(config):
    known = {f"NERN_{name.upper()}" for name in Settings.model_fields}
    for name, svc in config["services"].items():
        unknown = {k for k in svc.get("environment", {}) if k.startswith("NERN_")} - known
        assert not unknown, (name, unknown)
