"""docker-compose.yml cannot run here (no Docker engine); check it agrees with the code."""

import base64
import re
from pathlib import Path

import yaml

from services.cli import build_parser
from services.settings import Settings
from streams.topics import min_insync_replicas

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROM = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
#: Services built from the project's own image (the Kamailio switch has an image of its own).
DIALGUARD_SERVICES = [n for n, s in COMPOSE["services"].items() if s.get("build") == "."]
KAFKA_SERVICES = [n for n, s in COMPOSE["services"].items()
                  if str(s.get("image", "")).startswith("apache/kafka:")]
WORKER_SERVICES = [n for n in DIALGUARD_SERVICES if COMPOSE["services"][n]["command"] == ["worker"]]
#: The production cluster: 3 brokers, topics with 3 copies.
BROKERS = 3
#: Where the image keeps dialguard's home (worker state): the Dockerfile's DIALGUARD_HOME.
IMAGE_HOME = re.search(r"DIALGUARD_HOME=(\S+)", (ROOT / "Dockerfile").read_text()).group(1)


def kafka_env(name: str) -> dict[str, str]:
    return COMPOSE["services"][name]["environment"]


def test_kafka_is_official_image_in_kraft_mode():
    assert len(KAFKA_SERVICES) == BROKERS
    for name in KAFKA_SERVICES:
        kafka = COMPOSE["services"][name]
        assert kafka["image"].startswith("apache/kafka:4.")
        assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_three_brokers_form_one_quorum_with_their_own_storage():
    envs = [kafka_env(n) for n in KAFKA_SERVICES]
    ids = sorted(int(e["KAFKA_NODE_ID"]) for e in envs)
    assert ids == list(range(1, BROKERS + 1))
    voters = {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in envs}
    assert len(voters) == 1  # one quorum, the same for every node
    [voters_value] = voters
    controller_port = envs[0]["KAFKA_LISTENERS"].split("CONTROLLER://:")[1]
    assert voters_value == ",".join(f"{kafka_env(n)['KAFKA_NODE_ID']}@{n}:{controller_port}"
                                    for n in KAFKA_SERVICES)
    cluster_ids = {str(e["CLUSTER_ID"]) for e in envs}
    assert len(cluster_ids) == 1  # nodes formatted with different ids never join
    [cluster_id] = cluster_ids
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16  # a Kafka Uuid
    volumes = [COMPOSE["services"][n]["volumes"][0].split(":")[0] for n in KAFKA_SERVICES]
    assert len(set(volumes)) == BROKERS and set(volumes) <= set(COMPOSE["volumes"])


def test_replication_3_and_min_isr_2_everywhere():
    """Catalog topics (dialguard's topic creation), Kafka's internal topics and topics created
    without their own settings (Faust's changelogs) all keep 3 copies, 2 needed per ack."""
    settings = Settings.from_env({k: str(v) for k, v in
                                  COMPOSE["services"]["topics"]["environment"].items()})
    assert settings.topic_replication == BROKERS
    assert min_insync_replicas(settings.topic_replication) == 2
    for name in KAFKA_SERVICES:
        env = kafka_env(name)
        for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                    "KAFKA_DEFAULT_REPLICATION_FACTOR"):
            assert env[key] == str(BROKERS), (name, key)
        for key in ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_MIN_INSYNC_REPLICAS"):
            assert env[key] == str(min_insync_replicas(BROKERS)), (name, key)
    assert set(COMPOSE["services"]["topics"]["depends_on"]) == set(KAFKA_SERVICES)


def test_each_worker_keeps_its_state_in_a_volume_of_its_own():
    """A recreated worker container must find its RocksDB folder and model checkpoint: the
    folder is named after the hostname (Settings.worker_dir), so the hostname is fixed and
    the volume holding the home is the worker's alone."""
    assert len(WORKER_SERVICES) >= 2
    hostnames, volumes = [], []
    for name in WORKER_SERVICES:
        service = COMPOSE["services"][name]
        assert "deploy" not in service and "scale" not in service, name  # no shared replicas
        hostnames.append(service["hostname"])
        [mount] = service["volumes"]
        volume, target = mount.split(":")[:2]
        assert target == IMAGE_HOME, name
        assert volume in COMPOSE["volumes"], name  # a named volume, not the container's layer
        volumes.append(volume)
        worker_dir = Settings.from_env({}, home=Path(target)).data_dir / \
            f"worker-{service['hostname']}"
        assert worker_dir.is_relative_to(Path(target))
        assert "worker" in service["networks"]["default"]["aliases"]  # found by Prometheus
    assert len(set(hostnames)) == len(WORKER_SERVICES)
    assert len(set(volumes)) == len(WORKER_SERVICES)


def test_every_setting_named_in_compose_exists():
    known = set(Settings.env_names())
    for name in DIALGUARD_SERVICES:
        env = COMPOSE["services"][name]["environment"]
        assert set(env) <= known, set(env) - known
        Settings.from_env({k: str(v) for k, v in env.items()})  # values parse


def test_bootstrap_names_every_kafka_listener():
    for name in WORKER_SERVICES:
        servers = COMPOSE["services"][name]["environment"]["DIALGUARD_KAFKA_BOOTSTRAP"]
        advertised = {kafka_env(k)["KAFKA_ADVERTISED_LISTENERS"] for k in KAFKA_SERVICES}
        assert {f"PLAINTEXT://{s}" for s in servers.split(",")} == advertised


def test_commands_are_real_cli_commands():
    parser = build_parser()
    for name in DIALGUARD_SERVICES:
        parser.parse_args(COMPOSE["services"][name]["command"])
    assert COMPOSE["services"]["topics"]["command"] == ["topics", "create"]


def test_prometheus_scrapes_the_worker_metrics_port():
    jobs = {j["job_name"]: j for j in PROM["scrape_configs"]}
    sd = jobs["dialguard-worker"]["dns_sd_configs"][0]
    for name in WORKER_SERVICES:
        env = COMPOSE["services"][name]["environment"]
        port = int(env["DIALGUARD_METRICS_PORT"])
        assert env["DIALGUARD_METRICS_HOST"] == "0.0.0.0"
        assert sd["port"] == port and sd["names"] == ["worker"]
        assert str(port) in COMPOSE["services"][name]["expose"]


def _defines(service: dict) -> dict[str, str]:
    args = service["command"]
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "-A")


def test_every_process_with_metrics_is_scraped_on_its_port():
    jobs = {sd["names"][0]: sd["port"] for j in PROM["scrape_configs"]
            for sd in j["dns_sd_configs"]}
    ports = {"api": "DIALGUARD_API_METRICS_PORT", "hep-collector": "DIALGUARD_INGEST_METRICS_PORT",
             "switch-adapter": "DIALGUARD_ADAPTER_METRICS_PORT",
             **{w: "DIALGUARD_METRICS_PORT" for w in WORKER_SERVICES}}
    for name, var in ports.items():
        service = COMPOSE["services"][name]
        port = int(service["environment"][var])
        job = "worker" if name in WORKER_SERVICES else name  # the workers' shared DNS alias
        assert jobs[job] == port, name
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
