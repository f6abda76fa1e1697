// The console's page: log in, then follow the bridge through one server-sent-event stream.
// Everything shown is set with textContent: conversation text and log fields come from users
// and upstreams, so none of it may become markup.

const api = (path) => `/console/api/${path}`;
let csrf = "";
let events = null;
let lastLog = 0;
let current = null; // the conversation open in the Conversations tab

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

async function call(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.headers["X-Console-CSRF"] = csrf;
    init.body = JSON.stringify(body ?? {});
  }
  const resp = await fetch(api(path), init);
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) showLogin();
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

function since(seconds) {
  const ago = Math.max(0, Date.now() / 1000 - seconds);
  if (ago < 60) return `${Math.round(ago)} s ago`;
  if (ago < 3600) return `${Math.round(ago / 60)} min ago`;
  return new Date(seconds * 1000).toLocaleString();
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

function showLogin() {
  if (events) events.close();
  events = null;
  $("app").hidden = true;
  $("login").hidden = false;
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  startEvents();
}

function renderOverview(o) {
  $("version").textContent = `v${o.version}`;
  $("connections").textContent = o.connections;
  $("users-online").textContent = o.users_online;
  $("uptime").textContent = duration(o.uptime);
  const t = o.traffic;
  $("mpm").textContent = t.messages_per_minute;
  $("rpm").textContent = t.replies_per_minute;
  // From the /metrics counts, over the last minute (see adapters/console/figures.py).
  const r = o.replies;
  const pair = (a, b) => (a === null ? "–" : `${a} / ${b} ms`);
  $("first-token").textContent = pair(r.first_token_p50, r.first_token_p95);
  $("latency").textContent = pair(r.reply_p50, r.reply_p95);
  $("window").textContent = r.window_seconds < 59
    ? `Latencies, errors and tokens: since the start (${Math.round(r.window_seconds)} s ago).`
    : "Latencies, errors and tokens: the last minute.";
  const listed = (counts) => Object.entries(counts).map(([k, n]) => `${k} ${n}`).join(", ") || "none";
  $("errors").textContent = listed(r.errors);
  $("tokens").textContent = listed(r.tokens);
  $("status").textContent = o.health.status;
  const body = $("components").tBodies[0];
  body.replaceChildren();
  for (const [name, c] of Object.entries(o.health.components)) {
    const row = el("tr");
    row.append(el("td", name), el("td", c.state, `state-${c.state}`), el("td", since(c.since)), el("td", c.detail));
    body.append(row);
  }
  renderNodes(o.health.nodes);
}

function address(n) {
  if (!n.port) return "–";
  const host = String(n.host ?? "");
  return host.includes(":") ? `[${host}]:${n.port}` : `${host}:${n.port}`;
}

function ago(seconds) {
  return `${Math.max(0, Math.round(Date.now() / 1000 - seconds))} s ago`;
}

// A cluster's live nodes (the /readyz `nodes` section); a single bridge has none and the
// panel stays hidden. Node ids come from each node's configuration: text only.
function renderNodes(nodes) {
  const panel = $("nodes-panel");
  if (!Array.isArray(nodes)) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  $("nodes-count").textContent = nodes.length ? `${nodes.length} live` : "cannot be listed";
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  for (const n of nodes) {
    const row = el("tr", null, n.self ? "self" : "");
    row.dataset.node = n.node_id;
    const name = el("td", n.node_id, "node-id");
    if (n.self) name.append(" ", el("small", "(this one)", "this-one"));
    row.append(name, el("td", address(n)), el("td", since(n.started ?? n.since)), el("td", ago(n.seen), "seen"));
    body.append(row);
  }
}

function renderLogs(entries) {
  const body = $("logs").tBodies[0];
  for (const e of entries) {
    lastLog = Math.max(lastLog, e.seq);
    const row = el("tr");
    const fields = Object.entries(e.fields).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
    row.append(el("td", new Date(e.time * 1000).toLocaleTimeString()), el("td", e.level, `state-${e.level === "info" ? "ok" : "error"}`), el("td", e.event), el("td", fields.join(" "), "fields"));
    body.prepend(row);
  }
  while (body.rows.length > 500) body.deleteRow(-1);
}

function startEvents() {
  if (events) events.close();
  const params = new URLSearchParams({
    level: $("log-level").value,
    conversation: $("log-conversation").value,
    after: String(lastLog),
  });
  events = new EventSource(`${api("events")}?${params}`);
  events.addEventListener("open", () => $("live").classList.add("on"));
  events.addEventListener("error", () => $("live").classList.remove("on"));
  events.addEventListener("overview", (m) => {
    const o = JSON.parse(m.data);
    renderOverview(o);
    if (!$("tab-schedules").hidden) refreshSchedules();
  });
  // A message was stored: the list (and the open conversation, if it moved) are re-read, at
  // most every few seconds however busy the bridge is (see listConversations).
  events.addEventListener("conversations", () => {
    if (!$("tab-conversations").hidden) listConversations();
  });
  events.addEventListener("logs", (m) => renderLogs(JSON.parse(m.data)));
  events.addEventListener("logout", showLogin);
}

// One list request at a time, at most one per LIST_EVERY ms: on a busy bridge every message
// stored sends a conversations event, and each read costs the bridge a database query. A call
// that comes too soon, or while a read is under way, is folded into one later read.
const LIST_EVERY = 3000;
let listing = false;
let listAgain = false;
let listTimer = null;
let listedAt = 0;

function listConversations() {
  if (listing) {
    listAgain = true;
    return;
  }
  const wait = listedAt + LIST_EVERY - Date.now();
  if (wait > 0) {
    if (!listTimer) listTimer = setTimeout(() => { listTimer = null; listConversations(); }, wait);
    return;
  }
  listing = true;
  listedAt = Date.now();
  refreshConversations()
    .catch(() => {})
    .finally(() => {
      listing = false;
      if (listAgain) {
        listAgain = false;
        listConversations();
      }
    });
}

async function refreshConversations() {
  const { conversations, window: scanned } = await call("GET", "conversations");
  $("conversations-note").textContent = `Message counts are over the newest ${scanned} messages stored.`;
  const body = $("conversations").tBodies[0];
  body.replaceChildren();
  let moved = false;
  for (const c of conversations) {
    const row = el("tr", null, "clickable");
    row.dataset.user = c.user;
    row.dataset.contact = c.contact;
    row.append(el("td", c.edge), el("td", c.user), el("td", c.contact_name), el("td", c.thread), el("td", c.messages), el("td", since(c.last_activity)));
    row.addEventListener("click", () => openConversation(c));
    body.append(row);
    if (current && c.user === current.user && c.contact === current.contact && c.thread === current.thread && c.last_id !== current.last_id) moved = c;
  }
  // The open conversation is re-read only when a message of its own was stored.
  if (moved) await openConversation(moved);
}

function segmentsText(content) {
  return content.map((s) => (s.type === "text" ? s.data.text : `[${s.type}]`)).join("");
}

async function openConversation(c) {
  current = c;
  const q = new URLSearchParams({ user: c.user, contact: c.contact, thread: c.thread });
  const data = await call("GET", `conversation?${q}`);
  $("conversation").hidden = false;
  $("conversation-title").textContent = `${c.user} ↔ ${c.contact_name} (${c.thread})`;
  if (document.activeElement !== $("persona")) $("persona").value = data.persona || "";
  const list = $("turns");
  list.replaceChildren();
  for (const t of data.turns) {
    const item = el("li", null, t.direction);
    item.dataset.id = t.id;
    item.append(el("span", t.direction === "in" ? "→" : "←"), el("span", segmentsText(t.content), "text"), el("small", since(t.time)));
    const recall = el("button", "Recall", "recall");
    recall.addEventListener("click", () => act("recall", { message_id: t.id }, "Recalled"));
    item.append(recall);
    list.append(item);
  }
}

async function act(path, body, done) {
  try {
    await call("POST", path, body);
    $("conversation-status").textContent = done;
  } catch (e) {
    $("conversation-status").textContent = e.message;
  }
  if (current) await openConversation(current);
}

function when(seconds) {
  return seconds === null ? "–" : new Date(seconds * 1000).toLocaleString();
}

let schedulesShown = "";
async function refreshSchedules() {
  const data = await call("GET", "schedules");
  // Re-drawn only when something changed: a row replaced under the pointer loses its click.
  const shown = JSON.stringify(data);
  if (shown === schedulesShown) return;
  schedulesShown = shown;
  $("schedules-note").textContent = data.enabled ? "" : "The schedule plugin is not loaded.";
  const body = $("schedules").tBodies[0];
  body.replaceChildren();
  for (const s of data.schedules) {
    const row = el("tr", null, s.paused ? "paused" : "");
    row.dataset.id = s.id;
    const last = s.last_run === null ? "never" : `${since(s.last_run)}: ${s.last_result}`;
    const next = s.paused ? "paused" : when(s.next_run);
    const conv = s.thread === "default" ? s.contact : `${s.contact} (${s.thread})`;
    row.append(el("td", s.id), el("td", s.user), el("td", conv), el("td", s.when), el("td", s.prompt, "text"), el("td", next, "next"), el("td", last));
    const actions = el("td", null, "actions");
    const toggle = el("button", s.paused ? "Resume" : "Pause", s.paused ? "resume" : "pause");
    toggle.addEventListener("click", () => scheduleAct(s.paused ? "resume" : "pause", s.id));
    const remove = el("button", "Delete", "delete");
    remove.addEventListener("click", () => scheduleAct("delete", s.id));
    actions.append(toggle, remove);
    row.append(actions);
    body.append(row);
  }
}

async function scheduleAct(what, id) {
  try {
    await call("POST", `schedule/${what}`, { id });
    $("schedules-status").textContent = `Schedule #${id}: ${what === "delete" ? "deleted" : what === "pause" ? "paused" : "resumed"}`;
  } catch (e) {
    $("schedules-status").textContent = e.message;
  }
  await refreshSchedules();
}

function keyOf(c) {
  return { user: c.user, contact: c.contact, thread: c.thread };
}

function switchTab(name) {
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const t of document.querySelectorAll(".tab")) t.hidden = t.id !== `tab-${name}`;
  if (name === "conversations") listConversations();
  if (name === "schedules") refreshSchedules();
}

function wire() {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("login-error").textContent = "";
    try {
      const data = await call("POST", "login", { code: $("code").value });
      csrf = data.csrf;
      $("code").value = "";
      showApp();
    } catch (e) {
      $("login-error").textContent = e.message;
    }
  });
  $("logout").addEventListener("click", async () => {
    await call("POST", "logout").catch(() => {});
    csrf = "";
    showLogin();
  });
  for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => switchTab(b.dataset.tab));
  $("reset").addEventListener("click", () => current && act("reset", keyOf(current), "Context reset"));
  $("persona-save").addEventListener("click", () => current && act("persona", { ...keyOf(current), text: $("persona").value }, "Persona saved"));
  $("log-level").addEventListener("change", () => { $("logs").tBodies[0].replaceChildren(); lastLog = 0; startEvents(); });
  $("log-conversation").addEventListener("change", () => { $("logs").tBodies[0].replaceChildren(); lastLog = 0; startEvents(); });
}

async function boot() {
  wire();
  try {
    const data = await call("GET", "session");
    csrf = data.csrf;
    showApp();
  } catch {
    showLogin();
  }
}

boot();
