"""Starts a real worker process against the test broker and reads what it publishes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from confluent_kafka import Consumer, Producer

from services.broker import free_ports
from services.settings import REPO_ROOT, Settings
from streams.schema import Decision, ScoreRecord, SignalingEvent
from streams.sink import producer_config
from streams.topics import DECISIONS, SCORES, SIGNALING_DLQ, SIGNALING_EVENTS

READY_MARK = "Ready"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class WorkerProcess:
    settings: Settings
    home: Path
    app_id: str
    log_path: Path = field(init=False)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.log_path = self.home / "worker.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
        env.update({
            "DIALGUARD_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
            "DIALGUARD_TOPIC_PARTITIONS": str(self.settings.topic_partitions),
            "DIALGUARD_HOME": str(self.home),
            "DIALGUARD_APP_ID": self.app_id,
            "DIALGUARD_WORKER_WEB_PORT": str(free_port()),
            "DIALGUARD_METRICS_PORT": str(free_port()),
            "DIALGUARD_FLUSH_INTERVAL_S": "0.2",
            "DIALGUARD_CHECKPOINT_INTERVAL_S": "2",
            "PYTHONPATH": str(REPO_ROOT),
        })
        return env

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "worker"],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                     cwd=REPO_ROOT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.tail()}")
            text = self.log_path.read_text(errors="replace")[offset:]
            if READY_MARK in text and "metrics on" in text:
                return
            time.sleep(0.3)
        raise RuntimeError(f"worker not ready in {START_TIMEOUT_S}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def produce_events(settings: Settings, events: Iterable[SignalingEvent]) -> int:
    producer = Producer(producer_config(settings))
    n = 0
    for ev in events:
        while True:
            try:
                producer.produce(SIGNALING_EVENTS.name, key=ev.key, value=ev.encode())
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return n


def produce_raw(settings: Settings, records: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = Producer(producer_config(settings))
    for key, value in records:
        producer.produce(SIGNALING_EVENTS.name, key=key, value=value)
    assert producer.flush(30) == 0


class TopicReader:
    """Reads a topic from the beginning and keeps everything it saw."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = Consumer({**settings.kafka_client_config(),
                                  "group.id": f"test-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "earliest",
                                  "enable.auto.commit": False})
        self.consumer.subscribe([topic])
        self.messages: list = []

    def poll_until(self, predicate, timeout: float, quiet_s: float = 0.0) -> bool:
        """Read until predicate(messages) holds (and nothing new came for quiet_s)."""
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            msgs = self.consumer.consume(1000, timeout=0.5)
            fresh = [m for m in msgs if not m.error()]
            if fresh:
                self.messages.extend(fresh)
                last_new = time.monotonic()
            if predicate(self.messages) and time.monotonic() - last_new >= quiet_s:
                return True
        return predicate(self.messages)

    def close(self) -> None:
        self.consumer.close()


def decisions_of(messages) -> list[Decision]:
    return [Decision.decode(m.value()) for m in messages if m.value() is not None]


def scores_of(messages) -> list[ScoreRecord]:
    return [ScoreRecord.decode(m.value()) for m in messages if m.value() is not None]


__all__ = ["WorkerProcess", "TopicReader", "produce_events", "produce_raw", "decisions_of",
           "scores_of", "free_port", "DECISIONS", "SCORES", "SIGNALING_DLQ"]
