"""CLI commands of the control plane: ``dialguard api`` and the API's client commands.

Every client command talks to the control API over HTTP (``DIALGUARD_API_URL``,
``DIALGUARD_API_TOKEN`` or ``DIALGUARD_API_TOKEN_FILE``; ``--url`` / ``--token-file`` /
``--token`` override; ``--token`` is visible to every local user in ``ps``, so the file or the
environment is the way to pass it), so a change made from a terminal
is authenticated and audited exactly like one made from the console. Only ``token create``
also works without a running API (``--local``), writing the tokens file directly: that is how
the first admin token comes to exist.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import orjson

from services.api_client import ApiClient, quote
from services.settings import Settings

Cmd = Callable[[argparse.Namespace, Settings], int]
ROLES = ("viewer", "analyst", "admin")
CSV_SUFFIXES = (".csv",)
#: A token file readable or writable by group or others is refused.
TOKEN_FILE_FORBIDDEN_BITS = 0o077


def read_token_file(path: str) -> str:
    """The token in ``path`` (its first line); a file others may read is refused, like ssh
    refuses such a key, because the token would not be a secret any more."""
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        text = file.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {file}: {exc.strerror}") from None
    if mode & TOKEN_FILE_FORBIDDEN_BITS:
        raise ValueError(f"token file {file} is readable by other users (mode "
                         f"{mode & 0o777:o}); chmod 600 {file}")
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ValueError(f"token file {file} is empty")
    return token


def _token(args: argparse.Namespace, settings: Settings) -> str:
    """The token to present, first found: --token, --token-file, DIALGUARD_API_TOKEN,
    DIALGUARD_API_TOKEN_FILE."""
    if args.token:
        return str(args.token)
    if args.token_file:
        return read_token_file(args.token_file)
    if settings.api_token:
        return settings.api_token
    if settings.api_token_file:
        return read_token_file(settings.api_token_file)
    return ""


def _client(args: argparse.Namespace, settings: Settings) -> ApiClient:
    return ApiClient(args.url or settings.api_url, _token(args, settings))


def _show(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _read(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def _client_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--url", default="", help="control API URL (default DIALGUARD_API_URL)")
    parent.add_argument("--token-file", default="", metavar="PATH",
                        help="read the bearer token from this file (mode 0600; default "
                             "DIALGUARD_API_TOKEN_FILE)")
    parent.add_argument("--token", default="",
                        help="bearer token (default DIALGUARD_API_TOKEN). Visible to every "
                             "user of this machine in ps and /proc while the command runs: "
                             "prefer --token-file or DIALGUARD_API_TOKEN")
    return parent


# -- api ----------------------------------------------------------------------------------
def _api_cmd(args: argparse.Namespace, settings: Settings) -> int:  # noqa: ARG001
    from services.api.app import serve

    return serve(settings)


# -- policy -------------------------------------------------------------------------------
def _policy_cmd(args: argparse.Namespace, settings: Settings) -> int:
    api = _client(args, settings)
    if args.action == "show":
        if args.target:
            _show(api.get(f"/api/v1/policies/{quote(args.target)}"))
        else:
            _show(api.get("/api/v1/policies"))
    elif args.action in ("set", "shadow"):
        obj = orjson.loads(_read(args.target or "-"))
        if not isinstance(obj, dict):
            raise ValueError("a policy file must hold a JSON object")
        name = args.name or obj.get("name") or settings.policy_name
        stage = "shadow" if args.action == "shadow" else "live"
        policy = api.put(f"/api/v1/policies/{quote(name)}",
                         {"policy": obj, "reason": args.reason, "stage": stage})["policy"]
        print(f"published policy {policy['name']} v{policy['version']} ({stage}) "
              f"by {policy['author']}")
    elif args.action == "versions":
        for p in api.get(f"/api/v1/policies/{quote(_name(args, settings))}/versions")[
                "versions"]:
            t = p["thresholds"]
            print(f"v{p['version']:<4} by {p['author']:<12} label {t['label']:.2f} rate_limit "
                  f"{t['rate_limit']:.2f} block {t['block']:.2f} dry_run {p['dry_run']}  "
                  f"{p['reason']}")
    elif args.action == "rollback":
        if args.version is None:
            raise ValueError("rollback needs --version N")
        policy = api.post(f"/api/v1/policies/{quote(_name(args, settings))}/rollback",
                          {"version": args.version, "reason": args.reason})["policy"]
        print(f"policy {policy['name']} is now v{policy['version']} "
              f"(content of v{args.version})")
    elif args.action == "promote":
        policy = api.post(f"/api/v1/policies/{quote(_name(args, settings))}/promote",
                          {"reason": args.reason})["policy"]
        print(f"promoted shadow: policy {policy['name']} v{policy['version']} is live")
    elif args.action == "discard-shadow":
        api.delete(f"/api/v1/policies/{quote(_name(args, settings))}/shadow",
                   reason=args.reason)
        print("shadow version discarded")
    return 0


def _name(args: argparse.Namespace, settings: Settings) -> str:
    return args.name or args.target or settings.policy_name


def _switches_cmd(args: argparse.Namespace, settings: Settings) -> int:
    api = _client(args, settings)
    if args.dry_run_all is None:
        _show(api.get("/api/v1/switches"))
        return 0
    _show(api.put("/api/v1/switches", {"dry_run_all": args.dry_run_all == "on",
                                       "reason": args.reason}))
    return 0


# -- allowlist ----------------------------------------------------------------------------
def _allow_cmd(args: argparse.Namespace, settings: Settings) -> int:
    api = _client(args, settings)
    if args.action == "list":
        _show(api.get("/api/v1/allowlist"))
    elif args.action == "add":
        body: dict[str, Any] = {"reason": args.reason}
        if args.trunk:
            if args.number or args.prefix:
                raise ValueError("give a number (or --prefix digits) or --trunk, not both")
            body["trunk"] = args.trunk
        else:
            body.update(number=args.number, prefix=args.prefix)
        if args.ttl:
            body["ttl_s"] = args.ttl
        _show(api.post("/api/v1/allowlist", body)["entry"])
    elif args.trunk:
        api.delete(f"/api/v1/allowlist/trunk/{_trunk_path(args.trunk)}", reason=args.reason)
        print(f"removed trunk {args.trunk} from the allowlist")
    else:
        api.delete(f"/api/v1/allowlist/{quote(args.number)}", reason=args.reason)
        print(f"removed {args.number} from the allowlist")
    return 0


def _trunk_path(tid: str) -> str:
    """``<switch>/<trunk>`` as two path segments (a '/' inside the trunk part is escaped)."""
    switch, sep, trunk = tid.partition("/")
    if not sep or not switch or not trunk:
        raise ValueError(f"trunk {tid!r} must be <switch>/<trunk>")
    return f"{quote(switch)}/{quote(trunk)}"


# -- ranges and trunks --------------------------------------------------------------------
def _source_cmd(args: argparse.Namespace, settings: Settings) -> int:
    """Look up, block or unblock a number range (``prefix``) or a trunk."""
    api = _client(args, settings)
    path = (f"/api/v1/prefixes/{quote(args.target)}" if args.scope == "prefix"
            else f"/api/v1/trunks/{_trunk_path(args.target)}")
    if args.action == "lookup":
        _show(api.get(path))
    elif args.action == "block":
        body: dict[str, Any] = {"reason": args.reason, "ttl_s": args.ttl}
        if args.attest or args.neighbour_tail:
            if args.scope != "trunk":
                raise ValueError("--attest / --neighbour-tail narrow a trunk block only")
            match: dict[str, Any] = {}
            if args.attest:
                match["attest"] = args.attest.split(",")
            if args.neighbour_tail:
                match["neighbour_tail"] = args.neighbour_tail
            body["match"] = match
        _show(api.post(path + "/block", body)["decision"])
    else:
        body = {"reason": args.reason}
        if args.allow_for:
            body["allow_for_s"] = args.allow_for
        _show(api.post(path + "/unblock", body)["decision"])
    return 0


def _campaigns_cmd(args: argparse.Namespace, settings: Settings) -> int:
    records = _client(args, settings).get("/api/v1/campaigns", scope=args.scope)["campaigns"]
    if args.json:
        _show(records)
        return 0
    for d in records:
        mode = " (dry-run)" if d.get("dry_run") else ""
        print(f"{d['action']:<10}{mode} {d.get('covers', d['number'])}  "
              f"[{d['policy']} v{d['policy_version']}]")
        for reason in d.get("reasons") or []:
            print(f"    {reason}")
    if not records:
        print("no range or trunk decision in force")
    return 0


# -- feedback and appeals -----------------------------------------------------------------
def _feedback_cmd(args: argparse.Namespace, settings: Settings) -> int:
    api = _client(args, settings)
    if args.action == "add":
        body = {"id": args.id, "number": args.number, "label": args.label, "note": args.note}
        _show(api.post("/api/v1/feedback", body))
        return 0
    fmt = args.format or ("csv" if args.file.lower().endswith(CSV_SUFFIXES) else "ndjson")
    data = _read(args.file)
    print(f"importing {len(data)} bytes of {fmt} from {args.file} ...", file=sys.stderr)
    result = api.request("POST", "/api/v1/feedback/bulk", raw=data,
                         content_type="text/csv" if fmt == "csv" else "application/x-ndjson")
    print(f"accepted {result['accepted']}, duplicates {result['duplicates']}, "
          f"rejected {len(result['rejected'])}")
    for row in result["rejected"]:
        print(f"  line {row['line']}: {row['error']}")
    return 0 if not result["rejected"] else 1


def _appeal_cmd(args: argparse.Namespace, settings: Settings) -> int:
    api = _client(args, settings)
    if args.action == "list":
        _show(api.get("/api/v1/appeals", status=args.status))
    elif args.action == "add":
        _show(api.post("/api/v1/appeals", {"number": args.target, "appellant": args.appellant,
                                           "contact": args.contact, "note": args.note}))
    else:
        if args.outcome is None:
            raise ValueError("decide needs --outcome upheld|denied")
        body: dict[str, Any] = {"outcome": args.outcome, "reason": args.reason}
        if args.allow_for:
            body["allow_for_s"] = args.allow_for
        _show(api.post(f"/api/v1/appeals/{quote(args.target)}/decision", body))
    return 0


# -- numbers, what-if, audit --------------------------------------------------------------
def _number_cmd(args: argparse.Namespace, settings: Settings) -> int:
    api = _client(args, settings)
    path = f"/api/v1/numbers/{quote(args.number)}"
    if args.action == "lookup":
        _show(api.get(path))
    elif args.action == "block":
        _show(api.post(path + "/block", {"reason": args.reason, "ttl_s": args.ttl}))
    else:
        body: dict[str, Any] = {"reason": args.reason}
        if args.allow_for:
            body["allow_for_s"] = args.allow_for
        _show(api.post(path + "/unblock", body))
    return 0


def _whatif_cmd(args: argparse.Namespace, settings: Settings) -> int:
    api = _client(args, settings)
    body: dict[str, Any] = {"policy": orjson.loads(_read(args.file))}
    if args.window:
        body["window_s"] = args.window
    r = api.post("/api/v1/whatif", body)
    print(f"{r['numbers']} numbers scored in the last {r['window_s']:.0f} s")
    print(f"{'':>12} {'label':>8} {'rate_limit':>10} {'block':>8} {'est. FP':>8}")
    for side in ("current", "candidate"):
        c = r[side]
        print(f"{side:>12} {c['label']:>8} {c['rate_limit']:>10} {c['block']:>8} "
              f"{r['estimated_false_positives'][side]:>8}")
    for scope, sides in (r.get("by_scope") or {}).items():
        if scope == "number" or not r.get("keys_by_scope", {}).get(scope):
            continue
        cur, cand = sides["current"], sides["candidate"]
        print(f"{scope + 'es' if scope == 'prefix' else scope + 's':>12} "
              + "  ".join(f"{a} {cur[a]}->{cand[a]}" for a in ("label", "rate_limit", "block")))
    print(f"{r['changed_total']} numbers and sources change:")
    for ch in r["changed"][:args.show]:
        print(f"  {ch['number']:<24} {ch['from']:>10} -> {ch['to']:<10} score {ch['score']:.2f}"
              + ("  (labelled legitimate)" if ch["legit_label"] else ""))
    return 0


def _audit_cmd(args: argparse.Namespace, settings: Settings) -> int:
    api = _client(args, settings)
    records = api.get("/api/v1/audit", subject=args.subject, limit=args.limit)["records"]
    if args.json:
        _show(records)
        return 0
    import time

    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["at"]))
        print(f"{when}Z {r['actor']:<12} {r['action']:<22} {r['subject']:<32} {r['reason']}")
    return 0


# -- tokens -------------------------------------------------------------------------------
def _token_cmd(args: argparse.Namespace, settings: Settings) -> int:
    local = args.local or not _token(args, settings)
    if local:
        from services.api.auth import TokenStore

        store = TokenStore(settings.api_tokens_path, settings.api_tokens)
        if args.action == "create":
            token = store.create(args.name, args.role, replace=args.replace)
            print(f"token {args.name} ({args.role}) written to {store.path}; shown once:",
                  file=sys.stderr)
            print(token)
        elif args.action == "list":
            _show(store.listing())
        elif not store.revoke(args.name):
            raise ValueError(f"no token named {args.name!r} in {store.path}")
        else:
            print(f"revoked {args.name}")
        return 0
    api = _client(args, settings)
    if args.action == "create":
        created = api.post("/api/v1/tokens", {"name": args.name, "role": args.role})
        print(f"token {created['name']} ({created['role']}); shown once:", file=sys.stderr)
        print(created["token"])
    elif args.action == "list":
        _show(api.get("/api/v1/tokens"))
    else:
        api.delete(f"/api/v1/tokens/{quote(args.name)}")
        print(f"revoked {args.name}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the control-plane subcommands to the ``dialguard`` parser."""
    client = _client_parent()

    p = sub.add_parser("api", help="serve the control API and the analyst console",
                       description="Serve the control API (aiohttp) on DIALGUARD_API_HOST:"
                                   "DIALGUARD_API_PORT with the analyst console at /, the "
                                   "OpenAPI document at /api/v1/openapi.json and metrics on "
                                   "DIALGUARD_API_METRICS_PORT. Tokens come from "
                                   "DIALGUARD_API_TOKENS_FILE (default <home>/api/tokens.json; "
                                   "'dialguard token create' writes it) and DIALGUARD_API_TOKENS.")
    p.set_defaults(func=_api_cmd)

    p = sub.add_parser("policy", parents=[client], help="show, publish, roll back policies",
                       description="Policies through the control API: workers apply a new "
                                   "version within a second. show [NAME]; set FILE (next live "
                                   "version); shadow FILE (start a version in shadow: decisions "
                                   "recorded, never enforced); versions [NAME]; rollback NAME "
                                   "--version N; promote NAME (shadow -> live); discard-shadow "
                                   "NAME. Changes are audited under the token's name.")
    p.add_argument("action", choices=["show", "set", "shadow", "versions", "rollback",
                                      "promote", "discard-shadow"])
    p.add_argument("target", nargs="?", default="",
                   help="policy JSON file for set/shadow (- = stdin), else the policy name")
    p.add_argument("--name", default="", help="policy name (default: the file's, else "
                                              "DIALGUARD_POLICY_NAME)")
    p.add_argument("--version", type=int, help="version to roll back to")
    p.add_argument("--reason", default="", help="why (required for changes; audited)")
    p.add_argument("--author", default="", help="ignored: the author is the token's name")
    p.set_defaults(func=_policy_cmd)

    p = sub.add_parser("switches", parents=[client], help="the global dry-run switch",
                       description="Show the global switches, or set dry-run-all (admin): "
                                   "while on, every decision of every policy is published as "
                                   "dry-run and switches ignore it.")
    p.add_argument("--dry-run-all", choices=["on", "off"], help="set the kill switch")
    p.add_argument("--reason", default="", help="why (required to set; audited)")
    p.set_defaults(func=_switches_cmd)

    p = sub.add_parser("allow", parents=[client], help="the allowlist",
                       description="List, add (number, --prefix digits or --trunk "
                                   "SWITCH/TRUNK, with reason and optional --ttl) or remove "
                                   "allowlist entries. Built-in emergency "
                                   "numbers are listed and cannot be removed.")
    p.add_argument("action", choices=["list", "add", "remove"])
    p.add_argument("number", nargs="?", default="", help="number or prefix digits")
    p.add_argument("--prefix", action="store_true", help="allowlist every number under it")
    p.add_argument("--trunk", default="", metavar="SWITCH/TRUNK",
                   help="allowlist (or remove) a trunk instead: no range or trunk decision "
                        "is ever made on it")
    p.add_argument("--ttl", type=int, default=0, help="seconds until it expires (0 = never)")
    p.add_argument("--reason", default="", help="why (required; audited)")
    p.set_defaults(func=_allow_cmd)

    p = sub.add_parser("feedback", parents=[client], help="labels the model learns from",
                       description="add: one label (--id makes it idempotent). import FILE: "
                                   "CSV with a header row (id,number,label,note,source,ts) or "
                                   "JSON lines; rows with an id already taken are counted as "
                                   "duplicates, invalid rows are listed with their line.")
    p.add_argument("action", choices=["add", "import"])
    p.add_argument("file", nargs="?", default="-", help="file for import (- = stdin)")
    p.add_argument("--format", choices=["csv", "ndjson"], help="default: by file suffix")
    p.add_argument("--id", default="", help="label id (idempotency)")
    p.add_argument("--number", default="")
    p.add_argument("--label", default="", help="complaint, appeal_upheld, appeal_denied, "
                                               "analyst_robot, analyst_legit, callback_ok, ...")
    p.add_argument("--note", default="")
    p.set_defaults(func=_feedback_cmd)

    p = sub.add_parser("appeal", parents=[client], help="appeals of blocked callers",
                       description="add NUMBER --appellant --contact: record an appeal; list "
                                   "[--status pending]; decide ID --outcome upheld|denied "
                                   "--reason (upheld: labelled legitimate, unblocked and "
                                   "allowlisted for --allow-for seconds).")
    p.add_argument("action", choices=["add", "list", "decide"])
    p.add_argument("target", nargs="?", default="", help="number (add) or appeal id (decide)")
    p.add_argument("--appellant", default="")
    p.add_argument("--contact", default="", help="how to reach the appellant")
    p.add_argument("--note", default="")
    p.add_argument("--status", default="", choices=["", "pending", "upheld", "denied"])
    p.add_argument("--outcome", choices=["upheld", "denied"])
    p.add_argument("--reason", default="")
    p.add_argument("--allow-for", type=int, default=0, help="allowlist seconds when upheld")
    p.set_defaults(func=_appeal_cmd)

    p = sub.add_parser("number", parents=[client], help="look up, block or unblock a number",
                       description="lookup: current state, last decisions and their reasons, "
                                   "the features behind the latest score, labels. block / "
                                   "unblock: a manual decision with a reason, published like "
                                   "any other and audited.")
    p.add_argument("action", choices=["lookup", "block", "unblock"])
    p.add_argument("number")
    p.add_argument("--reason", default="")
    p.add_argument("--ttl", type=int, default=3600, help="block seconds")
    p.add_argument("--allow-for", type=int, default=0, help="unblock: allowlist seconds")
    p.set_defaults(func=_number_cmd)

    p = sub.add_parser("source", parents=[client], help="look up, block or unblock a range "
                       "or a trunk", description="A number range (prefix DIGITS) or a trunk "
                       "(trunk SWITCH/TRUNK): lookup shows its decisions, whether the "
                       "allowlist protects it, its latest score and features; block / unblock "
                       "publish a manual scoped decision (audited). A block is refused for a "
                       "protected source and for ranges shorter than the API's minimum; "
                       "--attest / --neighbour-tail block only that part of a trunk's calls.")
    p.add_argument("action", choices=["lookup", "block", "unblock"])
    p.add_argument("scope", choices=["prefix", "trunk"])
    p.add_argument("target", help="range digits, or SWITCH/TRUNK")
    p.add_argument("--reason", default="")
    p.add_argument("--ttl", type=int, default=3600, help="block seconds")
    p.add_argument("--attest", default="", help="trunk block: only calls with these "
                                                "attestations, e.g. B,C,none")
    p.add_argument("--neighbour-tail", type=int, default=0,
                   help="trunk block: only calls whose caller equals the callee but for the "
                        "last N digits (neighbour spoofing)")
    p.add_argument("--allow-for", type=int, default=0, help="trunk unblock: allowlist seconds")
    p.set_defaults(func=_source_cmd)

    p = sub.add_parser("campaigns", parents=[client], help="ranges and trunks being stopped",
                       description="Range and trunk decisions in force (dry-run included), "
                                   "newest first, with what they cover and why.")
    p.add_argument("--scope", default="", choices=["", "prefix", "trunk"])
    p.add_argument("--json", action="store_true", help="full decision records")
    p.set_defaults(func=_campaigns_cmd)

    p = sub.add_parser("whatif", parents=[client], help="preview a candidate policy",
                       description="Replay the latest score of every number seen in the "
                                   "window through the live and the candidate policy: counts, "
                                   "estimated false positives (legitimate labels) and the "
                                   "numbers whose action would change.")
    p.add_argument("file", help="candidate policy JSON (- = stdin)")
    p.add_argument("--window", type=float, default=0, help="seconds (default: the API's)")
    p.add_argument("--show", type=int, default=20, help="changed numbers to print")
    p.set_defaults(func=_whatif_cmd)

    p = sub.add_parser("audit", parents=[client], help="who changed what, when",
                       description="Audit records of every write, newest first, optionally for "
                                   "one subject (policy/default, allowlist, number/..., ...).")
    p.add_argument("--subject", default="")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="full records with before/after")
    p.set_defaults(func=_audit_cmd)

    p = sub.add_parser("token", parents=[client], help="API tokens (admin)",
                       description="create NAME --role viewer|analyst|admin (prints the token "
                                   "once), list, revoke NAME. With --local, or when no API "
                                   "token is configured, works on the tokens file directly "
                                   "(no API needed): that is how the first admin is made.")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("name", nargs="?", default="")
    p.add_argument("--role", choices=ROLES, default="viewer")
    p.add_argument("--local", action="store_true", help="edit the tokens file directly")
    p.add_argument("--replace", action="store_true",
                   help="local create: replace an existing token of that name")
    p.set_defaults(func=_token_cmd)


#: Subcommands added by :func:`register` (tests check each explains itself).
COMMANDS = ("api", "policy", "switches", "allow", "feedback", "appeal", "number", "source",
            "campaigns", "whatif", "audit", "token")
