"""The deployment artefacts (deploy/): valid by their schemas and linters (infra/deploy-check),
and naming only what exists: eventkeep sub-commands, settings, probe paths."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import typer
import yaml

from eventkeep.api.cli import app
from eventkeep.api.routes.ops import router
from eventkeep.api.settings import Settings
from eventkeep.eventstore.backup import BackupSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROCESS_KINDS = {"serve", "relay", "project"}


def manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def settings_names() -> set[str]:
    fields = {*Settings.model_fields, *BackupSettings.model_fields}
    return {f"EVENTKEEP_{name.upper()}" for name in fields}


def test_the_validators_accept_every_artefact() -> None:
    done = subprocess.run(
        [str(REPO / "infra" / "deploy-check")], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deploy-check: ok" in done.stdout


def test_the_validators_refuse_a_broken_manifest(tmp_path: Path) -> None:
    broken = (DEPLOY / "kubernetes" / "api.yaml").read_text().replace("containerPort", "port")
    (tmp_path / "api.yaml").write_text(broken)
    done = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", str(tmp_path / "api.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0


def test_every_process_is_an_eventkeep_command_and_every_kind_runs() -> None:
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    used = []
    for doc in manifests():
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                assert container["image"].startswith("eventkeep:")
                used.append(container["args"][0])
    for name, service in compose()["services"].items():
        if str(service.get("image", "")).startswith("eventkeep:"):
            used.append(service["command"][0])
            assert name in {"api", "relay", "projector"}
    assert set(used) <= commands
    assert set(used) == PROCESS_KINDS
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["eventkeep"]' in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)  # never root


def test_settings_are_real_and_secrets_come_from_the_secret() -> None:
    known = settings_names()
    secret_keys: set[str] = set()
    for doc in manifests():
        if doc["kind"] == "Secret":
            secret_keys |= set(doc["stringData"])
        if doc["kind"] == "ConfigMap":
            assert set(doc["data"]) <= known
            assert not {"EVENTKEEP_CLAIM_SECRET", "EVENTKEEP_POSTGRES_URL"} & set(doc["data"])
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            for container in spec["containers"]:
                assert {"requests", "limits"} <= set(container["resources"])
                sources = {next(iter(source)) for source in container["envFrom"]}
                assert sources == {"configMapRef", "secretRef"}
                assert {env["name"] for env in container.get("env", [])} <= known
    assert secret_keys <= known
    assert {"EVENTKEEP_POSTGRES_URL", "EVENTKEEP_CLAIM_SECRET"} <= secret_keys
    environment = compose()["x-eventkeep"]["environment"]
    assert set(environment) <= known


def test_api_probes_use_the_health_routes_and_the_relay_has_a_standby() -> None:
    paths = {route.path for route in router.routes}  # type: ignore[attr-defined]
    by_component = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
        for doc in manifests()
        if doc["kind"] == "Deployment"
    }
    api = by_component["api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= paths
    assert by_component["relay"]["spec"]["replicas"] == 2
    assert compose()["services"]["relay"]["deploy"]["replicas"] == 2
