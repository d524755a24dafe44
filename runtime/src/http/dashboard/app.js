// Prism's dashboard: polls GET /projectors every second, and browses views and streams through
// the HTTP API. Plain JavaScript, no dependencies; every text from the server goes through
// textContent, never innerHTML.
"use strict";

const POLL_MS = 1000;
const SPARK_WINDOW_MS = 60_000;
const DEAD_LETTERS_EVERY_MS = 5000;
const VIEW_PAGE = 20;
const STREAM_PAGE = 20;
const STREAM_LIST_PAGE = 50;
const TOKEN_KEY = "prism.token";

// ---------------------------------------------------------------------------------------------
// Small helpers

const $ = (id) => document.getElementById(id);

/** Creates an element: h("div", {class: "x"}, "text", child, ...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const number = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "–");

function duration(secs) {
  if (secs === null || secs === undefined) return "–";
  secs = Math.round(secs);
  if (secs < 60) return `${secs} s`;
  const m = Math.floor(secs / 60);
  if (m < 60) return `${m} min ${secs % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

const shortHash = (hash) => (hash ? hash.slice(0, 12) : "–");

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

function token() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** GETs `path` from the API with the stored token; resolves to {body, headers}. */
async function api(path) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  let response;
  try {
    response = await fetch(path, { headers, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, `Prism is unreachable (${e.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    if (response.status === 401) tokenNeeded(t !== "");
    const message = (body && body.error) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return { body, headers: response.headers };
}

const enc = encodeURIComponent;

function query(params) {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${enc(k)}=${enc(v)}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

function showError(el, error) {
  el.hidden = !error;
  el.textContent = error ? error.message || String(error) : "";
}

// ---------------------------------------------------------------------------------------------
// Token

function tokenNeeded(hadToken) {
  $("token-panel").hidden = false;
  $("token-note").textContent = hadToken
    ? "Prism refused the saved token (401). Paste a token that grants reads."
    : "Prism needs a token for this (401). Paste a read, write or admin token.";
  $("token-note").className = "warn";
}

function setupToken() {
  $("token-toggle").addEventListener("click", () => {
    $("token-panel").hidden = !$("token-panel").hidden;
    if (!$("token-panel").hidden) $("token-input").focus();
  });
  $("token-input").value = token();
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    try {
      localStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    } catch {
      // Private mode without storage: nothing to keep.
    }
    $("token-note").textContent = "Saved.";
    $("token-note").className = "muted";
    $("token-panel").hidden = true;
    refreshAll();
  });
  $("token-clear").addEventListener("click", () => {
    try {
      localStorage.removeItem(TOKEN_KEY);
    } catch {
      // Nothing stored.
    }
    $("token-input").value = "";
    $("token-note").textContent = "Forgotten.";
    $("token-note").className = "muted";
    refreshAll();
  });
}

// ---------------------------------------------------------------------------------------------
// Projectors, polled

/** name → {card, samples: [{t, eps}], deadLettersAt, deadLetters} */
const projectors = new Map();

async function poll() {
  try {
    const { body } = await api("/projectors");
    renderProjectors(body);
    setConnection("ok", `live · updated ${new Date().toLocaleTimeString("en-GB")}`);
  } catch (e) {
    if (e.status === 401) setConnection("bad", "token needed");
    else setConnection("bad", e.status ? e.message : "disconnected, retrying…");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function setConnection(kind, text) {
  const conn = $("conn");
  conn.className = `conn conn-${kind}`;
  conn.textContent = text;
}

function renderProjectors({ head, projectors: list }) {
  $("head").textContent = number(head);
  // New events may be in new streams: refresh the list (unless the user paged it further).
  if (head !== stream.head && !stream.listExpanded && Date.now() - stream.listAt >= 2000) {
    stream.head = head;
    loadStreamList(false);
  }
  $("projector-count").textContent = list.length === 1 ? "1 projector" : `${list.length} projectors`;
  $("no-projectors").hidden = list.length > 0;
  const now = Date.now();
  const seen = new Set();
  const container = $("projectors");
  for (const status of list) {
    seen.add(status.name);
    let entry = projectors.get(status.name);
    if (!entry) {
      entry = { card: projectorCard(status.name), samples: [], deadLettersAt: 0, deadLetters: null };
      projectors.set(status.name, entry);
    }
    // Cards keep the server's order (by name).
    container.append(entry.card.root);
    entry.samples.push({ t: now, eps: status.events_per_sec || 0 });
    entry.samples = entry.samples.filter((s) => now - s.t <= SPARK_WINDOW_MS);
    updateCard(entry, status, now);
    if (now - entry.deadLettersAt >= DEAD_LETTERS_EVERY_MS) {
      entry.deadLettersAt = now;
      loadDeadLetters(status.name, entry);
    }
  }
  for (const [name, entry] of projectors) {
    if (!seen.has(name)) {
      entry.card.root.remove();
      projectors.delete(name);
    }
  }
  updateProjectorPicker(list.map((p) => p.name));
}

function stat(label, cls) {
  const value = h("dd", { class: cls }, "–");
  return { el: h("div", { class: "stat" }, h("dt", {}, label), value), value };
}

function projectorCard(name) {
  const c = {};
  c.state = h("span", { class: "state" });
  c.module = h("code", { class: "module-hash" });
  c.generation = h("span", { class: "generation" });
  c.owner = h("span", { class: "owner muted", hidden: true });
  c.subscription = h("div", { class: "subscription muted" });
  const checkpoint = stat("checkpoint", "checkpoint");
  const lag = stat("lag", "lag");
  const eps = stat("events/s", "eps");
  const dead = stat("dead letters", "dead-count");
  c.checkpoint = checkpoint.value;
  c.lag = lag.value;
  c.eps = eps.value;
  c.dead = dead.value;

  c.sparkLine = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  c.sparkArea = document.createElementNS("http://www.w3.org/2000/svg", "polygon");
  c.sparkLine.setAttribute("class", "spark-line");
  c.sparkArea.setAttribute("class", "spark-area");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 300 44");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "events per second over the last minute");
  const base = document.createElementNS("http://www.w3.org/2000/svg", "line");
  base.setAttribute("class", "spark-base");
  for (const [k, v] of Object.entries({ x1: 0, y1: 42, x2: 300, y2: 42 })) base.setAttribute(k, v);
  svg.append(base, c.sparkArea, c.sparkLine);
  c.sparkLabel = h("span", { class: "spark-label muted" });

  c.rebuildBar = h("div", { class: "bar-fill" });
  c.rebuildText = h("span", { class: "rebuild-text" });
  c.rebuildError = h("div", { class: "rebuild-error", hidden: true });
  c.rebuild = h(
    "div",
    { class: "rebuild", hidden: true },
    h("div", { class: "bar" }, c.rebuildBar),
    c.rebuildText,
    c.rebuildError,
  );

  c.faultMessage = h("div", { class: "fault-message" });
  c.faultEvent = h("div", { class: "fault-event" });
  c.fault = h("div", { class: "fault", hidden: true }, h("strong", {}, "Faulted"), c.faultMessage, c.faultEvent);
  c.reloadError = h("div", { class: "reload-error", hidden: true });

  c.deadRows = h("tbody");
  c.deadSummary = h("summary");
  c.deadLetters = h(
    "details",
    { class: "dead-letters", hidden: true },
    c.deadSummary,
    h(
      "table",
      { class: "data compact" },
      h("thead", {}, h("tr", {}, h("th", {}, "position"), h("th", {}, "stream"), h("th", {}, "type"), h("th", {}, "error"))),
      c.deadRows,
    ),
  );

  c.root = h(
    "article",
    { class: "card", "data-projector": name },
    h("header", { class: "card-head" }, h("h3", { class: "name" }, name), c.state),
    h("div", { class: "card-sub" }, "module ", c.module, " · ", c.generation, c.owner),
    c.subscription,
    h("dl", { class: "stats" }, checkpoint.el, lag.el, eps.el, dead.el),
    h("div", { class: "spark-box" }, svg, c.sparkLabel),
    c.rebuild,
    c.fault,
    c.reloadError,
    c.deadLetters,
    h(
      "footer",
      { class: "card-foot" },
      h("button", { type: "button", class: "ghost small browse-view", onclick: () => openView(name) }, "Browse view"),
    ),
  );
  return c;
}

function updateCard(entry, s, now) {
  const c = entry.card;
  c.state.textContent = s.state;
  c.state.className = `state state-${s.state}`;
  c.root.dataset.state = s.state;
  c.module.textContent = shortHash(s.module);
  c.module.title = s.module;
  c.generation.textContent = `generation ${s.generation} · schema v${s.schema_version}`;
  // In a cluster: the node that owns it (and answered for it).
  c.owner.hidden = !s.owner;
  c.owner.textContent = s.owner ? ` · on node ${s.owner}` : "";
  c.subscription.textContent = subscriptionText(s.subscription);
  c.checkpoint.textContent = number(s.checkpoint);
  c.lag.textContent = number(s.lag);
  c.lag.classList.toggle("behind", s.lag > 0);
  c.eps.textContent = number(s.events_per_sec);
  const dead = entry.deadLetters;
  c.dead.textContent = dead === null ? number(s.dead_letters_this_run) : dead.length >= 1000 ? "1,000+" : number(dead.length);
  c.dead.classList.toggle("warn-text", (dead ? dead.length : s.dead_letters_this_run) > 0);
  drawSpark(c, entry.samples, now);

  const r = s.rebuild;
  c.rebuild.hidden = !r;
  if (r) {
    const pct = Math.max(0, Math.min(100, r.percent || 0));
    c.rebuildBar.style.width = `${pct}%`;
    c.rebuildText.textContent =
      `Rebuilding into generation ${r.generation} (${shortHash(r.module)}): ${pct.toFixed(1)} % · ` +
      `${number(r.checkpoint)} of ${number(s.head)} · ${number(r.events_per_sec)} events/s · ETA ${duration(r.eta_secs)}`;
    c.rebuildError.hidden = !r.error;
    c.rebuildError.textContent = r.error ? `rebuild failed: ${faultText(r.error)}` : "";
  }

  const f = s.error;
  c.fault.hidden = !f;
  if (f) {
    c.faultMessage.textContent = f.message;
    c.faultEvent.replaceChildren();
    if (f.position !== undefined) {
      c.faultEvent.append(
        `failing event #${number(f.position)}`,
        f.event_type ? ` · ${f.event_type}` : "",
        f.stream ? " · stream " : "",
        f.stream
          ? h("button", { type: "button", class: "link", onclick: () => openStream(f.stream, 1, f.position) }, f.stream)
          : "",
      );
    }
  }
  c.reloadError.hidden = !s.reload_error;
  c.reloadError.textContent = s.reload_error ? `Reload rolled back: ${s.reload_error}` : "";
}

function subscriptionText(sub) {
  if (!sub) return "";
  const types = sub.event_types || [];
  const prefixes = sub.stream_prefixes || [];
  if (!types.length && !prefixes.length) return "subscribes to every event";
  const parts = [];
  if (types.length) parts.push(types.join(", "));
  if (prefixes.length) parts.push(`streams ${prefixes.map((p) => `${p}*`).join(", ")}`);
  return `subscribes to ${parts.join(" · ")}`;
}

function faultText(f) {
  return f.position !== undefined ? `${f.message} (event #${f.position})` : f.message;
}

function drawSpark(c, samples, now) {
  const W = 300;
  const H = 44;
  const peak = Math.max(1, ...samples.map((s) => s.eps));
  const points = samples.map((s) => {
    const x = W - ((now - s.t) / SPARK_WINDOW_MS) * W;
    const y = H - 2 - (s.eps / peak) * (H - 6);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  c.sparkLine.setAttribute("points", points.join(" "));
  if (points.length) {
    const first = points[0].split(",")[0];
    c.sparkArea.setAttribute("points", `${first},${H} ${points.join(" ")} ${W},${H}`);
  } else {
    c.sparkArea.setAttribute("points", "");
  }
  const max = Math.max(0, ...samples.map((s) => s.eps));
  c.sparkLabel.textContent = `events/s, last minute · peak ${number(max)}`;
}

async function loadDeadLetters(name, entry) {
  try {
    const { body } = await api(`/projectors/${enc(name)}/dead-letters?limit=1000`);
    entry.deadLetters = body.dead_letters;
  } catch {
    return; // The poll shows the connection problem.
  }
  const c = entry.card;
  const letters = entry.deadLetters;
  c.deadLetters.hidden = letters.length === 0;
  c.deadSummary.textContent = `${letters.length >= 1000 ? "1,000+" : letters.length} dead letter${letters.length === 1 ? "" : "s"}`;
  c.deadRows.replaceChildren(
    ...letters.slice(0, 100).map((d) =>
      h(
        "tr",
        {},
        h("td", {}, number(d.position)),
        h("td", {}, h("button", { type: "button", class: "link", onclick: () => openStream(d.stream, 1, d.position) }, d.stream)),
        h("td", {}, d.event_type),
        h("td", { class: "error-cell" }, d.error),
      ),
    ),
  );
  c.dead.textContent = letters.length >= 1000 ? "1,000+" : number(letters.length);
}

// ---------------------------------------------------------------------------------------------
// View browser

const view = { projector: "", prefix: "", cursors: [null], page: 0 };

function updateProjectorPicker(names) {
  const select = $("view-projector");
  const current = [...select.options].map((o) => o.value);
  if (current.join("\n") !== names.join("\n")) {
    const keep = select.value;
    select.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
    if (names.includes(keep)) select.value = keep;
  }
  if (!view.projector && names.length) {
    select.value = names[0];
    view.projector = names[0];
    loadView();
  }
}

function openView(name) {
  $("view-projector").value = name;
  view.projector = name;
  view.prefix = $("view-prefix").value;
  view.cursors = [null];
  view.page = 0;
  loadView();
  $("view-browser").scrollIntoView({ behavior: "smooth", block: "start" });
}

async function loadView() {
  if (!view.projector) return;
  const after = view.cursors[view.page];
  const path =
    `/projectors/${enc(view.projector)}/view` +
    query({ prefix: view.prefix, after, limit: VIEW_PAGE });
  let reply;
  try {
    reply = await api(path);
  } catch (e) {
    showError($("view-error"), e);
    $("view-rows").replaceChildren();
    return;
  }
  showError($("view-error"), null);
  const { body, headers } = reply;
  $("view-rows").replaceChildren(
    ...body.items.map((item) =>
      h(
        "tr",
        { "data-key": item.key },
        h("td", { class: "col-key" }, h("code", {}, item.key)),
        h(
          "td",
          {},
          "value" in item
            ? h("pre", { class: "json" }, pretty(item.value))
            : h("pre", { class: "json binary" }, `binary, base64: ${item.value_base64}`),
        ),
      ),
    ),
  );
  $("view-empty").hidden = body.items.length > 0;
  view.cursors[view.page + 1] = body.next;
  view.cursors.length = view.page + 2;
  $("view-prev").disabled = view.page === 0;
  $("view-next").disabled = !body.next;
  $("view-page").textContent = `page ${view.page + 1}`;
  const checkpoint = headers.get("Prism-Checkpoint");
  const generation = headers.get("Prism-Generation");
  $("view-meta").textContent = checkpoint
    ? `as of position ${number(Number(checkpoint))} · generation ${generation}`
    : "";
}

function setupView() {
  $("view-form").addEventListener("submit", (e) => {
    e.preventDefault();
    view.projector = $("view-projector").value;
    view.prefix = $("view-prefix").value;
    view.cursors = [null];
    view.page = 0;
    loadView();
  });
  $("view-projector").addEventListener("change", () => {
    view.projector = $("view-projector").value;
    view.cursors = [null];
    view.page = 0;
    loadView();
  });
  $("view-next").addEventListener("click", () => {
    if (!view.cursors[view.page + 1]) return;
    view.page += 1;
    loadView();
  });
  $("view-prev").addEventListener("click", () => {
    if (view.page === 0) return;
    view.page -= 1;
    loadView();
  });
}

// ---------------------------------------------------------------------------------------------
// Stream browser

const stream = { name: "", from: 1, highlight: null, listAfter: null, listExpanded: false, listAt: 0, head: null };

function openStream(name, from, highlight) {
  $("stream-name").value = name;
  $("stream-from").value = from;
  stream.highlight = highlight ?? null;
  readStream(name, from);
  $("stream-browser").scrollIntoView({ behavior: "smooth", block: "start" });
}

async function readStream(name, from) {
  if (!name) return;
  stream.name = name;
  stream.from = from;
  let body;
  try {
    ({ body } = await api(`/streams/${enc(name)}` + query({ from, limit: STREAM_PAGE })));
  } catch (e) {
    showError($("stream-error"), e.status === 404 ? new Error(`No stream named “${name}”.`) : e);
    $("stream-events").replaceChildren();
    $("stream-meta").textContent = "";
    $("stream-hint").hidden = true;
    $("stream-prev").disabled = true;
    $("stream-next").disabled = true;
    $("stream-page").textContent = "";
    return;
  }
  showError($("stream-error"), null);
  $("stream-hint").hidden = true;
  $("stream-meta").textContent = `${name} · version ${number(body.version)}`;
  $("stream-events").replaceChildren(...body.events.map(eventItem));
  const last = body.events.length ? body.events[body.events.length - 1].stream_version : from;
  $("stream-page").textContent = body.events.length
    ? `versions ${number(from)}–${number(last)} of ${number(body.version)}`
    : `nothing from version ${number(from)} (the stream has ${number(body.version)})`;
  stream.next = body.next;
  $("stream-next").disabled = !body.next;
  $("stream-prev").disabled = from <= 1;
  for (const li of $("stream-list").children) li.classList.toggle("current", li.dataset.stream === name);
}

/** "2026-01-02T03:04:05.678Z" → "2026-01-02 03:04:05 UTC" (the full time is the tooltip). */
function shortTime(timestamp) {
  const m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)/.exec(timestamp || "");
  return m ? `${m[1]} ${m[2]} UTC` : timestamp;
}

function eventItem(e) {
  const metadata = e.metadata && typeof e.metadata === "object" && Object.keys(e.metadata).length ? e.metadata : null;
  return h(
    "li",
    { class: `event${stream.highlight === e.position ? " highlight" : ""}`, "data-position": e.position },
    h(
      "div",
      { class: "event-head" },
      h("span", { class: "event-version" }, `v${e.stream_version}`),
      h("span", { class: "event-type" }, e.type),
      h("span", { class: "event-position muted" }, `position ${number(e.position)}`),
      h("time", { class: "muted", datetime: e.timestamp, title: e.timestamp }, shortTime(e.timestamp)),
    ),
    h("pre", { class: "json" }, pretty(e.data)),
    metadata ? h("pre", { class: "json metadata" }, `metadata ${pretty(metadata)}`) : null,
  );
}

async function loadStreamList(more) {
  let body;
  try {
    ({ body } = await api("/streams" + query({ after: more ? stream.listAfter : null, limit: STREAM_LIST_PAGE })));
  } catch {
    return;
  }
  const items = body.streams.map((s) =>
    h(
      "li",
      { "data-stream": s.stream, class: s.stream === stream.name ? "current" : "" },
      h(
        "button",
        { type: "button", class: "stream-link", onclick: () => openStream(s.stream, 1) },
        h("span", { class: "stream-name" }, s.stream),
        h("span", { class: "stream-version muted" }, number(s.version)),
      ),
    ),
  );
  stream.listExpanded = more;
  stream.listAt = Date.now();
  if (more) $("stream-list").append(...items);
  else $("stream-list").replaceChildren(...items);
  stream.listAfter = body.next;
  $("stream-list-more").hidden = !body.next;
  $("stream-names").replaceChildren(
    ...[...$("stream-list").children].map((li) => h("option", { value: li.dataset.stream })),
  );
}

function setupStreams() {
  $("stream-form").addEventListener("submit", (e) => {
    e.preventDefault();
    stream.highlight = null;
    readStream($("stream-name").value.trim(), Math.max(1, Number($("stream-from").value) || 1));
  });
  $("stream-next").addEventListener("click", () => {
    if (!stream.next) return;
    $("stream-from").value = stream.next;
    readStream(stream.name, stream.next);
  });
  $("stream-prev").addEventListener("click", () => {
    const from = Math.max(1, stream.from - STREAM_PAGE);
    $("stream-from").value = from;
    readStream(stream.name, from);
  });
  $("stream-list-more").addEventListener("click", () => loadStreamList(true));
}

// ---------------------------------------------------------------------------------------------

function refreshAll() {
  loadStreamList(false);
  loadView();
  if (stream.name) readStream(stream.name, stream.from);
  for (const entry of projectors.values()) entry.deadLettersAt = 0;
}

setupToken();
setupView();
setupStreams();
loadStreamList(false);
poll();
