// The fleet console (docs/CONSOLE.md): a hash-routed page over the hub's JSON API. The token
// lives in sessionStorage and goes in the Authorization header of every call; nothing is
// written into the page as HTML (text nodes only), so device data cannot inject markup.
"use strict";

const S = { token: sessionStorage.getItem("fleet.token"), who: null, stop: null, fetched: null };
const PAGE = 50;
const SVG = "http://www.w3.org/2000/svg";

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}

function s(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : String(k));
  return e;
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + S.token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch("/api/v1" + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) {
    const err = new Error((data && data.error) || "HTTP " + r.status);
    err.status = r.status;
    throw err;
  }
  return { data, headers: r.headers };
}

const get = async (path) => (await api("GET", path)).data;

function time(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "never"; }

function ago(t) {
  if (!t) return "never";
  const d = Math.max(0, Math.round(Date.now() / 1000 - t));
  return d < 90 ? d + " s ago" : d < 5400 ? Math.round(d / 60) + " min ago" : Math.round(d / 3600) + " h ago";
}

function showError(e) {
  document.getElementById("error").textContent = e ? String(e.message || e) : "";
  if (e && e.status === 401) signOut();
}

function fresh() {
  const f = document.getElementById("fresh");
  f.textContent = S.fetched ? "data as of " + time(S.fetched) + " (" + ago(S.fetched) + ")" : "";
}
setInterval(fresh, 1000);

function mark() { S.fetched = Date.now() / 1000; fresh(); }

function table(cols, rows, id) {
  return h("table", { id }, h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

function online(d) { return d.presence && d.presence.state === "online"; }
function conv(d) { return d.status ? d.status.convergence : "unreported"; }
function labels(l) { return Object.entries(l || {}).map(([k, v]) => k + "=" + v).join(", "); }
function devLink(id) { return h("a", { href: "#/device/" + encodeURIComponent(id) }, id); }

// A horizontal bar of segments [count, class, title], `w` wide.
function bar(parts, w, label) {
  const total = parts.reduce((a, p) => a + p[0], 0);
  const g = s("svg", { width: w, height: 18, viewBox: `0 0 ${w} 18`, role: "img", "aria-label": label });
  g.append(s("rect", { x: 0, y: 0, width: w, height: 18, class: "track" }));
  let x = 0;
  for (const [n, cls, title] of parts) {
    if (!n || !total) continue;
    const width = (n / total) * w;
    g.append(s("rect", { x, y: 0, width, height: 18, class: cls }, s("title", {}, `${title}: ${n}`)));
    x += width;
  }
  return g;
}

// ---- sign-in -------------------------------------------------------------------------------

function signInPage(main) {
  const input = h("input", { id: "token", type: "password", autocomplete: "off", placeholder: "API token", required: true });
  const form = h("form", { id: "signin-form" }, h("h1", {}, "Sign in"),
    h("p", {}, "Paste an API token (fleetctl tokens create, or the one the demo prints)."),
    input, h("button", { id: "signin", type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    S.token = input.value.trim();
    try {
      S.who = await get("/whoami");
      sessionStorage.setItem("fleet.token", S.token);
      showError(null);
      go("#/overview");
    } catch (e) {
      S.token = null;
      showError(e.status === 401 ? new Error("That token is not valid.") : e);
    }
  });
  main.append(form);
  input.focus();
}

function signOut() {
  sessionStorage.removeItem("fleet.token");
  S.token = null;
  S.who = null;
  go("#/signin");
}

// Shows `hash`: through the hashchange event when it changes (one render, not two).
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function targetText(t) {
  if (t.group !== undefined) return "group " + t.group;
  if (t.selector !== undefined) return "selector " + labels(t.selector);
  if (t.devices !== undefined) return "devices " + t.devices.join(", ");
  return JSON.stringify(t);
}

// ---- overview ------------------------------------------------------------------------------

const DONE = ["completed", "aborted", "rolled_back"];

async function overview(main) {
  const [sum, rollouts, failed, deps, releases] = await Promise.all([
    get("/fleet/summary"), get("/rollouts"), get("/devices?state=failed&limit=10"), get("/deployments"),
    get("/releases"),
  ]);
  const rel = Object.fromEntries(releases.map((r) => [r.id, `${r.name} ${r.version}`]));
  const release = (id) => rel[id] ? `${rel[id]} (#${id})` : `#${id}`;
  mark();
  const active = rollouts.filter((r) => !DONE.includes(r.stage.stage));
  const tile = (id, n, what) => h("div", { class: "tile", id }, h("b", {}, n), h("span", {}, what));
  main.replaceChildren(h("h1", { id: "overview" }, "Fleet overview"),
    h("div", { class: "tiles" },
      tile("t-devices", sum.devices, "devices"), tile("t-online", sum.online, "online"),
      tile("t-offline", sum.devices - sum.online, "offline"), tile("t-converged", sum.converged, "converged"),
      tile("t-failed", sum.failed, "failed"), tile("t-stale", sum.stale, "stale"),
      tile("t-pending", sum.publish_pending, "publishing")),
    h("h2", {}, "Health"),
    bar([[sum.converged, "ok", "converged"], [sum.failed, "bad", "failed"],
      [Math.max(0, sum.devices - sum.converged - sum.failed), "wait", "other"]], 480, "fleet health"),
    h("h2", {}, "Active rollouts"),
    active.length ? table(["Rollout", "Release", "Stage", "Admitted"], active.map((r) => [
      h("a", { href: "#/rollout/" + r.id }, "#" + r.id), release(r.release), stageText(r.stage), r.admitted]), "active")
      : h("p", {}, "None."),
    h("h2", {}, "Releases deployed"),
    deps.length ? table(["Deployment", "Release", "Target", "Priority"], deps.map((d) => [
      "#" + d.id, release(d.release_id), targetText(d.target), d.priority]), "deployments") : h("p", {}, "None."),
    h("h2", {}, "Recent failures"),
    failed.length ? table(["Device", "Labels", "Last seen"], failed.map((d) => [
      devLink(d.id), labels(d.labels), ago(d.last_seen)]), "failures") : h("p", {}, "None."));
}

// ---- devices -------------------------------------------------------------------------------

async function devices(main, params) {
  const q = params.get("q") || "";
  const state = params.get("state") || "";
  const page = Math.max(0, parseInt(params.get("page") || "0", 10) || 0);
  const qs = new URLSearchParams({ limit: PAGE, offset: page * PAGE });
  if (q) qs.set("q", q);
  if (state) qs.set("state", state);
  const { data, headers } = await api("GET", "/devices?" + qs);
  mark();
  const total = parseInt(headers.get("x-total-count") || "0", 10);
  const search = h("input", { id: "q", type: "search", value: q, placeholder: "id or label (site=north)" });
  const sel = h("select", { id: "state" }, ["", "online", "offline", "converged", "converging", "deferred",
    "failed", "stale", "unreported"].map((v) => h("option", { value: v, selected: v === state }, v || "any state")));
  const go = (p) => {
    const n = new URLSearchParams();
    if (search.value.trim()) n.set("q", search.value.trim());
    if (sel.value) n.set("state", sel.value);
    if (p) n.set("page", p);
    location.hash = "#/devices?" + n;
  };
  const form = h("form", { id: "device-search" }, search, sel, h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); go(0); });
  const prev = h("button", { type: "button", id: "prev", disabled: page === 0 }, "‹ Previous");
  const next = h("button", { type: "button", id: "next", disabled: (page + 1) * PAGE >= total }, "Next ›");
  prev.addEventListener("click", () => go(page - 1));
  next.addEventListener("click", () => go(page + 1));
  main.replaceChildren(h("h1", {}, "Devices"), form,
    h("p", { id: "count" }, `${total} matching, showing ${data.length ? page * PAGE + 1 : 0}–${page * PAGE + data.length}`),
    table(["Device", "Labels", "Profile", "Presence", "State", "Revision (running / hub)", "Last seen"],
      data.map((d) => [devLink(d.id), labels(d.labels), d.profile, online(d) ? "online" : "offline", conv(d),
        `${d.status && d.status.applied_revision != null ? d.status.applied_revision : "–"} / ${d.desired_revision != null ? d.desired_revision : "–"}`,
        ago(d.last_seen)]), "devices"),
    h("div", { class: "pager" }, prev, next));
}

// ---- device detail -------------------------------------------------------------------------

function eventText(e) {
  const b = e.body || {};
  if (b.type === "desired_rejected") return `desired state rejected (${b.code}): ${b.reason}`;
  const rest = Object.entries(b).filter(([k]) => k !== "type").map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
  return (b.type || "event").replace(/_/g, " ") + (rest.length ? " " + rest.join(" ") : "");
}

async function device(main, id) {
  const enc = encodeURIComponent(id);
  const [d, events, why] = await Promise.all([
    get("/devices/" + enc), get("/devices/" + enc + "/events?limit=20"), get("/devices/" + enc + "/explain"),
  ]);
  mark();
  const st = d.status || {};
  const rejected = events.filter((e) => e.body && e.body.type === "desired_rejected");
  main.replaceChildren(h("h1", { id: "device" }, d.id),
    h("dl", {},
      h("dt", {}, "Labels"), h("dd", { id: "labels" }, labels(d.labels) || "none"),
      h("dt", {}, "Profile"), h("dd", {}, `${d.profile} (${d.arch}), agent ${d.agent_version}`),
      h("dt", {}, "Presence"), h("dd", {}, online(d) ? "online" : "offline"),
      h("dt", {}, "Last seen"), h("dd", {}, `${time(d.last_seen)} (${ago(d.last_seen)})`),
      h("dt", {}, "State"), h("dd", { id: "convergence" }, conv(d) + (st.stale ? ", stale" : "")),
      h("dt", {}, "Revision"), h("dd", { id: "revision" },
        `running ${st.applied_revision != null ? st.applied_revision : "–"}, accepted ${st.desired_revision != null ? st.desired_revision : "–"}, hub holds ${d.desired_revision != null ? d.desired_revision : "–"}`)),
    rejected.length ? h("div", { class: "alert", id: "rejections" }, h("h2", {}, "Rejected desired states"),
      rejected.map((e) => h("p", {}, `${time(e.time)}: ${e.body.reason} (${e.body.code})`))) : null,
    h("h2", {}, "Workloads"),
    (st.workloads || []).length ? table(["Name", "Phase", "Restarts", "Image"], st.workloads.map((w) => [
      w.name, typeof w.phase === "object" ? JSON.stringify(w.phase) : w.phase, w.restarts, String(w.digest).slice(0, 19)]), "workloads")
      : h("p", {}, "No workloads reported."),
    h("h2", {}, "Why it runs what it runs"),
    h("p", { id: "explain" }, why.release ? `${why.release} from deployment #${why.deployment}` +
      (why.phase != null ? `, admitted in rollout phase ${why.phase + 1}` : "") :
      why.candidates.length ? `Nothing applies yet: ${why.candidates.length} deployment(s) target it (below).` : "No deployment targets it."),
    why.candidates.length ? table(["Deployment", "Release", "Priority", "Target", "Rollout", "Verdict"],
      why.candidates.map((c) => [`#${c.deployment}`, c.release_name || c.release, c.priority, c.target,
        c.rollout != null ? h("a", { href: "#/rollout/" + c.rollout }, "#" + c.rollout) : "–", c.verdict]), "candidates") : null,
    h("p", {}, "Maintenance window: " + (why.maintenance_window || "none")),
    h("h2", {}, "Recent events"),
    events.length ? h("ul", { id: "events" }, events.map((e) => h("li", {}, `${time(e.time)} ${eventText(e)}`)))
      : h("p", {}, "No events."));
}

// ---- rollouts ------------------------------------------------------------------------------

async function rollouts(main) {
  const list = await get("/rollouts");
  mark();
  main.replaceChildren(h("h1", {}, "Rollouts"),
    list.length ? table(["Rollout", "Deployment", "Release", "Stage", "Phases", "Admitted", "Created"],
      list.slice().reverse().map((r) => [h("a", { href: "#/rollout/" + r.id }, "#" + r.id), "#" + r.deployment,
        r.release, r.stage.stage, r.phases, r.admitted, time(r.created_at)]), "rollouts") : h("p", {}, "No rollouts."));
}

// Which commands make sense in a stage (the server decides; this only hides the pointless).
function commandsFor(stage) {
  switch (stage.stage) {
    case "created": case "running": case "baking": return ["pause", "abort", "rollback"];
    case "awaiting_approval": return ["approve", "pause", "abort", "rollback"];
    case "paused": return ["resume", "abort", "rollback"];
    case "completed": return ["rollback"];
    default: return [];
  }
}

function stageText(st) {
  const extra = Object.entries(st).filter(([k]) => k !== "stage")
    .map(([k, v]) => k === "phase" ? `phase ${v + 1}` : k === "until" ? `until ${time(v)}` : `${k.replace(/_/g, " ")}: ${v}`);
  return st.stage.replace(/_/g, " ") + (extra.length ? " (" + extra.join(", ") + ")" : "");
}

function renderRollout(box, r, id) {
  const canAct = S.who && S.who.role !== "viewer";
  const phases = r.phases.map((p) => h("div", { class: "phase", "data-phase": p.phase },
    h("span", { class: "plabel" }, `Phase ${p.phase + 1}: ${p.succeeded}/${p.devices} updated` +
      (p.failed ? `, ${p.failed} failed` : "") + (p.offline ? `, ${p.offline} offline` : "")),
    bar([[p.succeeded, "ok", "succeeded"], [p.updating, "busy", "updating"], [p.failed, "bad", "failed"],
      [p.pending, "wait", "pending"]], 360, `phase ${p.phase + 1} progress`)));
  const buttons = canAct ? commandsFor(r.rollout.stage).map((c) => {
    const b = h("button", { type: "button", class: "cmd", id: "cmd-" + c }, c);
    b.addEventListener("click", async () => {
      if ((c === "abort" || c === "rollback") && !confirm(`${c} rollout #${id}?`)) return;
      try { await api("POST", `/rollouts/${id}/${c}`); showError(null); await refreshRollout(box, id); }
      catch (e) { showError(e); }
    });
    return b;
  }) : [];
  box.replaceChildren(
    h("p", {}, "Stage: ", h("b", { id: "stage" }, stageText(r.rollout.stage)),
      ` · release ${r.rollout.release} · deployment #${r.rollout.deployment} · ${r.rollout.admitted} admitted · phase started ${ago(r.phase_started_at)}`),
    h("div", { class: "actions", id: "actions" }, buttons),
    h("div", { id: "phases" }, phases));
}

// Re-renders only when something changed, so a button is not replaced under the pointer.
async function refreshRollout(box, id) {
  const r = await get("/rollouts/" + id);
  mark();
  const key = JSON.stringify(r) + (S.who && S.who.role);
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  renderRollout(box, r, id);
}

// Follows the progress stream with fetch (EventSource cannot send the Authorization header):
// every event re-reads the status; the log shows the newest events.
async function follow(id, box, log, signal) {
  const r = await fetch(`/api/v1/rollouts/${id}/events`, { headers: { Authorization: "Bearer " + S.token }, signal });
  if (!r.ok || !r.body) throw new Error("progress stream: HTTP " + r.status);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let pending = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      try {
        const e = JSON.parse(data);
        log.prepend(h("li", {}, `${time(e.time)} ${e.action} by ${e.actor}`));
        while (log.children.length > 30) log.lastChild.remove();
      } catch (_) { /* a keep-alive or a partial line */ }
      clearTimeout(pending);
      pending = setTimeout(() => refreshRollout(box, id).catch(showError), 200);
    }
  }
}

async function rollout(main, id) {
  const box = h("div", { id: "rollout" });
  const log = h("ul", { id: "history" });
  main.replaceChildren(h("h1", {}, `Rollout #${id}`), box, h("h2", {}, "History (live)"), log);
  await refreshRollout(box, id);
  const ctl = new AbortController();
  S.stop = () => ctl.abort();
  follow(id, box, log, ctl.signal).catch((e) => { if (e.name !== "AbortError") showError(e); });
}

// ---- routing -------------------------------------------------------------------------------

async function route() {
  if (S.stop) { S.stop(); S.stop = null; }
  clearInterval(S.poll);
  const main = document.getElementById("main");
  const [path, query] = (location.hash.slice(1) || "/overview").split("?");
  const params = new URLSearchParams(query || "");
  const signedIn = !!(S.token && S.who);
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn;
  document.getElementById("who").textContent = signedIn ? `${S.who.name} (${S.who.role})` : "";
  document.body.dataset.role = signedIn ? S.who.role : "";
  if (!signedIn) { S.fetched = null; fresh(); main.replaceChildren(); signInPage(main); return; }
  const parts = path.split("/").filter(Boolean);
  const show = async () => {
    try {
      if (parts[0] === "devices") await devices(main, params);
      else if (parts[0] === "device" && parts[1]) await device(main, decodeURIComponent(parts[1]));
      else if (parts[0] === "rollouts") await rollouts(main);
      else if (parts[0] === "rollout" && parts[1]) await rollout(main, parseInt(parts[1], 10));
      else await overview(main);
      showError(null);
    } catch (e) { showError(e); }
  };
  main.replaceChildren(h("p", {}, "Loading…"));
  await show();
  // Pages without a stream of their own re-read every 5 s; the footer says how fresh they are.
  if (parts[0] !== "rollout") {
    S.poll = setInterval(() => {
      if (document.activeElement && document.activeElement.closest("form")) return;
      show();
    }, 5000);
  }
}

async function start() {
  document.getElementById("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  if (S.token) {
    try { S.who = await get("/whoami"); } catch (_) { S.token = null; sessionStorage.removeItem("fleet.token"); }
  }
  route();
}

document.addEventListener("DOMContentLoaded", start);
