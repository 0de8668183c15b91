import os
import stat

import pytest

from services.api.auth import (Identity, TokenError, TokenStore, hash_token, parse_env_tokens)


def test_file_tokens_are_stored_hashed_with_mode_0600(tmp_path):
    store = TokenStore(tmp_path / "api" / "tokens.json")
    token = store.create("alice", "analyst")
    raw = (tmp_path / "api" / "tokens.json").read_text()
    assert token not in raw and hash_token(token) in raw
    assert stat.S_IMODE(os.stat(tmp_path / "api" / "tokens.json").st_mode) == 0o600
    assert store.authenticate(token) == Identity("alice", "analyst", "file")
    assert store.authenticate(token + "x") is None
    assert store.authenticate("") is None


def test_a_second_store_sees_tokens_created_by_another_process(tmp_path):
    path = tmp_path / "tokens.json"
    api_side, cli_side = TokenStore(path), TokenStore(path)
    assert api_side.authenticate("nothing") is None
    token = cli_side.create("bob", "viewer")
    assert api_side.authenticate(token).name == "bob"
    assert cli_side.revoke("bob")
    assert api_side.authenticate(token) is None
    assert not cli_side.revoke("bob")


def test_duplicate_names_need_replace(tmp_path):
    store = TokenStore(tmp_path / "t.json")
    old = store.create("carol", "viewer")
    with pytest.raises(TokenError, match="exists"):
        store.create("carol", "admin")
    new = store.create("carol", "admin", replace=True)
    assert store.authenticate(old) is None
    assert store.authenticate(new).role == "admin"


def test_env_tokens_are_read_only_and_validated(tmp_path):
    digest = hash_token("s3cret")
    store = TokenStore(tmp_path / "t.json", f"ops:admin:{digest}, ro:viewer:{hash_token('x')}")
    assert store.authenticate("s3cret") == Identity("ops", "admin", "env")
    with pytest.raises(TokenError, match="read-only"):
        store.revoke("ops")
    with pytest.raises(TokenError, match="read-only"):
        store.create("ops", "viewer")
    with pytest.raises(TokenError, match="name:role:sha256hex"):
        parse_env_tokens("ops:admin")
    with pytest.raises(TokenError, match="64 hex"):
        parse_env_tokens("ops:admin:abc")
    with pytest.raises(TokenError, match="role must be"):
        parse_env_tokens(f"ops:root:{digest}")


def test_roles_are_ordered():
    assert Identity("a", "admin").allows("analyst")
    assert Identity("a", "analyst").allows("viewer")
    assert not Identity("a", "viewer").allows("analyst")
    assert not Identity("a", "analyst").allows("admin")


def test_bad_names_are_refused(tmp_path):
    store = TokenStore(tmp_path / "t.json")
    for name in ("", "a b", "x" * 65, "../etc"):
        with pytest.raises(TokenError):
            store.create(name, "viewer")


def test_make_run_admin_token_is_created_once_and_kept_private(tmp_path):
    from services.runner import ensure_admin_token
    from services.settings import Settings

    settings = Settings.from_env(environ={}, home=tmp_path)
    token, path = ensure_admin_token(settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    store = TokenStore(settings.api_tokens_path)
    assert store.authenticate(token).role == "admin"
    assert ensure_admin_token(settings) == (token, path)  # second run: same token
    store.revoke("local-admin")
    again, _ = ensure_admin_token(settings)  # revoked: a new one replaces it
    assert again != token and store.authenticate(again).role == "admin"
