"""A small synchronous client of the control API, for the CLI and scripts.

The CLI goes through the API (not straight to Kafka) so every analyst action is authenticated,
validated and audited the same way whether it comes from the console, curl or a terminal.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson

TIMEOUT_S = 30.0


class ApiClientError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ApiClient:
    url: str
    token: str
    timeout_s: float = TIMEOUT_S

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None
                = None, raw: bytes | None = None, content_type: str = "application/json"
                ) -> Any:
        """JSON answer of one call; an error answer raises :class:`ApiClientError`."""
        if not self.token:
            raise ApiClientError(0, "no API token: set DIALGUARD_API_TOKEN or pass --token "
                                    "(create one with 'dialguard token create NAME --role ...')")
        url = self.url.rstrip("/") + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items()
                                                 if v not in (None, "")})
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            **({"Content-Type": content_type} if data is not None else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                message = orjson.loads(payload).get("error", payload.decode(errors="replace"))
            except (orjson.JSONDecodeError, AttributeError):
                message = payload.decode(errors="replace")[:200] or exc.reason
            raise ApiClientError(exc.code, str(message)) from None
        except urllib.error.URLError as exc:
            raise ApiClientError(0, f"cannot reach the control API at {self.url}: "
                                    f"{exc.reason} (is 'dialguard api' running? "
                                    "DIALGUARD_API_URL)") from None
        return orjson.loads(payload) if payload else None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str, **query: Any) -> Any:
        return self.request("DELETE", path, query=query)


def quote(segment: str) -> str:
    """A path segment (numbers may start with '+')."""
    return urllib.parse.quote(segment, safe="")
