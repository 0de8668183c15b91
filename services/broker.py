"""The embedded Apache Kafka 4.x broker: single node, KRaft (broker + controller), loopback.

No Docker on the project's machines, so the broker runs from Maven Central jars with the
machine's Java 17. ``services/broker/pom.xml`` resolves ``org.apache.kafka:kafka_2.13`` and its
runtime dependencies (Log4j 2 binding included) into ``<home>/kafka/libs``. Storage is formatted
on the first start only, so data survives stop/start; ``wipe`` deletes it. Ports come from the
settings, so a test session can run its own broker beside a running ``make run``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from services.settings import REPO_ROOT, Settings

POM = REPO_ROOT / "services" / "kafka-jars" / "pom.xml"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
NODE_ID = 1
READY_POLL_S = 0.5
LOG_TAIL_LINES = 30
META_FILE = "meta.properties"

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted or started; the message says what to check."""


def server_properties(broker_port: int, controller_port: int, data_dir: Path) -> str:
    """A single-node KRaft configuration on loopback."""
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={NODE_ID}",
        f"controller.quorum.voters={NODE_ID}@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={data_dir}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.cleaner.enable=true",
        "",
    ])


class EmbeddedBroker:
    def __init__(self, settings: Settings, data_dir: Path | None = None,
                 libs_dir: Path | None = None) -> None:
        self.settings = settings
        self.libs = libs_dir or settings.kafka_dir / "libs"
        self.data = data_dir or settings.kafka_dir / "data"
        self.run_dir = self.data.parent / f"run-{settings.broker_port}"
        self.config = self.run_dir / "server.properties"
        self.log4j = self.run_dir / "log4j2.properties"
        self.log = self.run_dir / "broker.log"
        self.pid_file = self.run_dir / "broker.pid"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.settings.broker_port}"

    # -- jars -----------------------------------------------------------------------------
    def has_jars(self) -> bool:
        return self.libs.is_dir() and any(self.libs.glob("kafka_2.13-*.jar"))

    def fetch(self) -> None:
        """Resolve Kafka's jars from Maven Central (once)."""
        if self.has_jars():
            print(f"Kafka jars present in {self.libs}")
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven (mvn) is needed to fetch Kafka's jars; install it first")
        print(f"fetching Apache Kafka jars from Maven Central into {self.libs} ...", flush=True)
        self.libs.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={self.libs}"],
            capture_output=True, text=True, check=False)
        if result.returncode != 0 or not self.has_jars():
            raise BrokerError(f"mvn could not resolve Kafka's jars:\n{result.stdout}\n"
                              f"{result.stderr}")
        print(f"fetched {len(list(self.libs.glob('*.jar')))} jars")

    def _java(self, *args: str, heap: str | None = None) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("Java 17 (java on PATH) is needed to run the broker")
        cmd = [java]
        if heap:
            cmd.append(f"-Xmx{heap}")
        return cmd + [f"-Dlog4j2.configurationFile={self.log4j}", "-cp",
                      f"{self.libs}/*", *args]

    # -- lifecycle ------------------------------------------------------------------------
    def _write_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(server_properties(self.settings.broker_port,
                                                 self.settings.controller_port, self.data))
        self.log4j.write_text(_LOG4J2)

    def formatted(self) -> bool:
        return (self.data / META_FILE).exists()

    def _format(self) -> None:
        uuid = subprocess.run(self._java(STORAGE_TOOL, "random-uuid"), capture_output=True,
                              text=True, check=True).stdout.strip().splitlines()[-1]
        result = subprocess.run(self._java(STORAGE_TOOL, "format", "-t", uuid, "-c",
                                           str(self.config)),
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerError(f"formatting {self.data} failed:\n{result.stdout}{result.stderr}")
        print(f"formatted new KRaft storage in {self.data} (cluster {uuid})")

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def answers(self, timeout: float = 2.0) -> bool:
        from confluent_kafka.admin import AdminClient
        from confluent_kafka import KafkaException

        try:
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            admin.list_topics(timeout=timeout)
            return True
        except KafkaException:
            return False

    def start(self, timeout: float = 60.0) -> None:
        if self.pid() is not None and self.answers():
            print(f"broker already running at {self.bootstrap} (pid {self.pid()})")
            return
        self.fetch()
        self._write_config()
        if not self.formatted():
            self._format()
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                self._java(MAIN_CLASS, str(self.config), heap=self.settings.broker_heap),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        print(f"starting Kafka broker (pid {proc.pid}) at {self.bootstrap}, log {self.log}",
              flush=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(f"broker exited with {proc.returncode}:\n{self._tail()}")
            if self.answers(timeout=1.0):
                print(f"broker ready at {self.bootstrap}")
                return
            time.sleep(READY_POLL_S)
        self.stop()
        raise BrokerError(f"broker did not answer within {timeout:.0f}s:\n{self._tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)  # Kafka shuts down cleanly on SIGTERM
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                _reap(pid)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
            print(f"broker (pid {pid}) did not stop within {timeout:.0f}s; killed")
        self.pid_file.unlink(missing_ok=True)
        print(f"broker at {self.bootstrap} stopped")

    def wipe(self) -> None:
        self.stop()
        if self.data.exists():
            shutil.rmtree(self.data)
            print(f"deleted broker data {self.data}")

    def status(self) -> dict[str, Any]:
        pid = self.pid()
        return {"running": pid is not None and self.answers(), "pid": pid,
                "bootstrap": self.bootstrap, "data": str(self.data), "log": str(self.log),
                "jars": str(self.libs) if self.has_jars() else "not fetched"}

    def _tail(self) -> str:
        if not self.log.exists():
            return "(no broker log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])


def _reap(pid: int) -> None:
    """Collect our own child so it does not linger as a zombie that still 'exists'."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    if done == pid:
        raise ProcessLookupError(pid)
