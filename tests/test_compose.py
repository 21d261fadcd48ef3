"""docker-compose.yml, read as compose reads it (there is no Docker engine to ask): every
port on loopback, every secret from the env file and refused when missing, the Temporal
UI read-only and decoding through the endpoints' codec server, and the settings each
Dealflow service gets accepted by settings.py."""

from __future__ import annotations

import base64
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboard.access import Access, hash_password
from settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
EXAMPLE = ROOT / "deploy" / "dealflow.env.example"
SECRETS = {
    "POSTGRES_PASSWORD",
    "DEALFLOW_SIGNING_SECRET",
    "DEALFLOW_WEBHOOK_SECRET",
    "DEALFLOW_CODEC_KEYS",
    "DEALFLOW_CODEC_SERVER_TOKEN",
    "DEALFLOW_DASHBOARD_USERS",
}
# Required but no secret: an operator's choice compose must not make for them.
REQUIRED = SECRETS | {"DEALFLOW_PUBLIC_URL"}
DEALFLOW_SERVICES = ("worker", "endpoints", "ledger-migrate", "dashboard")
_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ``${V}``, ``${V:-default}``, ``${V:?error}``, ``$$``."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        given = env.get(name, "")
        if op == ":?" and not given:
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        if op == ":-" and not given:
            return arg
        return given

    return _VARIABLE.sub(value, text)


def example_names() -> list[str]:
    names = []
    for line in EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, equals, value = line.partition("=")
            assert equals and value == "", f"the example holds a value: {line!r}"
            names.append(name)
    return names


def filled() -> dict[str, str]:
    """The env file as an operator fills it, following its instructions."""
    return {
        "POSTGRES_PASSWORD": secrets.token_hex(24),
        "DEALFLOW_SIGNING_SECRET": base64.b64encode(secrets.token_bytes(32)).decode(),
        "DEALFLOW_WEBHOOK_SECRET": base64.b64encode(secrets.token_bytes(32)).decode(),
        "DEALFLOW_CODEC_KEYS": f"k1={base64.b64encode(secrets.token_bytes(32)).decode()}",
        "DEALFLOW_CODEC_SERVER_TOKEN": secrets.token_hex(32),
        "DEALFLOW_DASHBOARD_USERS": f"anna:{hash_password(secrets.token_hex(8))}",
        "DEALFLOW_PUBLIC_URL": "https://deals.example.com",
    }


def stack(env: dict[str, str]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    return loaded["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    given = service.get("environment", {})
    if isinstance(given, list):
        return dict(item.split("=", 1) for item in given)
    return {name: str(value) for name, value in given.items()}


def test_the_example_env_file_names_every_secret_and_holds_no_value() -> None:
    assert set(example_names()) >= REQUIRED


def test_every_port_is_bound_to_loopback() -> None:
    services = stack(filled())
    published = [(name, port) for name, s in services.items() for port in s.get("ports", [])]
    assert published, "no published ports?"
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), (name, port)


def test_every_secret_is_required_and_has_no_default() -> None:
    text = COMPOSE.read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, f"{name} is not used"
        assert all(use.startswith(":?") for use in uses), (name, uses)
    # No password written in the file itself (the old demo values).
    assert "compose-demo-only-set-your-own" not in text
    assert not re.search(r"(PASSWORD|PWD)[:=]\s*temporal\b", text)
    assert "postgresql://temporal:temporal@" not in text


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_compose_refuses_to_start_without_a_secret_or_the_public_url(missing: str) -> None:
    env = filled()
    del env[missing]
    with pytest.raises(MissingVariable, match=f"{missing} is missing a value: set {missing} in"):
        stack(env)


def test_the_ui_is_read_only_and_decodes_through_the_endpoints() -> None:
    env = filled()
    services = stack(env)
    ui = environment(services["temporal-ui"])
    assert ui["TEMPORAL_DISABLE_WRITE_ACTIONS"] == "true"
    endpoints = services["endpoints"]
    host_port, container_port = endpoints["ports"][0].split(":")[1:3]
    container_port = container_port.split()[0]
    settings = environment(endpoints)
    assert settings["DEALFLOW_HTTP_PORT"] == container_port
    token = env["DEALFLOW_CODEC_SERVER_TOKEN"]
    assert ui["TEMPORAL_CODEC_ENDPOINT"] == f"http://localhost:{host_port}/codec/{token}"
    assert settings["DEALFLOW_CODEC_SERVER_TOKEN"] == token
    # The browser calls the codec server from the UI's origin.
    ui_host_port = services["temporal-ui"]["ports"][0].split(":")[1]
    assert settings["DEALFLOW_CODEC_CORS_ORIGINS"] == f"http://localhost:{ui_host_port}"


def test_the_workers_and_the_endpoints_share_the_codec_keys_and_signing_secret() -> None:
    services = stack(filled())
    worker, endpoints = environment(services["worker"]), environment(services["endpoints"])
    for name in ("DEALFLOW_CODEC_KEYS", "DEALFLOW_SIGNING_SECRET", "DEALFLOW_DATABASE_URL"):
        assert worker[name] == endpoints[name]


def load_in_process(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import settings; settings.load_settings()"],
        cwd=ROOT,
        env={"PATH": "/usr/bin", **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("service", DEALFLOW_SERVICES)
def test_settings_accept_what_compose_gives_each_dealflow_service(service: str) -> None:
    given = environment(stack(filled())[service])
    result = load_in_process(given)
    assert result.returncode == 0, result.stderr


def test_settings_refuse_the_old_compose_demo_secret() -> None:
    env = filled() | {"DEALFLOW_SIGNING_SECRET": "compose-demo-only-set-your-own"}
    result = load_in_process(environment(stack(env)["worker"]))
    assert result.returncode == 2 and "DEALFLOW_SIGNING_SECRET" in result.stderr


@pytest.mark.parametrize("service", ["worker", "endpoints"])
def test_settings_refuse_an_http_public_url_off_this_machine(service: str) -> None:
    env = filled() | {"DEALFLOW_PUBLIC_URL": "http://deals.example.com"}
    result = load_in_process(environment(stack(env)[service]))
    assert result.returncode == 2
    assert "DEALFLOW_PUBLIC_URL must be https://" in result.stderr


def test_the_dashboard_signs_in_its_users_and_links_to_the_ui(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = stack(filled())
    given = environment(services["dashboard"])
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    # Beyond loopback in its container, with its users: it starts.
    assert settings.dashboard_host == "0.0.0.0"
    Access(settings).check_listening(settings.dashboard_host)
    assert Access(settings).uses_passwords
    container_port = services["dashboard"]["ports"][0].split(":")[2]
    assert container_port == str(settings.dashboard_port)
    ui_host_port = services["temporal-ui"]["ports"][0].split(":")[1]
    assert settings.temporal_ui_url == f"http://localhost:{ui_host_port}"
