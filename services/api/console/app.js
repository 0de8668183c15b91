/* dialguard analyst console: plain JS, no framework, no build step, no network but this API.
 *
 * Every value that comes from the network (numbers, reasons, notes, authors) is put in the DOM
 * with textContent / element properties, never as HTML: a caller controls its own number and a
 * note is free text, so anything else would let a caller script an analyst's browser.
 */
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "dialguard.token";
/** The live view is a poll, not a socket: simple, and it survives proxies on NOC networks. */
const DECISIONS_POLL_MS = 2000;
const DECISIONS_LIMIT = 50;
/** Offenders, versions, allowlist and appeals change slowly: every few decision polls. */
const SLOW_POLL_EVERY = 5;
const OFFENDERS_LIMIT = 20;
/** Slider moves are debounced so one drag costs one what-if, not one per pixel. */
const WHATIF_DEBOUNCE_MS = 350;
const WHATIF_WINDOW_S = 3600;
const WHATIF_CHANGED_SHOWN = 50;
/** What the manual-block TTL field starts at (the analyst can change it). */
const MANUAL_BLOCK_TTL_S = 3600;
const THRESHOLD_ACTIONS = ["label", "rate_limit", "block"];
/** Where the sliders start before any policy is published: streams/policy.py's Thresholds
 * defaults (what a worker applies then). Evidence fields stay empty: the API's defaults apply. */
const BUILTIN_THRESHOLDS = {label: 0.5, rate_limit: 0.7, block: 0.85};
/** streams/policy.py's ScopePolicy threshold defaults, for ranges and trunks. */
const BUILTIN_SCOPE_THRESHOLDS = {label: 0.5, rate_limit: 0.75, block: 0.85};
const SOURCE_SCOPES = ["prefix", "trunk"];
const SCOPE_NAMES = {number: "number", prefix: "range", trunk: "trunk"};
/** Policy fields the API sets itself on a write (ignored if sent; left out of the candidate). */
const SERVER_FIELDS = ["name", "version", "author", "reason"];
const ROLE_RANK = {viewer: 0, analyst: 1, admin: 2};

const state = {
  token: "",
  who: null,
  policyName: "default",
  live: null,        // the live Policy as last read
  shadow: null,      // the shadow Policy or null
  dirty: false,      // the editor differs from live
  whatifTimer: 0,
  whatifSeq: 0,
  pollTimer: 0,
  polls: 0,
};

const $ = (id) => document.getElementById(id);

/* ---------------------------------------------------------------------------------------- */
/* DOM helpers: text only                                                                    */

/** el("td", {className: "x"}, "text", childNode...) -- strings become text nodes. */
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function setText(id, text) { $(id).textContent = text === undefined || text === null ? "" : String(text); }

function fillRows(tbodyId, rows, emptyText) {
  const body = $(tbodyId);
  body.replaceChildren(...rows);
  if (!rows.length) {
    const cols = body.closest("table").querySelectorAll("thead th").length || 1;
    body.append(el("tr", {className: "empty"}, el("td", {colSpan: cols}, emptyText || "nothing yet")));
  }
}

/**
 * An epoch time in seconds as UTC text. A value no Date can hold (1e13: milliseconds given as
 * seconds) is shown as it is, as text: toISOString() would throw, and one such allowlist entry
 * once stopped the whole console from polling, for every analyst.
 */
function fmtTime(epoch) {
  if (epoch === null || epoch === undefined || epoch === "" || epoch === 0) return "";
  if (typeof epoch !== "number" || !isFinite(epoch) || epoch < 0) return asText(epoch);
  const date = new Date(epoch * 1000);
  if (isNaN(date.getTime())) return asText(epoch);
  try {
    return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  } catch (_) {
    return asText(epoch);
  }
}

function fmtScore(v) { return typeof v === "number" && isFinite(v) ? v.toFixed(2) : ""; }

function actionBadge(action, dryRun) {
  const span = el("span", {className: `badge action-${String(action).replace(/[^a-z_]/g, "")}`}, action);
  if (dryRun) return el("span", {}, span, " ", el("span", {className: "badge dry-run", title: "dry-run: switches ignore it"}, "dry-run"));
  return span;
}

function reasonList(reasons) {
  const ul = el("ul", {className: "reasons"});
  const list = Array.isArray(reasons) ? reasons : (reasons === null || reasons === undefined ? [] : [reasons]);
  for (const r of list) ul.append(el("li", {}, asText(r)));
  return ul;
}

/** Anything as text: strings as they are, other values as JSON (never a thrown error). */
function asText(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  try { return JSON.stringify(v); } catch (_) { return String(v); }
}

/** A trunk decision's CallMatch in words (streams/scope.py CallMatch.describe). */
function matchWords(match) {
  if (match === null || match === undefined) return "";
  if (typeof match !== "object" || Array.isArray(match)) return `match ${asText(match)}`;
  const parts = [];
  if (Array.isArray(match.attest)) parts.push(`attestation ${match.attest.map(asText).join("/")}`);
  else if (match.attest !== undefined) parts.push(`attestation ${asText(match.attest)}`);
  if (match.neighbour_tail !== undefined && match.neighbour_tail !== null) {
    parts.push(`caller equal to the callee but for the last ${asText(match.neighbour_tail)} digits (neighbour spoofing)`);
  }
  const known = new Set(["attest", "neighbour_tail"]);
  const other = Object.keys(match).filter((k) => !known.has(k));
  if (other.length) parts.push(`other conditions ${asText(Object.fromEntries(other.map((k) => [k, match[k]])))}`);
  return parts.join(" and ");
}

/** What a decision covers, in words: the API's sentence when it sent one, else built here. */
function covers(d) {
  if (d && typeof d.covers === "string") return d.covers;
  const scope = d && d.scope ? d.scope : "number";
  const target = asText(d && (d.target || d.number));
  if (scope === "prefix") return `every caller number starting ${target}`;
  if (scope === "trunk") {
    const m = matchWords(d.match);
    return `calls entering through trunk ${target}` + (m ? ` with ${m}` : "");
  }
  if (scope === "number") return target;
  return `${asText(scope)} ${target}`;
}

function scopeBadge(scope) {
  const s = scope || "number";
  return el("span", {className: `badge scope scope-${String(s).replace(/[^a-z]/g, "")}`}, SCOPE_NAMES[s] || asText(s));
}

/** The number, range or trunk of a decision: a link to its lookup, with its scope. */
function targetCell(d) {
  if (!d || !d.scope || d.scope === "number") return numberLink(asText(d && d.number));
  return el("span", {}, scopeBadge(d.scope), " ", keyLink(asText(d.number), covers(d)));
}

/* ---------------------------------------------------------------------------------------- */
/* API access                                                                                */

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** fetch with the bearer token; the API's {"error": ...} message is surfaced verbatim. */
async function api(method, path, body) {
  const init = {method, headers: {"Authorization": `Bearer ${state.token}`, "Accept": "application/json"}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(API + path, init);
  } catch (err) {
    throw new ApiError(0, `cannot reach the API: ${err.message}`);
  }
  let data = null;
  const text = await resp.text();
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!resp.ok) {
    const message = data && typeof data.error === "string" ? data.error : `HTTP ${resp.status} ${resp.statusText}`;
    if (resp.status === 401) showLogin(message);
    throw new ApiError(resp.status, message);
  }
  return data;
}

/** Runs an API action and shows its error in errorId; returns undefined on failure. */
async function guarded(errorId, fn) {
  setText(errorId, "");
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return undefined;  // login shows it
    setText(errorId, err.message);
    return undefined;
  }
}

const enc = encodeURIComponent;

/** GET that answers ``fallback`` on 404 (e.g. a policy nobody has published yet). */
async function getOr404(path, fallback) {
  try {
    return await api("GET", path);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return fallback;
    throw err;
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Login and role                                                                            */

function showLogin(message) {
  stopPolling();
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  state.who = null;
  $("app").hidden = true;
  $("who").hidden = true;
  $("login-panel").hidden = false;
  setText("login-error", message || "");
  $("token").value = "";
  $("token").focus();
}

async function login(token) {
  state.token = token;
  setText("login-error", "");
  let who;
  try {
    who = await api("GET", "/whoami");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showLogin(err.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.who = who;
  setText("whoami-name", who.name);
  setText("whoami-role", who.role);
  applyRole(who.role);
  $("login-panel").hidden = true;
  $("who").hidden = false;
  $("app").hidden = false;
  try {
    await loadPolicyNames();
    await Promise.all([loadPolicy(), refreshSlow()]);
  } finally {
    // One panel that cannot render (a value from the network nobody foresaw) must not keep
    // the live view from ever starting.
    startPolling();
  }
}

function canWrite() { return !!state.who && (ROLE_RANK[state.who.role] ?? -1) >= ROLE_RANK.analyst; }

/** Viewers read: write forms are hidden and their inputs disabled (the API refuses anyway). */
function applyRole(role) {
  document.body.dataset.role = role;
  const write = canWrite();
  for (const node of document.querySelectorAll(".write")) node.hidden = !write;
  for (const node of document.querySelectorAll(".write button, .write input, .write select")) node.disabled = !write;
}

/* ---------------------------------------------------------------------------------------- */
/* Live view                                                                                 */

function startPolling() {
  stopPolling();
  const tick = async () => {
    state.polls += 1;
    try {
      await Promise.all([refreshDecisions(), refreshCampaigns()]);
      if (state.polls % SLOW_POLL_EVERY === 0) await refreshSlow();
    } catch (err) {
      console.error("console refresh failed", err);  // the next tick tries again
    } finally {
      if (state.token) state.pollTimer = setTimeout(tick, DECISIONS_POLL_MS);
    }
  };
  state.pollTimer = setTimeout(tick, 0);
}

function stopPolling() {
  clearTimeout(state.pollTimer);
  state.pollTimer = 0;
}

async function refreshDecisions() {
  const data = await guarded("decisions-status", () => api("GET", `/decisions/recent?limit=${DECISIONS_LIMIT}`));
  if (!data) return;
  const rows = (data.decisions || []).map((d) => el("tr",
    {className: d.dry_run ? "dry" : "", dataset: {number: d.number, action: d.action}},
    el("td", {className: "nowrap", title: `event time of the call that tipped it: ${fmtTime(d.trigger_ts)}`}, fmtTime(d.decided_at)),
    el("td", {}, actionBadge(d.action, d.dry_run)),
    el("td", {}, targetCell(d)),
    el("td", {className: "num"}, fmtScore(d.score)),
    el("td", {className: "nowrap"}, `${d.policy} v${d.policy_version}`),
    el("td", {}, reasonList(d.reasons))));
  fillRows("decisions", rows, "no decisions yet");
  setText("decisions-status", `${rows.length} shown, updated ${new Date().toLocaleTimeString()}`);
}

async function refreshCampaigns() {
  const data = await guarded("campaigns-status", () => api("GET", "/campaigns"));
  if (!data) return;
  const rows = (data.campaigns || []).map((d) => el("tr",
    {className: d.dry_run ? "dry" : "", dataset: {key: asText(d.number), scope: asText(d.scope), action: asText(d.action)}},
    el("td", {className: "nowrap"}, fmtTime(d.decided_at)),
    el("td", {}, scopeBadge(d.scope)),
    el("td", {}, keyLink(asText(d.number), covers(d))),
    el("td", {}, actionBadge(d.action, d.dry_run)),
    el("td", {className: "nowrap"}, fmtTime(d.until)),
    el("td", {className: "nowrap"}, `${asText(d.policy)} v${asText(d.policy_version)}`),
    el("td", {}, reasonList(d.reasons))));
  fillRows("campaigns", rows, "no range or trunk decision in force");
  setText("campaigns-status", `${rows.length} in force`);
}

async function refreshOffenders() {
  const data = await guarded("offenders-status", () => api("GET", `/offenders?limit=${OFFENDERS_LIMIT}`));
  if (!data) return;
  const rows = (data.offenders || []).map((o) => el("tr", {dataset: {number: o.number}},
    el("td", {}, o.scope && o.scope !== "number" ? keyLink(asText(o.number)) : numberLink(o.number)),
    el("td", {className: "num"}, fmtScore(o.score)),
    el("td", {}, o.action ? actionBadge(o.action, false) : ""),
    el("td", {className: "num"}, o.attempts_1h ?? ""),
    el("td", {}, reasonList(o.reasons))));
  fillRows("offenders", rows, "no offenders");
}

function numberLink(number) {
  return keyLink(number);
}

/** A link that looks up a number or a source key (prefix:..., trunk:...); ``text`` shown. */
function keyLink(key, text) {
  const a = el("a", {href: "#lookup-panel", className: "number"}, text === undefined ? key : text);
  a.addEventListener("click", (ev) => { ev.preventDefault(); $("lookup-number").value = key; lookup(key); });
  return a;
}

async function refreshSlow() {
  await Promise.all([refreshOffenders(), refreshVersions(), refreshAllowlist(), refreshAppeals(),
                     refreshSwitches(), loadPolicyNames(), state.dirty ? null : loadPolicy(true)]);
}

async function refreshSwitches() {
  const data = await guarded("decisions-status", () => api("GET", "/switches"));
  if (!data) return;
  const badge = $("kill-switch-state");
  badge.textContent = data.dry_run_all ? "GLOBAL DRY-RUN ON" : "";
  badge.title = data.dry_run_all ? `by ${data.author}: ${data.reason}` : "";
  badge.className = data.dry_run_all ? "badge dry-run" : "badge";
}

/* ---------------------------------------------------------------------------------------- */
/* Policy editor and what-if                                                                 */

/** Fills the policy picker with the published names; "default" (what workers apply unless
 * configured otherwise) is chosen first and always offered, even before anything is published. */
async function loadPolicyNames() {
  const data = await guarded("policy-error", () => api("GET", "/policies"));
  const names = new Set(["default"]);
  for (const pair of (data && data.policies) || []) {
    const p = pair.live || pair.shadow;
    if (p && p.name) names.add(p.name);
  }
  const select = $("policy-name");
  select.replaceChildren(...[...names].sort().map((n) => el("option", {value: n}, n)));
  if (!names.has(state.policyName)) state.policyName = "default";
  select.value = state.policyName;
}

/** Reads the live and shadow policy and puts the live one in the editor (unless quiet and
 * nothing changed, so a background refresh never overwrites an analyst's unsaved edit). */
async function loadPolicy(quiet) {
  const data = await guarded("policy-error", () => getOr404(`/policies/${enc(state.policyName)}`, {live: null, shadow: null}));
  if (!data) return;
  const changed = !state.live || !data.live || data.live.version !== state.live.version;
  state.live = data.live;
  state.shadow = data.shadow;
  showShadow();
  if (quiet && !changed) return;
  setText("policy-title", data.live ? `${data.live.name} v${data.live.version}` : `${state.policyName} (none published)`);
  setText("policy-loaded", data.live
    ? `live: v${data.live.version} by ${data.live.author}: ${data.live.reason}`
    : "no live policy yet: the worker applies its built-in defaults");
  fillEditor(data.live);
}

function fillEditor(policy) {
  const p = policy || {};
  const t = p.thresholds || BUILTIN_THRESHOLDS;
  for (const action of THRESHOLD_ACTIONS) {
    $(`slider-${action}`).value = String(t[action]);
    showSliderValue(action);
  }
  for (const input of document.querySelectorAll("input.evidence")) {
    input.value = p[input.dataset.field] ?? "";
    input.placeholder = "default";
  }
  $("dry-run").checked = !!p.dry_run;
  const scopes = p.scopes && typeof p.scopes === "object" ? p.scopes : {};
  for (const input of document.querySelectorAll("input.scope-threshold")) {
    const sp = scopes[input.dataset.scope] || {};
    const st = sp.thresholds && typeof sp.thresholds === "object" ? sp.thresholds : BUILTIN_SCOPE_THRESHOLDS;
    const v = st[input.dataset.action];
    input.value = typeof v === "number" ? String(v) : "";
  }
  state.dirty = false;
  clearTimeout(state.whatifTimer);
  state.whatifSeq += 1;  // a preview still in flight is of values no longer in the editor
  $("whatif-result").replaceChildren();
  setText("whatif-status", "move a slider to preview its effect");
  setText("whatif-error", "");
}

function showSliderValue(action) {
  setText(`value-${action}`, Number($(`slider-${action}`).value).toFixed(2));
}

/** The live policy with the editor's values: what the what-if and Apply send. */
function candidatePolicy() {
  const base = state.live ? structuredClone(state.live) : {};
  for (const f of SERVER_FIELDS) delete base[f];
  base.name = state.policyName;  // the what-if compares with this policy's live version
  base.thresholds = {...(base.thresholds || {})};
  for (const action of THRESHOLD_ACTIONS) base.thresholds[action] = Number($(`slider-${action}`).value);
  for (const input of document.querySelectorAll("input.evidence")) {
    // Empty: the policy's default. Otherwise sent as typed: the API says what is wrong with
    // "-1" or "2.5" (422), verbatim.
    if (input.value === "") delete base[input.dataset.field];
    else base[input.dataset.field] = Number(input.value);
  }
  base.dry_run = $("dry-run").checked;
  // Per-scope thresholds: the rest of each scope's policy (evidence, TTLs, ...) stays as live.
  const scopes = base.scopes && typeof base.scopes === "object" ? {...base.scopes} : {};
  for (const input of document.querySelectorAll("input.scope-threshold")) {
    if (input.value === "") continue;
    const sc = input.dataset.scope;
    const sp = {...(scopes[sc] || {})};
    sp.thresholds = {...(sp.thresholds || {}), [input.dataset.action]: Number(input.value)};
    scopes[sc] = sp;
  }
  if (Object.keys(scopes).length) base.scopes = scopes;
  return base;
}

function editorChanged() {
  state.dirty = true;
  setText("policy-message", "");
  setText("whatif-status", "preview pending...");
  clearTimeout(state.whatifTimer);
  state.whatifTimer = setTimeout(runWhatif, WHATIF_DEBOUNCE_MS);
}

async function runWhatif() {
  const seq = ++state.whatifSeq;
  setText("whatif-error", "");
  setText("whatif-status", "computing...");
  let data;
  try {
    data = await api("POST", "/whatif", {policy: candidatePolicy(), window_s: WHATIF_WINDOW_S});
  } catch (err) {
    if (seq !== state.whatifSeq) return;
    setText("whatif-status", "");
    $("whatif-result").replaceChildren();
    if (err.status !== 401) setText("whatif-error", err.message);
    return;
  }
  if (seq !== state.whatifSeq) return;  // a newer move is on its way
  renderWhatif(data);
}

function renderWhatif(data) {
  const cur = data.current || {};
  const cand = data.candidate || {};
  const fp = data.estimated_false_positives || {};
  const diff = (a, b) => {
    const d = (b || 0) - (a || 0);
    return d === 0 ? "" : (d > 0 ? `+${d}` : String(d));
  };
  const counts = el("table", {id: "whatif-counts", className: "compact"},
    el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {}, "current"), el("th", {}, "candidate"), el("th", {}, "change"))),
    el("tbody", {},
      ...THRESHOLD_ACTIONS.map((a) => el("tr", {},
        el("th", {}, a),
        el("td", {id: `whatif-current-${a}`, className: "num"}, cur[a] ?? 0),
        el("td", {id: `whatif-candidate-${a}`, className: "num"}, cand[a] ?? 0),
        el("td", {className: "num"}, diff(cur[a], cand[a])))),
      el("tr", {className: "fp"},
        el("th", {title: "numbers acted on that carry a legitimate label"}, "est. false positives"),
        el("td", {id: "whatif-fp-current", className: "num"}, fp.current ?? 0),
        el("td", {id: "whatif-fp-candidate", className: "num"}, fp.candidate ?? 0),
        el("td", {className: "num"}, diff(fp.current, fp.candidate)))));
  const byScope = data.by_scope || {};
  const keysByScope = data.keys_by_scope || {};
  const scopeRows = SOURCE_SCOPES.filter((sc) => keysByScope[sc] && byScope[sc]).map((sc) => {
    const b = byScope[sc] || {};
    return el("tr", {dataset: {scope: sc}}, el("th", {}, `${SCOPE_NAMES[sc]}s (${keysByScope[sc]})`),
      ...THRESHOLD_ACTIONS.map((a) => el("td", {id: `whatif-${sc}-${a}`, className: "num"},
        `${asText((b.current || {})[a] ?? 0)} -> ${asText((b.candidate || {})[a] ?? 0)}`)));
  });
  const scopeTable = scopeRows.length ? el("table", {id: "whatif-scopes", className: "compact"},
    el("thead", {}, el("tr", {}, el("th", {}, "campaigns (current -> candidate)"),
      ...THRESHOLD_ACTIONS.map((a) => el("th", {}, a)))), el("tbody", {}, ...scopeRows)) : null;
  const changed = data.changed || [];
  const changedRows = changed.slice(0, WHATIF_CHANGED_SHOWN).map((c) => el("tr",
    {dataset: {number: c.number, from: c.from || "", to: c.to || ""}},
    el("td", {}, c.scope && c.scope !== "number" ? keyLink(asText(c.number)) : numberLink(c.number)),
    el("td", {}, c.from ? actionBadge(c.from, false) : "none"),
    el("td", {}, c.to ? actionBadge(c.to, false) : "none"),
    el("td", {className: "num"}, fmtScore(c.score)),
    el("td", {}, c.legit_label ? "legitimate label" : "")));
  const total = data.changed_total ?? changed.length;
  const changedTable = el("table", {id: "whatif-changed", className: "compact"},
    el("thead", {}, el("tr", {}, ...["number", "from", "to", "score", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...changedRows));
  const parts = [
    el("p", {className: "status"}, `${data.numbers ?? 0} numbers scored in the last `
      + `${Math.round((data.window_s ?? WHATIF_WINDOW_S) / 60)} min; ${total} would change`),
    counts,
    scopeTable,
    total ? changedTable : el("p", {id: "whatif-nochange"}, "no number would change")];
  if (total > changedRows.length) parts.push(el("p", {className: "status"}, `... and ${total - changedRows.length} more`));
  $("whatif-result").replaceChildren(...parts);
  setText("whatif-status", `preview of the editor's values (${new Date().toLocaleTimeString()})`);
}

async function writePolicy(stage) {
  setText("policy-message", "");
  const reason = $("apply-reason").value.trim();
  if (!reason) { setText("policy-error", "a reason is required"); $("apply-reason").focus(); return; }
  const data = await guarded("policy-error", () => api("PUT", `/policies/${enc(state.policyName)}`,
    {policy: candidatePolicy(), reason, stage}));
  if (!data) return;
  const p = data.policy;
  $("apply-reason").value = "";
  if (stage === "live") {
    setText("policy-message", `applied: ${p.name} v${p.version} by ${p.author}`);
    state.dirty = false;
    await loadPolicy();
    setText("policy-message", `applied: ${p.name} v${p.version} by ${p.author}`);
  } else {
    setText("policy-message", `shadow started: ${p.name} v${p.version}; its decisions go to decisions.shadow`);
    await loadPolicy(true);
  }
  await refreshVersions();
}

function showShadow() {
  const s = state.shadow;
  $("shadow-box").hidden = !s;
  if (!s) return;
  const t = s.thresholds || {};
  setText("shadow-info", `v${s.version} by ${s.author}: ${s.reason} | label ${fmtScore(t.label)}, `
    + `rate_limit ${fmtScore(t.rate_limit)}, block ${fmtScore(t.block)}${s.dry_run ? ", dry-run" : ""}`);
}

async function shadowAction(kind) {
  const reason = $("shadow-reason").value.trim();
  if (!reason) { setText("shadow-error", "a reason is required"); return; }
  const name = enc(state.policyName);
  const ok = await guarded("shadow-error", () => kind === "promote"
    ? api("POST", `/policies/${name}/promote`, {reason})
    : api("DELETE", `/policies/${name}/shadow?reason=${enc(reason)}`));
  if (!ok) return;
  $("shadow-reason").value = "";
  await loadPolicy(kind === "discard");
  await refreshVersions();
}

/* ---------------------------------------------------------------------------------------- */
/* Version history                                                                           */

async function refreshVersions() {
  const data = await guarded("versions-error", () => getOr404(`/policies/${enc(state.policyName)}/versions`, {versions: []}));
  if (!data) return;
  const liveVersion = state.live ? state.live.version : null;
  const rows = (data.versions || []).map((p) => {
    const t = p.thresholds || {};
    const button = el("button", {type: "button", className: "rollback", dataset: {version: String(p.version)},
                                 disabled: !canWrite() || p.version === liveVersion},
      p.version === liveVersion ? "live" : "roll back");
    button.hidden = !canWrite();
    button.addEventListener("click", () => rollback(p.version));
    return el("tr", {dataset: {version: String(p.version)}},
      el("td", {className: "num"}, `v${p.version}`),
      el("td", {}, p.author),
      el("td", {}, p.reason),
      el("td", {className: "nowrap"}, `${fmtScore(t.label)} / ${fmtScore(t.rate_limit)} / ${fmtScore(t.block)}`),
      el("td", {}, p.dry_run ? "yes" : ""),
      el("td", {}, button));
  });
  fillRows("versions", rows, "no versions published");
}

async function rollback(version) {
  const reason = $("rollback-reason").value.trim();
  if (!reason) { setText("versions-error", "a reason is required for a rollback"); $("rollback-reason").focus(); return; }
  const data = await guarded("versions-error", () => api("POST", `/policies/${enc(state.policyName)}/rollback`, {version, reason}));
  if (!data) return;
  $("rollback-reason").value = "";
  setText("policy-message", `rolled back: v${data.policy.version} now has the content of v${version}`);
  state.dirty = false;
  await loadPolicy();
  await refreshVersions();
}

/* ---------------------------------------------------------------------------------------- */
/* Allowlist                                                                                 */

async function refreshAllowlist() {
  const data = await guarded("allow-error", () => api("GET", "/allowlist"));
  if (!data) return;
  const builtin = (data.builtin || []).map((b) => el("tr", {className: "builtin", dataset: {number: b.number}},
    el("td", {}, b.number), el("td", {}, ""), el("td", {}, b.reason), el("td", {}, "never"),
    el("td", {}, "built in"), el("td", {}, "")));
  const entries = (data.entries || []).map((e) => {
    const remove = el("button", {type: "button", className: "allow-remove", dataset: {number: e.number}}, "remove");
    remove.hidden = !canWrite();
    remove.disabled = !canWrite();
    remove.addEventListener("click", () => removeAllow(e.number, !!e.trunk));
    return el("tr", {dataset: {number: e.number, kind: e.trunk ? "trunk" : (e.prefix ? "prefix" : "number")}},
      el("td", {}, e.number), el("td", {}, e.trunk ? "trunk" : (e.prefix ? "prefix" : "")), el("td", {}, e.reason),
      el("td", {className: "nowrap"}, e.expires_at ? fmtTime(e.expires_at) : "never"),
      el("td", {}, e.author), el("td", {}, remove));
  });
  fillRows("allowlist", [...entries, ...builtin], "empty");
}

async function addAllow() {
  const number = $("allow-number").value.trim();
  const reason = $("allow-reason").value.trim();
  if (!number || !reason) { setText("allow-error", "a number and a reason are required"); return; }
  const body = $("allow-trunk").checked ? {trunk: number, reason}
    : {number, prefix: $("allow-prefix").checked, reason};
  const ttl = $("allow-ttl").value.trim();
  if (ttl) body.ttl_s = Number(ttl);
  const ok = await guarded("allow-error", () => api("POST", "/allowlist", body));
  if (!ok) return;
  $("allow-number").value = "";
  $("allow-reason").value = "";
  $("allow-ttl").value = "";
  $("allow-prefix").checked = false;
  $("allow-trunk").checked = false;
  await refreshAllowlist();
}

/** ``switch/trunk`` as two path segments (a '/' inside the trunk part is escaped). */
function trunkPath(tid) {
  const i = String(tid).indexOf("/");
  return i < 0 ? enc(tid) : `${enc(tid.slice(0, i))}/${enc(tid.slice(i + 1))}`;
}

async function removeAllow(number, trunk) {
  const reason = $("allow-reason").value.trim();
  if (!reason) { setText("allow-error", `type a reason above to remove ${number}`); $("allow-reason").focus(); return; }
  const path = trunk ? `/allowlist/trunk/${trunkPath(number)}` : `/allowlist/${enc(number)}`;
  const ok = await guarded("allow-error", () => api("DELETE", `${path}?reason=${enc(reason)}`));
  if (!ok) return;
  $("allow-reason").value = "";
  await refreshAllowlist();
}

/* ---------------------------------------------------------------------------------------- */
/* Feedback and appeals                                                                      */

/** A label id the API de-duplicates on: one click is one label, even if the POST is retried. */
function labelId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return "console-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function sendFeedback() {
  setText("fb-result", "");
  const number = $("fb-number").value.trim();
  if (!number) { setText("fb-error", "a number is required"); return; }
  const label = {id: labelId(), number, label: $("fb-label").value, source: "console"};
  const note = $("fb-note").value.trim();
  if (note) label.note = note;
  const data = await guarded("fb-error", () => api("POST", "/feedback", label));
  if (!data) return;
  setText("fb-result", data.accepted ? `label ${label.label} recorded for ${number}` : `already recorded (duplicate)`);
  $("fb-note").value = "";
}

async function refreshAppeals() {
  const data = await guarded("appeal-error", () => api("GET", "/appeals?status=pending"));
  if (!data) return;
  const rows = (data.appeals || []).map((a) => {
    const buttons = el("span", {className: "nowrap"});
    for (const outcome of ["upheld", "denied"]) {
      const b = el("button", {type: "button", className: `appeal-${outcome}`, dataset: {id: a.id}},
                   outcome === "upheld" ? "uphold" : "deny");
      b.hidden = !canWrite();
      b.disabled = !canWrite();
      b.addEventListener("click", () => decideAppeal(a.id, outcome));
      buttons.append(b, " ");
    }
    return el("tr", {dataset: {id: a.id, number: a.number}},
      el("td", {}, numberLink(a.number)), el("td", {}, a.appellant), el("td", {}, a.contact),
      el("td", {}, a.note), el("td", {className: "nowrap"}, fmtTime(a.at)), el("td", {}, buttons));
  });
  fillRows("appeals", rows, "no pending appeals");
}

async function decideAppeal(id, outcome) {
  const reason = $("appeal-reason").value.trim();
  if (!reason) { setText("appeal-error", "a reason is required"); $("appeal-reason").focus(); return; }
  const ok = await guarded("appeal-error", () => api("POST", `/appeals/${enc(id)}/decision`, {outcome, reason}));
  if (!ok) return;
  $("appeal-reason").value = "";
  await refreshAppeals();
}

/* ---------------------------------------------------------------------------------------- */
/* Number lookup                                                                             */

/** API path of a lookup key: a number, ``prefix:DIGITS`` or ``trunk:SWITCH/TRUNK``. */
function lookupPath(key) {
  if (key.startsWith("prefix:")) return `/prefixes/${enc(key.slice(7))}`;
  if (key.startsWith("trunk:")) return `/trunks/${trunkPath(key.slice(6))}`;
  return `/numbers/${enc(key)}`;
}

async function lookup(number) {
  number = (number || "").trim();
  if (!number) { setText("lookup-error", "type a number, prefix:DIGITS or trunk:SWITCH/TRUNK"); return; }
  const source = number.startsWith("prefix:") || number.startsWith("trunk:");
  const data = await guarded("lookup-error", () => api("GET", lookupPath(number)));
  if (!data) { $("lookup-result").replaceChildren(); return; }
  const title = source ? asText(data.key) : asText(data.number);
  const out = [el("h3", {id: "lookup-title"}, title)];
  if (source) {
    out.push(el("p", {id: "lookup-scope"}, scopeBadge(data.scope), " ",
      covers({scope: data.scope, target: data.target})));
    if (data.protected) out.push(el("p", {className: "ok", id: "lookup-allowlisted"}, `protected: ${asText(data.protected)}`));
  } else if (data.allowlisted) {
    out.push(el("p", {className: "ok", id: "lookup-allowlisted"}, `allowlisted: ${asText(data.allowlisted)}`));
  }
  const c = data.current;
  out.push(el("p", {id: "lookup-current"}, c
    ? el("span", {}, "now: ", actionBadge(c.action, c.dry_run), ` until ${fmtTime(c.until)} (policy ${asText(c.policy)} v${asText(c.policy_version)})`)
    : "now: no action in force"));
  if (canWrite()) out.push(manualControls(title, lookupPath(title)));

  const covered = Array.isArray(data.covered_by) ? data.covered_by : [];
  if (!source && covered.length) {
    out.push(el("h4", {}, "Ranges in force that cover this number"), el("ul", {id: "lookup-covered"},
      ...covered.map((d) => el("li", {}, actionBadge(d.action, d.dry_run), " ", keyLink(asText(d.number), covers(d)),
        ` until ${fmtTime(d.until)} (${asText(d.policy)} v${asText(d.policy_version)})`, reasonList(d.reasons)))));
  }

  const decisions = (data.decisions || []).map((d) => el("tr", {},
    el("td", {className: "nowrap"}, fmtTime(d.decided_at)), el("td", {}, actionBadge(d.action, d.dry_run)),
    el("td", {className: "num"}, fmtScore(d.score)), el("td", {className: "nowrap"}, `${asText(d.policy)} v${asText(d.policy_version)}`),
    el("td", {}, source ? el("p", {className: "covers"}, covers(d)) : null, reasonList(d.reasons))));
  out.push(el("h4", {}, "Decisions"), decisions.length
    ? el("table", {id: "lookup-decisions", className: "compact"},
        el("thead", {}, el("tr", {}, ...["decided", "action", "score", "policy", "why"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...decisions))
    : el("p", {className: "status"}, "no decisions"));

  const s = data.score;
  out.push(el("h4", {}, "Last score"));
  if (s && typeof s === "object") {
    const classifier = s.classifier === null || s.classifier === undefined ? "not yet trained" : fmtScore(s.classifier);
    out.push(el("p", {id: "lookup-score"}, `score ${fmtScore(s.score)} at ${fmtTime(s.ts)} `
      + `(prior ${fmtScore(s.prior)}, anomaly ${fmtScore(s.anomaly)}, classifier ${classifier})`));
    const features = s.features && typeof s.features === "object" ? s.features : {};
    const feats = Object.entries(features).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => el("tr", {},
      el("td", {}, k), el("td", {className: "num"}, typeof v === "number" ? String(Math.round(v * 1000) / 1000) : asText(v))));
    out.push(el("div", {className: "scroll features"}, el("table", {id: "lookup-features", className: "compact"},
      el("thead", {}, el("tr", {}, el("th", {}, "feature"), el("th", {}, "value"))), el("tbody", {}, ...feats))));
  } else {
    out.push(el("p", {className: "status"}, "not scored recently"));
  }

  const labels = Array.isArray(data.labels) ? data.labels : [];
  if (labels.length) {
    out.push(el("h4", {}, "Labels"), el("ul", {id: "lookup-labels"},
      ...labels.map((l) => el("li", {}, `${fmtTime(l.ts)} ${asText(l.label)}${l.source ? ` (${asText(l.source)})` : ""}${l.note ? `: ${asText(l.note)}` : ""}`))));
  }
  const acks = Array.isArray(data.acks) ? data.acks : [];
  if (acks.length) {
    out.push(el("h4", {}, "Switch acks"), el("ul", {id: "lookup-acks"},
      ...acks.map((a) => el("li", {}, `${asText(a.action)} ${asText(a.status)} in ${Math.round((a.latency_s || 0) * 1000)} ms`
                                      + (a.detail ? `: ${asText(a.detail)}` : "")))));
  }
  $("lookup-result").replaceChildren(...out);
}

/** Manual block / unblock of what was looked up (a number, range or trunk): a Decision of
 * policy "manual", audited. The API refuses a protected range or trunk (409) and says why. */
function manualControls(key, path) {
  const reason = el("input", {id: "manual-reason", className: "grow", placeholder: "reason for a manual block / unblock"});
  const ttl = el("input", {id: "manual-ttl", type: "number", min: "1", step: "1", value: String(MANUAL_BLOCK_TTL_S),
                           title: "block TTL in seconds"});
  const block = el("button", {id: "manual-block", type: "button"}, "Block");
  const unblock = el("button", {id: "manual-unblock", type: "button"}, "Unblock");
  const act = async (kind) => {
    const why = reason.value.trim();
    if (!why) { setText("manual-error", "a reason is required"); reason.focus(); return; }
    const body = kind === "block" ? {reason: why, ttl_s: Number(ttl.value)} : {reason: why};
    const ok = await guarded("manual-error", () => api("POST", `${path}/${kind}`, body));
    if (!ok) return;
    await Promise.all([lookup(key), refreshDecisions(), refreshCampaigns()]);
  };
  block.addEventListener("click", () => act("block"));
  unblock.addEventListener("click", () => act("unblock"));
  return el("div", {className: "manual"}, el("div", {className: "row"}, reason, ttl, block, unblock),
            el("p", {id: "manual-error", className: "error", role: "alert"}));
}

/* ---------------------------------------------------------------------------------------- */
/* Wiring                                                                                    */

function wire() {
  $("policy-name").addEventListener("change", async () => {
    state.policyName = $("policy-name").value;
    state.live = null;
    state.dirty = false;
    setText("policy-message", "");
    await loadPolicy();
    await refreshVersions();
  });
  $("login-form").addEventListener("submit", (ev) => { ev.preventDefault(); login($("token").value.trim()); });
  $("logout").addEventListener("click", () => showLogin("logged out"));
  for (const action of THRESHOLD_ACTIONS) {
    $(`slider-${action}`).addEventListener("input", () => { showSliderValue(action); editorChanged(); });
  }
  for (const input of document.querySelectorAll("input.evidence, input.scope-threshold")) input.addEventListener("input", editorChanged);
  $("dry-run").addEventListener("change", editorChanged);
  $("apply-form").addEventListener("submit", (ev) => { ev.preventDefault(); writePolicy("live"); });
  $("start-shadow").addEventListener("click", () => writePolicy("shadow"));
  $("reset-policy").addEventListener("click", () => {
    fillEditor(state.live);
    setText("policy-message", "");
    setText("policy-error", "");
  });
  $("promote").addEventListener("click", () => shadowAction("promote"));
  $("discard").addEventListener("click", () => shadowAction("discard"));
  $("allow-form").addEventListener("submit", (ev) => { ev.preventDefault(); addAllow(); });
  $("feedback-form").addEventListener("submit", (ev) => { ev.preventDefault(); sendFeedback(); });
  $("lookup-form").addEventListener("submit", (ev) => { ev.preventDefault(); lookup($("lookup-number").value); });
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) login(saved);
  else showLogin("");
});
