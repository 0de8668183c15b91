"""docker-compose.yml cannot run here (no Docker engine); check it agrees with the code."""

from pathlib import Path

import yaml

from services.cli import build_parser
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROM = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
DIALGUARD_SERVICES = [n for n, s in COMPOSE["services"].items() if "build" in s]


def test_kafka_is_official_image_in_kraft_mode():
    kafka = COMPOSE["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_every_setting_named_in_compose_exists():
    known = set(Settings.env_names())
    for name in DIALGUARD_SERVICES:
        env = COMPOSE["services"][name]["environment"]
        assert set(env) <= known, set(env) - known
        Settings.from_env({k: str(v) for k, v in env.items()})  # values parse


def test_bootstrap_points_at_the_kafka_listener():
    env = COMPOSE["services"]["worker"]["environment"]
    host, port = env["DIALGUARD_KAFKA_BOOTSTRAP"].split(":")
    kafka_env = COMPOSE["services"]["kafka"]["environment"]
    assert f"PLAINTEXT://{host}:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]


def test_commands_are_real_cli_commands():
    parser = build_parser()
    for name in DIALGUARD_SERVICES:
        parser.parse_args(COMPOSE["services"][name]["command"])
    assert COMPOSE["services"]["topics"]["command"] == ["topics", "create"]


def test_prometheus_scrapes_the_worker_metrics_port():
    env = COMPOSE["services"]["worker"]["environment"]
    port = int(env["DIALGUARD_METRICS_PORT"])
    assert env["DIALGUARD_METRICS_HOST"] == "0.0.0.0"
    jobs = {j["job_name"]: j for j in PROM["scrape_configs"]}
    sd = jobs["dialguard-worker"]["dns_sd_configs"][0]
    assert sd["port"] == port and sd["names"] == ["worker"]
    assert str(port) in COMPOSE["services"]["worker"]["expose"]
