"""The tokens file shared by the API and ``dialguard token --local``: one writer at a time
across processes, atomic replaces, mode 0600 whatever was there before."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson

from services.api.auth import TokenStore
from services.settings import REPO_ROOT

PROCESSES = 4
TOKENS_EACH = 30

#: One writer process: waits for the start signal, then creates its tokens and revokes every
#: other one right after creating it, through its own TokenStore (as the API and the CLI do).
WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from services.api.auth import TokenStore
    path, tag, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    while not go.exists():
        time.sleep(0.001)
    store = TokenStore(path)
    for i in range(count):
        store.create(f"{tag}-{i}", "viewer")
        if i % 2:
            assert store.revoke(f"{tag}-{i}")
""")


def names_in(path: Path) -> list[str]:
    return sorted(t["name"] for t in orjson.loads(path.read_bytes())["tokens"])


def test_concurrent_creates_and_revokes_from_several_processes_lose_nothing(tmp_path):
    path, go = tmp_path / "api" / "tokens.json", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(path), f"p{k}",
                               str(TOKENS_EACH), str(go)], cwd=REPO_ROOT,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
             for k in range(PROCESSES)]
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0] * PROCESSES
    expected = sorted(f"p{k}-{i}" for k in range(PROCESSES) for i in range(TOKENS_EACH)
                      if i % 2 == 0)
    assert names_in(path) == expected  # none lost, none revoked came back
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    leftovers = [p.name for p in path.parent.iterdir()
                 if p.name not in ("tokens.json", ".tokens.json.lock")]
    assert leftovers == []


def test_the_tokens_file_ends_up_0600_whatever_was_there_before(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_bytes(b'{"tokens": []}')
    os.chmod(path, 0o644)
    # A temporary file left behind by a crashed writer of the old naming scheme, world-writable.
    stale = tmp_path / f".tokens.json.{os.getpid()}.tmp"
    stale.write_bytes(b"")
    os.chmod(stale, 0o666)
    TokenStore(path).create("alice", "viewer")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert names_in(path) == ["alice"]


def test_an_existing_world_readable_admin_token_file_is_made_private(tmp_path):
    from services.runner import ensure_admin_token
    from services.settings import Settings

    settings = Settings.from_env(environ={}, home=tmp_path)
    token, path = ensure_admin_token(settings)
    os.chmod(path, 0o644)  # as an older version or a copy may have left it
    assert ensure_admin_token(settings) == (token, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("revoked-or-garbage\n")
    os.chmod(path, 0o644)
    new, _ = ensure_admin_token(settings)  # a new token written over a 0644 file
    assert new != token and stat.S_IMODE(path.stat().st_mode) == 0o600
