"""User text reaches the API's log escaped: no forged lines, no terminal escapes."""

import logging

from services.api.logsafe import MAX_LOGGED_CHARS, loggable
from tests.unit.api_helpers import Api, auth

EVIL = "fine\r\n2026-01-01 INFO policy.live by admin (admin) on policy/default: ok\x1b[2J\u2028"


def test_loggable_escapes_control_characters_and_cuts_long_text():
    assert loggable("a\nb\rc\x1b[31m\x7f\x85\u2028\\") == \
        "a\\nb\\rc\\x1b[31m\\x7f\\x85\\u2028\\\\"
    assert loggable("caf\u00e9 \u4e2d") == "caf\u00e9 \u4e2d"  # printable text is left alone
    long = loggable("x" * (MAX_LOGGED_CHARS + 5))
    assert long.endswith("...(+5 chars)") and len(long) < MAX_LOGGED_CHARS + 20


def test_reasons_are_logged_escaped(tmp_path, caplog):
    async def scenario(c):
        r = await c.post("/api/v1/allowlist", headers=auth("ana"),
                         json={"number": "8613800138000", "reason": EVIL})
        assert r.status == 201
    with caplog.at_level(logging.INFO, logger="services.api"):
        Api(tmp_path).run(scenario)
    lines = [rec.getMessage() for rec in caplog.records if "allowlist.add" in rec.getMessage()]
    assert len(lines) == 1
    assert not any(ch in lines[0] for ch in "\r\n\x1b\u2028")
    assert "fine\\r\\n2026-01-01 INFO" in lines[0] and "\\x1b[2J" in lines[0]
