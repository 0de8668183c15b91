"""What real SIP senders put on the wire -> what a strict RFC 3261 parser reads.

Captures and HEP agents carry SIP that works on the network but is not strictly formed, and
dead-lettering a whole call for a cosmetic fault loses it. So before parsing, the header part
(never the body, whose length Content-Length counts) is repaired:

* bare LF line ends (hepgen-style agents, some SBCs) become CRLF, and folded header lines
  (a line starting with a space or tab continues the one before) are unfolded;
* bytes that are not UTF-8 in a header, a display name or a tag are decoded with the
  replacement character: the call is kept, the odd bytes show as U+FFFD;
* an IPv6 host written without brackets in a SIP URI (``sip:+861380@2001:db8::1``) gets them
  (``sip:+861380@[2001:db8::1]``), as RFC 3261 25.1 writes it.

Pure functions, used by :func:`services.ingest.sip_dialogs.parse_sip` for every source.
"""

from __future__ import annotations

import ipaddress
import re

CRLF = b"\r\n"
#: A SIP/SIPS URI's host part that holds only IPv6 characters (checked with ipaddress).
_URI_HOST = re.compile(r"(?P<head>\bsips?:(?:[^@\s<>;,\"]*@)?)(?P<host>[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:"
                       r"[0-9A-Fa-f:.]*)(?=[;?>,\s\"]|$)")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(r"\r?\n")


def _bracket(match: re.Match[str]) -> str:
    host = match.group("host")
    try:
        ipaddress.IPv6Address(host)
        return f"{match.group('head')}[{host}]"
    except ValueError:
        pass
    address, _, port = host.rpartition(":")
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return match.group(0)
    return f"{match.group('head')}[{address}]:{port}" if port.isdigit() else match.group(0)


def bracket_ipv6_hosts(text: str) -> str:
    """SIP URIs with a bare IPv6 host get brackets; anything else is left as it is. A trailing
    ``:digits`` that makes the whole no IPv6 address is read as the port."""
    return _URI_HOST.sub(_bracket, text)


def tolerant_sip(payload: bytes) -> bytes:
    """The message with its header part repaired (see the module docstring); the body is
    returned byte for byte. A message that is already well formed comes back equal."""
    end = _HEADER_END.search(payload)
    head, body = (payload, b"") if end is None else (payload[:end.start()],
                                                     payload[end.end():])
    text = head.decode("utf-8", errors="replace")
    lines: list[str] = []
    for line in _LINE_END.split(text):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] = f"{lines[-1].rstrip()} {line.strip()}"
        else:
            lines.append(line)
    fixed = bracket_ipv6_hosts("\r\n".join(lines)).encode("utf-8")
    return fixed + CRLF + CRLF + body
