"""In-process stand-ins for Kafka outputs (unit tests only; integration tests use a broker)."""

from streams.detector import Origin
from streams.schema import Decision, ScoreRecord


class ListSink:
    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.scores: list[ScoreRecord] = []
        self.dead: list[tuple[bytes, str, str, Origin]] = []

    def decision(self, decision: Decision) -> None:
        self.decisions.append(decision)

    def score(self, record: ScoreRecord) -> None:
        self.scores.append(record)

    def dead_letter(self, raw: bytes, reason: str, detail: str, origin: Origin) -> None:
        self.dead.append((raw, reason, detail, origin))
