"""User text made safe for a log line.

Reasons, names and notes come from whoever holds a token. Written raw, a CR/LF starts a fake
log line ("... 2026-01-01 INFO policy.live by admin ...") and an ESC sequence rewrites what a
terminal shows; so every control character (C0, DEL, C1) and the Unicode line and paragraph
separators are written as escapes, and very long text is cut.
"""

from __future__ import annotations

import unicodedata

#: Longest user text put in one log line (the audit record on Kafka keeps it whole).
MAX_LOGGED_CHARS = 1000
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def loggable(text: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``, ...), cut at ``limit``."""
    s = str(text)
    cut = len(s) > limit
    out = "".join(_escape(ch) for ch in s[:limit])
    return out + f"...(+{len(s) - limit} chars)" if cut else out


__all__ = ["loggable", "MAX_LOGGED_CHARS"]
