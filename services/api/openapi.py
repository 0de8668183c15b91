"""The OpenAPI 3.1 description of the control API, in code (served at /api/v1/openapi.json).

A unit test validates it with openapi-spec-validator and checks that its (method, path) pairs
are exactly the routes the app registers, so the description cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

OBJ: dict[str, Any] = {"type": "object"}
ERROR = {"description": "error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, role: str | None, ok: dict[str, Any], body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, errors: tuple[int, ...] = (),
        status: str = "200", body_types: tuple[str, ...] = ("application/json",)
        ) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary + (f" (role: {role})" if role else ""),
                          "responses": {status: ok}}
    if role is None:
        op["security"] = []
    else:
        op["x-required-role"] = role
        for code in (401, 403):
            op["responses"][str(code)] = ERROR
    for code in errors:
        op["responses"][str(code)] = ERROR
    if body is not None:
        op["requestBody"] = {"required": True, "content": {t: {"schema": body}
                                                           for t in body_types}}
    if params:
        op["parameters"] = params
    return op


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


def _query(name: str, description: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": kind}}


NAME = _path("name", "policy name")
NUMBER = _path("number", "phone number (E.164 digits, +CC..., national 0...)")
REASON_Q = _query("reason", "why (audited)")
LIMIT = _query("limit", "how many (1..1000)", "integer")
REASON = {"type": "string", "description": "why (audited)"}
DIGITS = _path("digits", "leading digits of a caller-number range (E.164 without '+')")
SWITCH = _path("switch", "switch the trunk belongs to")
TRUNK = _path("trunk", "trunk (group) name on that switch; a '/' in it is sent as %2F")
SCOPED_BLOCK: dict[str, Any] = {"type": "object", "required": ["reason"], "properties": {
    "reason": REASON, "ttl_s": {"type": "integer"}}}
SCOPES = ["number", "prefix", "trunk"]


def document() -> dict[str, Any]:
    policy_body = {"type": "object", "required": ["policy", "reason"], "properties": {
        "policy": _ref("Policy"), "reason": REASON,
        "stage": {"type": "string", "enum": ["live", "shadow"]}}}
    counts = {"type": "object", "properties": {a: {"type": "integer"}
                                               for a in ("label", "rate_limit", "block")}}
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("liveness; caught_up once the views read the topics; writes: "
                                "whether Kafka takes the API's records (503 when the views "
                                "stopped or writes fail)", None, _json(OBJ), errors=(503,))},
        "/": {"get": _op("the analyst console page", None,
                         {"description": "HTML", "content": {"text/html": {}}}, errors=(404,))},
        "/console/{file}": {"get": _op("console static assets", None,
                                       {"description": "file"}, errors=(404,),
                                       params=[_path("file", "asset name")])},
        "/api/v1/whoami": {"get": _op("who the token belongs to", "viewer", _json(
            {"type": "object", "properties": {"name": {"type": "string"},
                                              "role": {"type": "string"}}}))},
        "/api/v1/openapi.json": {"get": _op("this document", "viewer", _json(OBJ))},
        "/api/v1/policies": {"get": _op("live and shadow policies, global switches", "viewer",
                                        _json(OBJ))},
        "/api/v1/policies/{name}": {
            "get": _op("one policy (live and shadow)", "viewer", _json(_ref("PolicyPair")),
                       params=[NAME], errors=(404,)),
            "put": _op("publish the next version, live or in shadow; author is the token's name",
                       "analyst", _json({"type": "object", "properties": {
                           "policy": _ref("Policy")}}), body=policy_body, params=[NAME],
                       errors=(400, 413, 422))},
        "/api/v1/policies/{name}/versions": {"get": _op(
            "every version, newest first", "viewer", _json(OBJ), params=[NAME],
            errors=(404,))},
        "/api/v1/policies/{name}/rollback": {"post": _op(
            "republish version N's content as the next version", "analyst", _json(OBJ),
            body={"type": "object", "required": ["version", "reason"], "properties": {
                "version": {"type": "integer"}, "reason": REASON}},
            params=[NAME], errors=(400, 404))},
        "/api/v1/policies/{name}/promote": {"post": _op(
            "the shadow version becomes live", "analyst", _json(OBJ),
            body={"type": "object", "required": ["reason"], "properties": {"reason": REASON}},
            params=[NAME], errors=(400, 404))},
        "/api/v1/policies/{name}/shadow": {"delete": _op(
            "discard the shadow version", "analyst", _json(OBJ), params=[NAME, REASON_Q],
            errors=(400, 404))},
        "/api/v1/switches": {
            "get": _op("global switches", "viewer", _json(_ref("Switches"))),
            "put": _op("set the global dry-run switch", "admin", _json(_ref("Switches")),
                       body={"type": "object", "required": ["dry_run_all", "reason"],
                             "properties": {"dry_run_all": {"type": "boolean"},
                                            "reason": REASON}}, errors=(400,))},
        "/api/v1/whatif": {"post": _op(
            "what a candidate policy would do to the recent scores", "viewer", _json(
                {"type": "object", "properties": {
                    "window_s": {"type": "number"}, "numbers": {"type": "integer"},
                    "keys": {"type": "integer"}, "keys_by_scope": OBJ,
                    "current": counts, "candidate": counts,
                    "by_scope": {"type": "object", "description": "counts per scope "
                                 "(number, prefix, trunk) of each side",
                                 "additionalProperties": {"type": "object", "properties": {
                                     "current": counts, "candidate": counts}}},
                    "estimated_false_positives": OBJ, "changed": {"type": "array"},
                    "changed_total": {"type": "integer"}}}),
            body={"type": "object", "required": ["policy"], "properties": {
                "policy": _ref("Policy"), "window_s": {"type": "number"}}},
            errors=(400, 422))},
        "/api/v1/allowlist": {
            "get": _op("built-in and analyst entries", "viewer", _json(OBJ)),
            "post": _op("allowlist a number, a prefix (number + prefix: true, at least "
                        "api_min_allow_prefix digits) or a trunk (trunk: <switch>/<trunk>; "
                        "its topic key is trunk:<switch>/<trunk>)", "analyst", _json(OBJ),
                        body={"type": "object", "required": ["reason"],
                              "properties": {"number": {"type": "string"},
                                             "prefix": {"type": "boolean"},
                                             "trunk": {"type": "string",
                                                       "description": "<switch>/<trunk>"},
                                             "reason": REASON, "ttl_s": {"type": "integer"},
                                             "expires_at": {
                                                 "type": "number", "description":
                                                 "epoch seconds, future, <= 366 days ahead"}}},
                        errors=(400,), status="201")},
        "/api/v1/allowlist/trunk/{switch}/{trunk}": {"delete": _op(
            "remove a trunk entry", "analyst", _json(OBJ),
            params=[SWITCH, TRUNK, REASON_Q], errors=(400, 404))},
        "/api/v1/allowlist/{number}": {"delete": _op(
            "remove an entry (built-in ones: 403)", "analyst", _json(OBJ),
            params=[NUMBER, REASON_Q], errors=(400, 404))},
        "/api/v1/numbers/{number}": {"get": _op(
            "current state, last decisions with reasons, range decisions in force that cover "
            "the number (covered_by; trunk decisions cannot be known from a number), latest "
            "score and features, labels, acks", "viewer", _json(OBJ), params=[NUMBER],
            errors=(400,))},
        "/api/v1/numbers/{number}/block": {"post": _op(
            "manual block, published like any decision", "analyst", _json(OBJ),
            body={"type": "object", "required": ["reason"], "properties": {
                "reason": REASON, "ttl_s": {"type": "integer"}}},
            params=[NUMBER], errors=(400,))},
        "/api/v1/numbers/{number}/unblock": {"post": _op(
            "manual unblock, optionally allowlisting for a while", "analyst", _json(OBJ),
            body={"type": "object", "required": ["reason"], "properties": {
                "reason": REASON, "allow_for_s": {"type": "integer"}}},
            params=[NUMBER], errors=(400,))},
        "/api/v1/decisions/recent": {"get": _op(
            "latest decisions (numbers, ranges, trunks), newest first", "viewer",
            _json({"type": "object", "properties": {"decisions": {
                "type": "array", "items": _ref("DecisionView")}}}),
            params=[LIMIT], errors=(400,))},
        "/api/v1/prefixes/{digits}": {"get": _op(
            "a number range: decisions, protection, latest score and features, labels, acks",
            "viewer", _json(_ref("Source")), params=[DIGITS], errors=(400,))},
        "/api/v1/prefixes/{digits}/block": {"post": _op(
            "manual block of every caller number in the range (at least "
            "api_min_block_prefix digits; 409 when the allowlist protects the range)",
            "analyst", _json(OBJ), body=SCOPED_BLOCK, params=[DIGITS], errors=(400, 409))},
        "/api/v1/prefixes/{digits}/unblock": {"post": _op(
            "manual unblock of a range", "analyst", _json(OBJ),
            body={"type": "object", "required": ["reason"], "properties": {"reason": REASON}},
            params=[DIGITS], errors=(400,))},
        "/api/v1/trunks/{switch}/{trunk}": {"get": _op(
            "a trunk: decisions, protection, latest score and features, labels, acks",
            "viewer", _json(_ref("Source")), params=[SWITCH, TRUNK], errors=(400,))},
        "/api/v1/trunks/{switch}/{trunk}/block": {"post": _op(
            "manual block of a trunk's calls, optionally only those a match selects "
            "(409 when the trunk is allowlisted)", "analyst", _json(OBJ),
            body={**SCOPED_BLOCK, "properties": {**SCOPED_BLOCK["properties"],
                                                 "match": _ref("CallMatch")}},
            params=[SWITCH, TRUNK], errors=(400, 409))},
        "/api/v1/trunks/{switch}/{trunk}/unblock": {"post": _op(
            "manual unblock of a trunk, optionally allowlisting it for a while", "analyst",
            _json(OBJ), body={"type": "object", "required": ["reason"], "properties": {
                "reason": REASON, "allow_for_s": {"type": "integer"}}},
            params=[SWITCH, TRUNK], errors=(400,))},
        "/api/v1/campaigns": {"get": _op(
            "ranges and trunks under a decision in force (dry-run included), newest first",
            "viewer", _json({"type": "object", "properties": {"campaigns": {
                "type": "array", "items": _ref("DecisionView")}}}),
            params=[_query("scope", "prefix or trunk")], errors=(400,))},
        "/api/v1/offenders": {"get": _op("highest recent scores", "viewer", _json(OBJ),
                                         params=[LIMIT], errors=(400,))},
        "/api/v1/feedback": {"post": _op(
            "one label, idempotent by id", "analyst", _json(OBJ), body=_ref("LabelIn"),
            errors=(400, 422, 503))},
        "/api/v1/feedback/bulk": {"post": _op(
            "labels from CSV (header row) or JSON lines, at most 200,000 rows; idempotent by "
            "id; answers accepted, duplicates, rejected (first 100) and rejected_total, and "
            "when Kafka took only part: 503 with failed and failed_total", "analyst",
            _json(OBJ), body={"type": "string"}, errors=(400, 413, 503),
            body_types=("text/csv", "application/x-ndjson"))},
        "/api/v1/appeals": {
            "get": _op("appeals, newest first", "viewer", _json(OBJ),
                       params=[_query("status", "pending, upheld or denied")], errors=(400,)),
            "post": _op("record an appeal of a blocked caller", "analyst", _json(OBJ),
                        body={"type": "object", "required": ["number", "appellant", "contact"],
                              "properties": {k: {"type": "string"} for k in
                                             ("number", "appellant", "contact", "note")}},
                        errors=(400,), status="201")},
        "/api/v1/appeals/{id}/decision": {"post": _op(
            "uphold (label, unblock, allowlist) or deny (label) an appeal", "analyst",
            _json(OBJ), body={"type": "object", "required": ["outcome", "reason"],
                              "properties": {"outcome": {"type": "string",
                                                         "enum": ["upheld", "denied"]},
                                             "reason": REASON,
                                             "allow_for_s": {"type": "integer"}}},
            params=[_path("id", "appeal id")], errors=(400, 404, 409))},
        "/api/v1/audit": {"get": _op(
            "audit records, newest first", "viewer", _json(OBJ),
            params=[_query("subject", "e.g. policy/default or policy"), LIMIT],
            errors=(400,))},
        "/api/v1/tokens": {
            "get": _op("tokens (names and roles, never secrets)", "admin", _json(OBJ)),
            "post": _op("create a token; its plaintext is shown once", "admin", _json(OBJ),
                        body={"type": "object", "required": ["name", "role"], "properties": {
                            "name": {"type": "string"},
                            "role": {"type": "string", "enum": ["viewer", "analyst", "admin"]}}},
                        errors=(400,), status="201")},
        "/api/v1/tokens/{name}": {"delete": _op("revoke a token", "admin", _json(OBJ),
                                                params=[_path("name", "token name"), REASON_Q],
                                                errors=(400, 404))},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "dialguard control API", "version": "1",
                 "description": "Policies, allowlist, decisions, feedback, appeals, what-if "
                                "and audit. Errors are {\"error\": message} with a 4xx."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}}},
                "Thresholds": {"type": "object", "additionalProperties": False, "properties": {
                    a: {"type": "number", "minimum": 0, "maximum": 1}
                    for a in ("label", "rate_limit", "block")}},
                "Policy": {"type": "object", "additionalProperties": False, "properties": {
                    "name": {"type": "string"}, "version": {"type": "integer"},
                    "author": {"type": "string"}, "reason": {"type": "string"},
                    "thresholds": _ref("Thresholds"),
                    "prefix_overrides": {"type": "object",
                                         "additionalProperties": _ref("Thresholds")},
                    "min_attempts": {"type": "integer", "minimum": 0},
                    "min_distinct": {"type": "integer", "minimum": 0},
                    "min_outcomes": {"type": "integer", "minimum": 0},
                    "ttl_s": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "hysteresis": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                    "dry_run": {"type": "boolean"},
                    "max_blocks_per_min": {"type": "integer", "minimum": 0},
                    "do_not_originate": {"type": "array", "items": {"type": "string"}},
                    "fp_target": {"type": "number", "minimum": 0, "maximum": 1},
                    "fp_min_labels": {"type": "integer", "minimum": 1},
                    "scopes": {"type": "object", "additionalProperties": False,
                               "description": "source decisions' policy per scope",
                               "properties": {"prefix": _ref("ScopePolicy"),
                                              "trunk": _ref("ScopePolicy")}}}},
                "ScopePolicy": {"type": "object", "description": "thresholds, evidence, "
                                "conversation gate, TTLs, hysteresis and limiter of range or "
                                "trunk decisions (fields left out take their defaults)",
                                "properties": {
                    "enabled": {"type": "boolean"}, "thresholds": _ref("Thresholds"),
                    "min_attempts": {"type": "integer", "minimum": 0},
                    "min_callers": {"type": "integer", "minimum": 0},
                    "min_callees": {"type": "integer", "minimum": 0},
                    "min_outcomes": {"type": "integer", "minimum": 0},
                    "max_conversation_share": {"type": "number", "minimum": 0,
                                               "exclusiveMaximum": 1},
                    "ttl_s": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "hysteresis": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                    "max_blocks_per_min": {"type": "integer", "minimum": 0}}},
                "CallMatch": {"type": "object", "description": "the part of a trunk's calls "
                              "a decision covers", "properties": {
                    "attest": {"type": "array", "items": {"type": "string",
                                                          "enum": ["A", "B", "C", "none"]}},
                    "neighbour_tail": {"type": "integer", "minimum": 1, "maximum": 8}}},
                "Decision": {"type": "object", "properties": {
                    "number": {"type": "string", "description": "topic key: the number, "
                               "prefix:<digits> or trunk:<switch>/<trunk>"},
                    "action": {"type": "string",
                               "enum": ["label", "rate_limit", "block", "unblock"]},
                    "ttl_s": {"type": "integer"}, "score": {"type": "number"},
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "policy": {"type": "string"}, "policy_version": {"type": "integer"},
                    "decided_at": {"type": "number"}, "trigger_ts": {"type": "number"},
                    "dry_run": {"type": "boolean"},
                    "scope": {"type": "string", "enum": SCOPES},
                    "target": {"type": "string", "description": "the number, the range's "
                               "digits or the trunk id <switch>/<trunk>"},
                    "switch": {"type": ["string", "null"]},
                    "match": {"oneOf": [_ref("CallMatch"), {"type": "null"}]}}},
                "DecisionView": {"allOf": [_ref("Decision"), {"type": "object", "properties": {
                    "covers": {"type": "string", "description": "what it covers, in words"},
                    "in_force": {"type": "boolean"}, "until": {"type": "number"}}}]},
                "Source": {"type": "object", "properties": {
                    "key": {"type": "string"}, "scope": {"type": "string",
                                                         "enum": ["prefix", "trunk"]},
                    "target": {"type": "string"},
                    "protected": {"type": ["string", "null"],
                                  "description": "why the allowlist protects it"},
                    "current": OBJ,
                    "decisions": {"type": "array", "items": _ref("DecisionView")},
                    "score": OBJ, "labels": {"type": "array"}, "acks": {"type": "array"}}},
                "PolicyPair": {"type": "object", "properties": {
                    "live": {"oneOf": [_ref("Policy"), {"type": "null"}]},
                    "shadow": {"oneOf": [_ref("Policy"), {"type": "null"}]}}},
                "Switches": {"type": "object", "properties": {
                    "dry_run_all": {"type": "boolean"}, "author": {"type": "string"},
                    "reason": {"type": "string"}, "at": {"type": "number"}}},
                "LabelIn": {"type": "object", "required": ["id", "number", "label"],
                            "properties": {
                                "id": {"type": "string"}, "number": {"type": "string"},
                                "label": {"type": "string", "enum": [
                                    "complaint", "appeal_upheld", "appeal_denied",
                                    "analyst_robot", "analyst_legit", "callback_ok", "legit",
                                    "robot"]},
                                "note": {"type": "string"}, "source": {"type": "string"},
                                "ts": {"type": "number"}}},
            },
        },
    }


def operations(doc: dict[str, Any] | None = None) -> set[tuple[str, str]]:
    """(METHOD, path) pairs the document describes."""
    doc = doc or document()
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
