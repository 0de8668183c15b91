"""One typed settings object, read from ``DIALGUARD_*`` environment variables.

Every tunable of the running system that is not part of the analyst-owned policy lives here, so
an operator finds them in one place (README, "Configuration") and a test can build a variant with
``dataclasses.replace``. Policy thresholds are *not* settings: analysts change them live through
``control.policy`` (see ``streams.policy``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "DIALGUARD_"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    return REPO_ROOT / ".dialguard"


@dataclass(frozen=True)
class Settings:
    """Runtime configuration. Field ``foo_bar`` is read from ``DIALGUARD_FOO_BAR``."""

    # --- Kafka connection ------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    #: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (production clusters).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""
    #: Partitions of keyed topics; one worker owns whole partitions, so this caps worker count.
    topic_partitions: int = 8
    topic_replication: int = 1

    # --- Embedded broker (make run / tests) ------------------------------------------------
    home: Path = field(default_factory=_default_home)
    broker_port: int = 9092
    controller_port: int = 9093
    broker_heap: str = "768m"

    # --- Numbers ---------------------------------------------------------------------------
    #: Country code prepended to national-format numbers ("0" + national number).
    country_code: str = "86"
    national_prefix: str = "0"
    international_prefix: str = "00"

    # --- Event validation ------------------------------------------------------------------
    #: Events stamped further than this in the future (wall clock) are rejected to the DLQ.
    max_future_skew_s: float = 300.0
    #: Durations beyond a day are not calls but broken probes.
    max_duration_s: float = 86_400.0

    # --- Worker ----------------------------------------------------------------------------
    app_id: str = "dialguard"
    worker_web_port: int = 6066
    metrics_port: int = 9310
    #: Loopback by default; containers set 0.0.0.0 so Prometheus can scrape them.
    metrics_host: str = "127.0.0.1"
    #: Faust table store; RocksDB keeps state on disk, the changelog topic makes it durable.
    store: str = "rocksdb://"
    #: Events are folded into per-number state in memory and written to the table (one
    #: changelog record per touched number) at most every ``flush_events`` events or
    #: ``flush_interval_s`` seconds, whichever comes first.
    flush_events: int = 2000
    flush_interval_s: float = 0.5
    #: Late events within this many seconds of a number's newest event are still counted.
    late_grace_s: float = 120.0
    #: Answered calls shorter than this are "short" (robots get hung up on).
    short_call_s: float = 10.0
    #: A callee within this many numbers of the previous one is a sequential-dialing step.
    sequential_max_step: int = 3
    #: Distinct callees remembered per caller (bounds memory of the distinct count).
    distinct_callees_cap: int = 512
    #: A number is only scored once it made this many attempts in the last hour...
    score_min_attempts: int = 8
    #: ...and again after every this many new attempts.
    score_every_attempts: int = 5
    #: Weight of the unsupervised anomaly score in the final score.
    anomaly_weight: float = 0.15
    #: Labels of each class the supervised model must have seen before it is trusted at all.
    classifier_min_labels: int = 20
    #: Model checkpoint interval (wall seconds).
    checkpoint_interval_s: float = 30.0
    #: Name of the policy the worker applies (a key of ``control.policy``).
    policy_name: str = "default"
    #: Per-prefix pool aggregates use this many leading digits of the caller.
    pool_prefix_len: int = 7

    # --- Simulator -------------------------------------------------------------------------
    simulate_speed: float = 20.0
    simulate_history_h: float = 6.0

    # --- Control API and analyst console (services/api) ------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_metrics_port: int = 9311
    #: Where the CLI finds the control API, and the token it presents.
    api_url: str = "http://127.0.0.1:8080"
    api_token: str = ""

    # --- Ingest: HEP/SIP, ISUP, CDR (services/ingest) --------------------------------------
    hep_host: str = "127.0.0.1"
    hep_port: int = 9060
    ingest_metrics_port: int = 9313

    # --- Switch adapter (services/switch_adapter) ------------------------------------------
    kamailio_rpc_url: str = "http://127.0.0.1:5071/RPC"
    adapter_metrics_port: int = 9312
    #: What a blocked caller is told to do about it (SIP 603 Reason text, ISUP cause 21 notes).
    redress_contact: str = "appeal at https://dialguard.example/appeal or call 12321"

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def worker_dir(self) -> Path:
        """Per host, so scaled-out workers sharing a volume never share a RocksDB folder."""
        return self.data_dir / f"worker-{socket.gethostname()}"

    @property
    def checkpoint_path(self) -> Path:
        return self.worker_dir / f"{self.app_id}-model.pkl"

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) connection settings, security included."""
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap}
        if self.kafka_security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = self.kafka_ssl_cafile
        return conf

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from the environment; unknown ``DIALGUARD_*`` names are an error."""
        env = os.environ if environ is None else environ
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name not in known:
                raise ValueError(f"unknown setting {key}; see README 'Configuration'")
            values[name] = _coerce(known[name], raw, key)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def env_names(cls) -> list[str]:
        return [ENV_PREFIX + f.name.upper() for f in fields(cls)]


def _coerce(f: dataclasses.Field, raw: str, key: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if kind == "Path":
            return Path(raw).expanduser()
        return raw
    except ValueError as exc:
        raise ValueError(f"{key}={raw!r} is not a valid {kind}") from exc
