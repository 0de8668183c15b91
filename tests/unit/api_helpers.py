"""An in-process control API over in-memory views (no Kafka) for the API unit tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp.test_utils import TestClient, TestServer

from services.api.app import create_app
from services.api.auth import TokenStore, hash_token
from services.api.ops import MemoryWriter, Operations
from services.api.views import Views
from services.settings import Settings
from streams.schema import ScoreRecord

TOKENS = {"vera": ("viewer", "tok-viewer-0123456789"), "ana": ("analyst", "tok-analyst-0123456789"),
          "adam": ("admin", "tok-admin-0123456789")}
ROBOT_FEATURES = {"attempts_1h": 60.0, "attempts_10m": 30.0, "distinct_1h": 55.0,
                  "answered_1h": 6.0, "fail_ratio_1h": 0.9, "answer_ratio_1h": 0.1}


class Api:
    """Views + operations + app, with a MemoryWriter feeding the views directly."""

    def __init__(self, tmp: Path, **overrides: Any) -> None:
        self.settings = Settings.from_env(environ={}, home=tmp, **overrides)
        self.views = Views(1000)
        self.writer = MemoryWriter(self.views)
        self.ops = Operations(self.settings, self.views, self.writer)
        env = ",".join(f"{n}:{r}:{hash_token(t)}" for n, (r, t) in TOKENS.items())
        self.tokens = TokenStore(tmp / "tokens.json", env)

    def app(self):  # type: ignore[no-untyped-def]
        return create_app(self.settings, self.views, self.ops, self.tokens, with_feed=False)

    def run(self, scenario: Callable[[TestClient], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            client = TestClient(TestServer(self.app()))
            await client.start_server()
            try:
                return await scenario(client)
            finally:
                await client.close()
        return asyncio.run(main())


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name][1]}"}


def score(number: str, value: float, ts: float, features: dict[str, float] | None = None
          ) -> ScoreRecord:
    return ScoreRecord(number=number, ts=ts, score=value, anomaly=0.5, prior=value,
                       classifier=None, features=dict(features or ROBOT_FEATURES),
                       action=None, policy="default", policy_version=1)
