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
#: The worker's stages (``DIALGUARD_WORKER_STAGES``), in data-flow order.
STAGE_NUMBER, STAGE_SOURCE = "number", "source"
WORKER_STAGES = (STAGE_NUMBER, STAGE_SOURCE)
#: Upper bound of DIALGUARD_WORKER_FETCH_MAX_WAIT_S (Kafka's own default is 0.5 s).
MAX_FETCH_WAIT_MS = 10_000
#: Upper bound of DIALGUARD_WORKER_FETCH_MIN_BYTES: more would hold every fetch for its whole
#: wait on any plausible traffic.
MAX_FETCH_MIN_BYTES = 1 << 20
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
    #: Partitions of keyed topics; one worker owns whole partitions, so this caps worker count
    #: (and thus a deployment's events/s: see the sizing table in docs/ARCHITECTURE.md).
    topic_partitions: int = 32
    topic_replication: int = 1

    # --- Embedded broker (make run / tests) ------------------------------------------------
    home: Path = field(default_factory=_default_home)
    broker_port: int = 9092
    controller_port: int = 9093
    #: Java heap of each broker process (a cluster's nodes each get this much).
    broker_heap: str = "768m"
    #: Nodes of the local cluster ``dialguard broker`` manages: 1 is the single embedded
    #: broker; more start a KRaft cluster on ports NODE_PORT_STRIDE (10) apart, so a test can
    #: kill a broker (topics then want DIALGUARD_TOPIC_REPLICATION up to 3).
    broker_nodes: int = 1

    # --- Numbers ---------------------------------------------------------------------------
    #: Country code prepended to national-format numbers ("0" + national number).
    country_code: str = "86"
    national_prefix: str = "0"
    international_prefix: str = "00"

    # --- Ingest ----------------------------------------------------------------------------
    #: Events per batch record written by dialguard's ingest edges and simulator (1: one
    #: event per record); a batch waits at most ``ingest_batch_linger_s`` for more events.
    ingest_batch_events: int = 500
    ingest_batch_linger_s: float = 0.02

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
    #: Events are folded into per-number state in memory; every ``flush_events`` events or
    #: ``flush_interval_s`` seconds the worker learns new labels, sends the events re-keyed
    #: for the source stage and publishes its counters.
    flush_events: int = 2000
    flush_interval_s: float = 0.5
    #: Every ``commit_interval_s`` seconds (or ``commit_max_states`` touched states) the
    #: micro-batch is made durable in order: outputs delivered, each touched state written
    #: once (RocksDB + changelog), then the records released for Faust's offset commit
    #: (streams/microbatch.py). Longer: fewer state writes, more to re-read after a crash.
    commit_interval_s: float = 2.0
    commit_max_states: int = 50_000
    #: A worker that stops heartbeating for this long loses its partitions to the others
    #: (Faust's default, 60 s, left a dead worker's partitions undecided for a minute);
    #: heartbeats go out every ``worker_heartbeat_s`` (a third of it or less).
    worker_session_timeout_s: float = 10.0
    worker_heartbeat_s: float = 3.0
    #: Longest a worker's fetch waits at the broker for records to arrive. Faust builds its
    #: consumer with 1.5 s and no setting: aiokafka keeps one fetch per broker in flight, and
    #: a fetch sent while the busy partitions still had records buffered names only the idle
    #: ones, so the busy ones waited for it to time out: live records reached the agent
    #: 1.3-2 s old at 3k events/s, which a plain consumer saw 40 ms after production. Shorter
    #: costs one empty fetch per this interval on an idle worker.
    worker_fetch_max_wait_s: float = 0.025
    #: A fetch returns once this many bytes are there (or after ``worker_fetch_max_wait_s``).
    #: Kafka's default, 1 byte, answers each fetch with the first record in: on live traffic
    #: (a batch record per partition every 20 ms) the worker then sent fetches back to back,
    #: each parsed in Python and handed over to the agent's loop: a number-stage worker spent
    #: 0.34 CPU at 2k events/s, 0.15-0.2 with 16 KiB (and 0.6-0.68 -> 0.5-0.57 at 17.5k, the
    #: broker ~10 % less), decisions ~10 ms later at low rates (``make bench``'s live phase).
    worker_fetch_min_bytes: int = 16_384
    #: Which stages a worker runs: ``number`` (per-number state, reads signaling.events),
    #: ``source`` (per-trunk and per-range state, reads signaling.sources), or both (the
    #: default). The stages share only topics, so a deployment may run them in separate
    #: processes of one app id, each stage then getting a core of its own.
    worker_stages: str = "number,source"
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

    # --- Sources: per-trunk and per-range view (streams/source_*.py) ----------------------
    #: Caller-number ranges are the number minus its last this many digits; a comma separated
    #: list tracks several range sizes at once (e.g. "3,4"), each one more record per event.
    source_range_strip: str = "4"
    #: A caller equal to the callee but for its last this many digits is a "neighbour" caller
    #: (neighbour spoofing copies the callee's number block).
    source_neighbour_tail: int = 4
    #: An answered call lasting this long is a real conversation: people do not talk this long
    #: to robots, so a source where they do is never blocked whole, and a number whose owner
    #: talks on one trunk is not blocked for robot calls arriving on another (spoofed).
    source_conversation_s: float = 60.0
    #: A source is scored once it made this many attempts in the last hour, and again after
    #: every ``source_score_every`` new attempts.
    source_score_min_attempts: int = 50
    source_score_every: int = 25
    #: Distinct callers and callees remembered per source (bounds memory of distinct counts).
    source_distinct_cap: int = 512
    #: A caller number that has not called for this long is "new to the network" again.
    caller_new_after_s: float = 86_400.0
    #: Trunks remembered per caller number (a number on several trunks is probably spoofed).
    caller_trunks_cap: int = 4

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
    #: A file holding that token (first line), so it appears neither in ``ps`` (like
    #: ``--token``) nor in the environment of child processes; read when ``api_token`` is empty.
    api_token_file: str = ""
    #: Hashed API tokens (JSON, mode 0600); empty: ``<home>/api/tokens.json``.
    api_tokens_file: str = ""
    #: Read-only extra tokens, ``name:role:sha256hex,...`` (e.g. from a secret store).
    api_tokens: str = ""
    #: Largest request body accepted; the bulk feedback route has its own, larger, limit.
    api_max_body_bytes: int = 256 * 1024
    api_max_bulk_bytes: int = 16 * 1024 * 1024
    #: How long one write may take to reach Kafka, waiting for room in the producer's local
    #: queue included, before the API answers with what was (and was not) published.
    api_write_timeout_s: float = 30.0
    #: What-if replays the latest score of every number published within this many seconds.
    api_whatif_window_s: float = 3600.0
    #: How often the guard compares live versions' false-positive rate with their target.
    api_guard_interval_s: float = 30.0
    #: How long an upheld appeal allowlists the number unless the analyst says otherwise.
    api_appeal_allow_s: int = 30 * 86_400
    #: Numbers whose latest score / decisions / labels the API keeps in memory (oldest go).
    api_view_max_numbers: int = 200_000
    #: Scoped (range and trunk) targets the analyst may allowlist, block and look up:
    #: shortest range an analyst may block (a 2-digit range would cut off a country) and
    #: shortest range that may be allowlisted (allowlisting "8" would shield most robots, and
    #: a country code plus one digit, "861", every mobile number of a country).
    api_min_block_prefix: int = 5
    api_min_allow_prefix: int = 5

    # --- Ingest: HEP/SIP, ISUP, CDR (services/ingest) --------------------------------------
    hep_host: str = "127.0.0.1"
    hep_port: int = 9060
    #: HEP over TCP: connections held open at once. Past it a new connection is accepted and
    #: closed at once (counted), so idle or abusive peers cannot take every file descriptor
    #: (the Kafka producer's sockets and the metrics endpoint need some too). Clamped below the
    #: process's open-file limit.
    hep_tcp_max_connections: int = 1024
    #: A HEP TCP connection that sends nothing for this long is closed (capture agents send
    #: a packet per SIP message; a silent connection is a dead or idle peer holding a slot).
    #: 0: never.
    hep_tcp_idle_timeout_s: float = 300.0
    #: Longest HEP packet framed from a TCP stream; a length field past it is a bad frame and
    #: the stream resyncs at the next ``HEP3`` (services/ingest/hep.py DEFAULT_MAX_FRAME).
    hep_tcp_max_frame_bytes: int = 16 * 1024
    ingest_metrics_port: int = 9313
    #: ISUP calls in progress remembered at once by one ingest run (per (OPC, DPC, CIC)
    #: circuit); past it the least recently active call is forgotten and counted.
    isup_max_calls: int = 100_000
    #: An ISUP call neither answered nor released this long (event time) after its IAM is
    #: forgotten (its REL was not captured); answered calls get ``max_duration_s``.
    isup_setup_timeout_s: float = 300.0
    #: SIP dialogs (HEP collector, SIP pcap replay) followed at once, by Call-ID; past it the
    #: least recently active one is forgotten without an event and counted.
    sip_max_dialogs: int = 100_000
    #: An INVITE neither answered nor failed this long (event time) is forgotten without an
    #: event (its final response was not captured); answered calls get ``max_duration_s``.
    sip_setup_timeout_s: float = 300.0
    #: ``switch`` stamped on SIP events; empty = ``hep-<capture agent id>`` for HEP input and
    #: the capture file's name for pcap replay.
    sip_switch: str = ""

    # --- Switch adapter (services/switch_adapter) ------------------------------------------
    kamailio_rpc_url: str = "http://127.0.0.1:5071/RPC"
    adapter_metrics_port: int = 9312
    #: What a blocked caller is told to do about it (SIP 603 Reason text, ISUP cause 21 notes).
    redress_contact: str = "appeal at https://dialguard.example/appeal or call 12321"
    #: Name of the switch this adapter drives: its consumer group is ``dialguard-switch-<name>``
    #: and every ack says which switch applied (or failed to apply) a decision.
    switch_name: str = "kamailio-1"
    #: Kamailio htables (services/kamailio/dialguard.cfg) of blocked and rate-limited callers.
    adapter_htable_blocked: str = "blocked"
    adapter_htable_ratelimit: str = "ratelimit"
    #: INVITEs per rate window (RATE_WINDOW_S in dialguard.cfg, 60 s) a rate-limited caller keeps.
    adapter_rate_limit_calls: int = 6
    #: One JSON-RPC call to Kamailio may take this long.
    adapter_rpc_timeout_s: float = 2.0
    #: Retries of one decision: backoff doubles from ``initial`` up to ``max`` seconds, for
    #: ``attempts`` tries; then the decision is acked "failed" and kept pending, retried every
    #: ``pending_retry_s`` until Kamailio takes it (or a newer decision replaces it).
    adapter_retry_attempts: int = 5
    adapter_retry_initial_s: float = 0.2
    adapter_retry_max_s: float = 5.0
    adapter_pending_retry_s: float = 10.0
    #: How often the adapter asks its switch how long it has been up (Kamailio ``core.uptime``):
    #: a switch restarted since the last look has empty htables, and the adapter re-applies
    #: the decisions in force (counted in ``dialguard_switch_resyncs_total``). 0: never look.
    adapter_switch_check_s: float = 10.0
    #: Scoped decisions (issue 10, services/switch_entries.py): htables of caller ranges and
    #: trunks, INVITEs per rate window a rate-limited range or trunk keeps (a trunk carries many
    #: callers, so more than one number), and the shortest range the adapter applies (shorter
    #: is refused with an ack: it would be a number block, not a robot's pool).
    adapter_htable_prefix: str = "prefix"
    adapter_htable_trunk: str = "trunk"
    adapter_prefix_rate_limit_calls: int = 30
    adapter_trunk_rate_limit_calls: int = 60
    adapter_prefix_min_digits: int = 5
    #: Peers (comma separated IP addresses or networks) trusted to name the trunk group of
    #: their calls with an RFC 4904 ``tgrp`` in the Contact; from any other source the trunk
    #: is the source address. Read by the SIP ingest and passed to Kamailio (TGRP_PEERS), so
    #: both name a call's trunk alike. Empty: nobody's tgrp is believed.
    sip_tgrp_peers: str = ""
    #: Kamailio for ``make run`` / tests (services/kamailio_process.py): SIP port and next hop.
    kamailio_sip_port: int = 5060
    kamailio_dest_uri: str = "sip:127.0.0.1:5080"

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
    def api_tokens_path(self) -> Path:
        return Path(self.api_tokens_file).expanduser() if self.api_tokens_file \
            else self.home / "api" / "tokens.json"

    @property
    def worker_dir(self) -> Path:
        """Per host name, so two workers on one volume never share a RocksDB folder; a worker
        that must find its state after being recreated keeps its host name (docker-compose
        gives each worker service a fixed ``hostname`` and a volume of its own)."""
        return self.data_dir / f"worker-{socket.gethostname()}"

    @property
    def checkpoint_path(self) -> Path:
        return self.worker_dir / f"{self.app_id}-model.pkl"

    @property
    def source_checkpoint_path(self) -> Path:
        """The source stage's models (per trunk and range), checkpointed beside the number's."""
        return self.worker_dir / f"{self.app_id}-source-model.pkl"

    @property
    def range_strip_digits(self) -> tuple[int, ...]:
        """``source_range_strip`` as integers, validated (1 to 8 digits each)."""
        try:
            values = tuple(sorted({int(v) for v in self.source_range_strip.split(",")
                                   if v.strip()}))
        except ValueError:
            raise ValueError(f"DIALGUARD_SOURCE_RANGE_STRIP={self.source_range_strip!r} must "
                             "be comma separated integers") from None
        if not values or any(not 1 <= v <= 8 for v in values):
            raise ValueError(f"DIALGUARD_SOURCE_RANGE_STRIP={self.source_range_strip!r}: each "
                             "value must be 1 to 8 digits")
        return values

    @property
    def stages(self) -> frozenset[str]:
        """``worker_stages`` validated: a non-empty subset of ``WORKER_STAGES``."""
        chosen = frozenset(v.strip() for v in self.worker_stages.split(",") if v.strip())
        if not chosen or not chosen <= set(WORKER_STAGES):
            raise ValueError(f"DIALGUARD_WORKER_STAGES={self.worker_stages!r}: name one or both "
                             f"of {', '.join(WORKER_STAGES)} (comma separated)")
        return chosen

    @property
    def fetch_max_wait_ms(self) -> int:
        """``worker_fetch_max_wait_s`` validated, in the milliseconds Kafka's fetch takes."""
        ms = round(self.worker_fetch_max_wait_s * 1000)
        if not 1 <= ms <= MAX_FETCH_WAIT_MS:
            raise ValueError(f"DIALGUARD_WORKER_FETCH_MAX_WAIT_S={self.worker_fetch_max_wait_s!r}"
                             f" must be between 0.001 and {MAX_FETCH_WAIT_MS // 1000} seconds")
        return ms

    @property
    def fetch_min_bytes(self) -> int:
        """``worker_fetch_min_bytes`` validated."""
        if not 1 <= self.worker_fetch_min_bytes <= MAX_FETCH_MIN_BYTES:
            raise ValueError(f"DIALGUARD_WORKER_FETCH_MIN_BYTES={self.worker_fetch_min_bytes!r} "
                             f"must be between 1 and {MAX_FETCH_MIN_BYTES}")
        return self.worker_fetch_min_bytes

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
