"""docker-compose.yml cannot run here (no Docker engine); check it agrees with the code."""

from pathlib import Path

import yaml

from services.cli import build_parser
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROM = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
#: Services built from the project's own image (the Kamailio switch has an image of its own).
DIALGUARD_SERVICES = [n for n, s in COMPOSE["services"].items() if s.get("build") == "."]


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


def _defines(service: dict) -> dict[str, str]:
    args = service["command"]
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "-A")


def test_every_process_with_metrics_is_scraped_on_its_port():
    jobs = {sd["names"][0]: sd["port"] for j in PROM["scrape_configs"]
            for sd in j["dns_sd_configs"]}
    ports = {"api": "DIALGUARD_API_METRICS_PORT", "hep-collector": "DIALGUARD_INGEST_METRICS_PORT",
             "switch-adapter": "DIALGUARD_ADAPTER_METRICS_PORT", "worker": "DIALGUARD_METRICS_PORT"}
    for name, var in ports.items():
        service = COMPOSE["services"][name]
        port = int(service["environment"][var])
        assert jobs[name] == port, name
        assert str(port) in service["expose"], name
        assert service["environment"]["DIALGUARD_METRICS_HOST"] == "0.0.0.0", name


def test_kamailio_traces_to_the_collector_and_serves_the_adapter():
    kamailio = COMPOSE["services"]["kamailio"]
    build = ROOT / kamailio["build"]
    assert (build / "Dockerfile").exists() and (build / "dialguard.cfg").exists()
    cfg = (build / "dialguard.cfg").read_text()
    defines = _defines(kamailio)
    assert all(f"#!ifndef {name}" in cfg for name in defines), defines
    collector = COMPOSE["services"]["hep-collector"]["environment"]
    assert defines["HEP_URI"] == f'"sip:hep-collector:{collector["DIALGUARD_HEP_PORT"]}"'
    assert collector["DIALGUARD_HEP_HOST"] == "0.0.0.0"
    adapter = COMPOSE["services"]["switch-adapter"]["environment"]
    assert adapter["DIALGUARD_KAMAILIO_RPC_URL"] == f"http://kamailio:{defines['HTTP_PORT']}/RPC"
    assert defines["HTTP_PORT"] in kamailio["expose"]
    assert not any(defines["HTTP_PORT"] in str(p) for p in kamailio.get("ports", [])), \
        "Kamailio's JSON-RPC has no authentication: never publish it"
