"""Bearer tokens and roles of the control API.

Only SHA-256 hashes of tokens are stored (a leaked tokens file does not leak access), and a
presented token is compared with ``hmac.compare_digest`` against every stored hash, so the time
a check takes says nothing about which token came close. Tokens come from a JSON file the API
and ``dialguard token create`` share (mode 0600, re-read when it changes) and, read-only, from
``DIALGUARD_API_TOKENS`` (``name:role:sha256hex,...``) for deployments that keep secrets in the
environment.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson

#: Roles in increasing power: a viewer reads, an analyst changes what scores mean, an admin
#: also manages tokens and the global dry-run switch.
ROLES: tuple[str, ...] = ("viewer", "analyst", "admin")
ROLE_RANK: dict[str, int] = {role: i for i, role in enumerate(ROLES)}
TOKEN_BYTES = 32
TOKENS_FILE_MODE = 0o600
#: Token names end up in audit records and as policy authors: plain ASCII (no look-alike
#: letters from other scripts), starting with a letter or digit, at most 64 characters.
MAX_NAME_LEN = 64
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,%d}$" % (MAX_NAME_LEN - 1))
#: Names the system itself writes as authors and actors: a token of that name could pass for
#: the guard's automatic rollback (which the guard then treats as its own) or a built-in.
RESERVED_NAMES = frozenset({"guard", "builtin", "api", "system", "dialguard"})
#: ASCII look-alikes folded together when names are compared ("adm1n" passes for "admin",
#: "rn" for "m"); a new token may not look like an existing or reserved one.
_CONFUSABLE = (("rn", "m"), ("vv", "w"), ("0", "o"), ("1", "l"), ("i", "l"), ("|", "l"),
               ("5", "s"), ("_", "-"), (".", "-"))


class TokenError(ValueError):
    """A token request that cannot be honoured (the message says why)."""


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    #: "file" tokens can be revoked through the API; "env" tokens only by the operator.
    source: str = "file"

    def allows(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


@dataclass(frozen=True)
class StoredToken:
    name: str
    role: str
    sha256: str
    created_at: float = 0.0
    source: str = "file"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def skeleton(name: str) -> str:
    """What a name looks like: case and ASCII look-alikes folded (see ``_CONFUSABLE``)."""
    out = name.lower()
    for seen, meant in _CONFUSABLE:
        out = out.replace(seen, meant)
    return out


def check_name_role(name: Any, role: Any) -> None:
    if not isinstance(name, str) or not TOKEN_NAME.match(name):
        raise TokenError(f"token name must be 1-{MAX_NAME_LEN} ASCII letters, digits, '-', '_', "
                         f"'.', '@', starting with a letter or digit; got {name!r}")
    if skeleton(name) in {skeleton(r) for r in RESERVED_NAMES}:
        raise TokenError(f"token name {name!r} is reserved (or looks like a reserved name: "
                         f"{', '.join(sorted(RESERVED_NAMES))})")
    if not isinstance(role, str) or role not in ROLE_RANK:
        raise TokenError(f"role must be one of {', '.join(ROLES)}; got {role!r}")


def parse_env_tokens(spec: str) -> list[StoredToken]:
    """``name:role:sha256hex,...`` -> tokens; a malformed entry is an error, not ignored."""
    out: list[StoredToken] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        parts = item.split(":")
        if len(parts) != 3:
            raise TokenError(f"DIALGUARD_API_TOKENS entry {item!r} is not name:role:sha256hex")
        name, role, digest = parts
        check_name_role(name, role)
        digest = digest.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise TokenError(f"DIALGUARD_API_TOKENS entry for {name!r}: hash must be 64 hex "
                             "digits (sha256 of the token)")
        out.append(StoredToken(name, role, digest, source="env"))
    return out


class TokenStore:
    """Tokens of the file (re-read when its mtime changes) plus the environment's."""

    def __init__(self, path: Path, env_spec: str = "") -> None:
        self.path = path
        self.env_tokens = parse_env_tokens(env_spec)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._file_tokens: list[StoredToken] = []

    # -- reading ---------------------------------------------------------------------------
    def _load(self) -> list[StoredToken]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._file_tokens = None, []
            return []
        if mtime != self._mtime:
            data = orjson.loads(self.path.read_bytes())
            self._file_tokens = [StoredToken(**{**t, "source": "file"})
                                 for t in data.get("tokens", [])]
            self._mtime = mtime
        return self._file_tokens

    def tokens(self) -> list[StoredToken]:
        with self._lock:
            return [*self._load(), *self.env_tokens]

    def authenticate(self, presented: str) -> Identity | None:
        """The identity of a token, comparing its hash with every stored one."""
        if not presented:
            return None
        digest = hash_token(presented)
        found: StoredToken | None = None
        for stored in self.tokens():
            # No early exit: every candidate is compared, whatever matched before.
            if hmac.compare_digest(digest, stored.sha256) and found is None:
                found = stored
        return Identity(found.name, found.role, found.source) if found else None

    def listing(self) -> list[dict[str, object]]:
        return [{"name": t.name, "role": t.role, "created_at": t.created_at,
                 "source": t.source} for t in self.tokens()]

    # -- writing (file tokens only) ---------------------------------------------------------
    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Exclusive across processes (the API and ``dialguard token --local`` share the file):
        read, change and replace happen under one ``flock`` of a lock file beside it, so no
        create is lost and no revoked token comes back."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, TOKENS_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                self._mtime = None  # another process may have written: read it afresh
                yield
        finally:
            os.close(fd)  # closing releases the flock

    def create(self, name: str, role: str, replace: bool = False) -> str:
        """A new token for ``name``; its plaintext is returned once and never stored."""
        check_name_role(name, role)
        if any(t.name == name for t in self.env_tokens):
            raise TokenError(f"token {name!r} is configured in the environment (read-only)")
        plaintext = new_token()
        with self._file_lock():
            loaded = self._load()
            current = [t for t in loaded if t.name != name]
            if not replace and len(current) != len(loaded):
                raise TokenError(f"a token named {name!r} exists; revoke it first")
            alike = next((t.name for t in [*current, *self.env_tokens]
                          if skeleton(t.name) == skeleton(name)), None)
            if alike is not None:
                raise TokenError(f"token name {name!r} looks like the existing {alike!r}; "
                                 "choose a name that cannot be mistaken for it")
            current.append(StoredToken(name, role, hash_token(plaintext), time.time()))
            self._write(current)
        return plaintext

    def revoke(self, name: str) -> bool:
        if any(t.name == name for t in self.env_tokens):
            raise TokenError(f"token {name!r} is configured in the environment (read-only)")
        with self._file_lock():
            current = self._load()
            kept = [t for t in current if t.name != name]
            if len(kept) == len(current):
                return False
            self._write(kept)
        return True

    def _write(self, tokens: list[StoredToken]) -> None:
        """Atomic replace (under :meth:`_file_lock`), 0600 so the hashes are never readable by
        others."""
        payload = orjson.dumps({"tokens": [
            {k: v for k, v in asdict(t).items() if k != "source"} for t in tokens]},
            option=orjson.OPT_INDENT_2)
        write_private(self.path, payload)
        self._mtime = None  # re-read on next access


def write_private(path: Path, payload: bytes) -> None:
    """Write ``path`` atomically with mode 0600 whatever was there before: a fresh temporary
    file in the same folder (``mkstemp``: 0600, a new name, so a stale temporary file of
    another mode is never reused), fsync, ``os.replace``, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, TOKENS_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

