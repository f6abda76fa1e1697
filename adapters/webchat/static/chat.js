// The /chat page: a small client of the hub protocol (docs/protocol.md), nothing more.
// Every string from the network goes into the page as text (textContent, never innerHTML),
// so a message or a contact name can never become markup.

const PAGE_ID = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) =>
  b.toString(16).padStart(2, "0"),
).join("");
const $ = (id) => document.getElementById(id);
const ID_KEY = "momobridge.chat.id";
const HEARTBEAT_MS = 20000; // well inside the server's idle timeout (60 s before it pings)
const HEARTBEAT_WAIT_MS = 10000; // no answer by then: the connection is dead, start over
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 15000;
const ACK_DELAY_MS = 100; // a replayed backlog is confirmed with one ack, not one per push

const state = {
  ws: null,
  user: "",
  code: "",
  loggedIn: false,
  wanted: false, // the user asked to be connected (false after a logout or a refused code)
  retries: 0,
  retryTimer: 0,
  beatTimer: 0,
  beatDeadline: 0,
  contacts: [],
  current: null,
  chats: new Map(), // contact id → [message]
  unread: new Map(),
  requests: new Map(), // request_id → handler(frame)
  unsent: [], // messages written while offline: sent after the next login
  nextId: 1,
  maxSeq: 0, // highest push seq this connection has rendered
  ackTimer: 0,
};

// ----- the socket --------------------------------------------------------------------------

function gatewayUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/api/gateway`;
}

function connect() {
  clearTimeout(state.retryTimer);
  setStatus("connecting…");
  const ws = new WebSocket(gatewayUrl());
  state.ws = ws;
  state.maxSeq = 0; // acks count per connection (the server caps them at what it sent it)
  ws.onopen = () => {
    request("system", "login", { "mio-chat-id": state.user, "mio-chat-token": state.code }, onLogin);
  };
  ws.onmessage = (ev) => {
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch {
      return;
    }
    onFrame(frame);
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    onDisconnect(ev.code);
  };
}

function send(frame) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
  state.ws.send(JSON.stringify(frame));
  return true;
}

// Registers the handler before sending: the answer may arrive on the next event.
function request(protocol, type, data, handler, extra = {}) {
  // Unique across reloads and tabs of the same user: a reply pushed to every tab is matched
  // to its bubble by this id.
  const rid = `c-${PAGE_ID}-${state.nextId++}`;
  if (handler) state.requests.set(rid, handler);
  if (!send({ request_id: rid, protocol, type, data, ...extra })) {
    state.requests.delete(rid);
    return null;
  }
  return rid;
}

function onFrame(frame) {
  if (typeof frame.seq === "number" && String(frame.request_id).startsWith("s-")) {
    onPush(frame);
    return;
  }
  const handler = state.requests.get(frame.request_id);
  if (handler) handler(frame);
}

function onLogin(frame) {
  state.requests.delete(frame.request_id);
  if (frame.code === -1) return; // the connection dropped first: the reconnect logs in again
  if (frame.code !== 0) {
    // The server closes with 4001 next; the close handler shows the reason.
    state.wanted = false;
    $("login-error").textContent = frame.data?.reason || "login failed";
    return;
  }
  state.loggedIn = true;
  state.retries = 0;
  state.contacts = Array.isArray(frame.data?.contacts) ? frame.data.contacts : [];
  showChat();
  setStatus("online");
  heartbeat();
  for (const msg of state.unsent.splice(0)) sendMessage(msg);
}

function onDisconnect(code) {
  state.ws = null;
  state.loggedIn = false;
  clearTimeout(state.beatTimer);
  clearTimeout(state.ackTimer);
  // Requests of the dead connection get no more frames. A reply still streaming is not lost:
  // it reaches the outbox and comes back as a push after the next login.
  for (const [rid, handler] of state.requests) handler({ request_id: rid, code: -1, message: "disconnected" });
  state.requests.clear();
  if (code === 4001 || !state.wanted) {
    state.wanted = false;
    showLogin();
    return;
  }
  const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** state.retries) * (1 + Math.random() / 2);
  state.retries += 1;
  setStatus(`offline, reconnecting in ${Math.round(delay / 1000)} s`, true);
  state.retryTimer = setTimeout(connect, delay);
}

function heartbeat() {
  clearTimeout(state.beatTimer);
  state.beatTimer = setTimeout(() => {
    const ws = state.ws;
    const deadline = setTimeout(() => ws && ws.close(), HEARTBEAT_WAIT_MS);
    const rid = request("system", "heartbeat", { timestamp: Date.now() }, (f) => {
      clearTimeout(deadline);
      state.requests.delete(f.request_id);
      heartbeat(); // a refused beat still proves the socket is alive
    });
    if (rid === null) clearTimeout(deadline);
  }, HEARTBEAT_MS);
}

// ----- pushes and acks ---------------------------------------------------------------------

function onPush(frame) {
  const data = frame.data || {};
  const content = data.content || {};
  if (frame.type === "message") {
    receiveMessage(String(data.id), content);
  } else if (frame.type === "del_msg") {
    removeMessage(String(data.id), content.message_id);
  }
  // Confirmed only once rendered: a push the page never showed is sent again next login.
  state.maxSeq = Math.max(state.maxSeq, frame.seq);
  clearTimeout(state.ackTimer);
  state.ackTimer = setTimeout(() => request("system", "ack", { seq: state.maxSeq }, null), ACK_DELAY_MS);
}

function receiveMessage(contact, content) {
  const list = chat(contact);
  const id = content.message_id;
  // Delivery is at least once: a replayed push is already on screen.
  if (list.some((m) => m.id === id)) return;
  const text = segmentsText(content.message);
  const streamed = content.stream_request_id !== undefined
    && list.find((m) => m.streamOf === String(content.stream_request_id) && m.id === undefined);
  if (streamed) {
    // The finished reply replaces the bubble its stream filled.
    Object.assign(streamed, { id, text, streaming: false, failed: false, note: "" });
  } else {
    list.push({ id, mine: false, text, time: content.time, note: content.interrupted ? "interrupted" : "" });
    if (contact !== state.current) state.unread.set(contact, (state.unread.get(contact) || 0) + 1);
  }
  render(contact);
}

function removeMessage(contact, id) {
  const list = chat(contact);
  const at = list.findIndex((m) => m.id === id);
  if (at >= 0) list.splice(at, 1);
  render(contact);
}

// ----- sending, streams, recall ------------------------------------------------------------

function sendMessage(msg) {
  msg.failed = false;
  msg.note = "sending…";
  const rid = request(
    "onebot", "message", [{ type: "text", data: { text: msg.text } }],
    (f) => onMessageFrame(msg, f), { id: msg.contact },
  );
  if (rid === null) {
    msg.note = "waiting for the connection";
    state.unsent.push(msg);
  } else {
    msg.rid = rid;
  }
  render(msg.contact);
}

// Frames on a message's request_id: the ack (its id), then the reply's stream.
function onMessageFrame(msg, f) {
  const list = chat(msg.contact);
  let reply = list.find((m) => m.streamOf === msg.rid);
  if (f.code === -1) {
    if (msg.id === undefined) Object.assign(msg, { note: "not confirmed (connection lost)" });
    if (reply && reply.streaming) Object.assign(reply, { streaming: false, note: "waiting for the rest…" });
  } else if (f.code !== 0) {
    state.requests.delete(f.request_id);
    const why = f.data?.reason || f.message;
    if (msg.id === undefined) Object.assign(msg, { failed: true, note: why });
    else if (f.data?.error === "CANCELLED") {
      if (reply) list.splice(list.indexOf(reply), 1);
    } else if (reply) Object.assign(reply, { streaming: false, failed: true, note: why });
    else list.push({ mine: false, text: "", failed: true, note: why, streamOf: msg.rid });
  } else if (f.message === "success") {
    Object.assign(msg, { id: f.data?.message_id, note: "" });
  } else if (f.message === "pending") {
    if (!reply) list.push({ mine: false, text: "", streaming: true, streamOf: msg.rid });
  } else if (f.message === "update") {
    if (!reply) list.push((reply = { mine: false, text: "", streaming: true, streamOf: msg.rid }));
    const call = f.data?.tool_call;
    if (call) reply.tool = `${call.name} ${call.action}`;
    reply.text += f.data?.chunk || "";
  } else if (f.message === "completed") {
    state.requests.delete(f.request_id);
    if (reply) reply.streaming = false;
  }
  render(msg.contact);
}

function recall(msg) {
  request(
    "onebot", "del_message", { id: msg.contact, type: "message", content: { message_id: msg.id } },
    (f) => {
      state.requests.delete(f.request_id);
      // Success: gone (its replies follow as del_msg pushes); NOT_FOUND: already gone.
      if (f.code === 0 || f.data?.error === "NOT_FOUND") removeMessage(msg.contact, msg.id);
    },
  );
}

// ----- rendering ---------------------------------------------------------------------------

function chat(contact) {
  if (!state.chats.has(contact)) state.chats.set(contact, []);
  return state.chats.get(contact);
}

function segmentsText(segments) {
  if (typeof segments === "string") return segments;
  if (!Array.isArray(segments)) return "";
  return segments
    .map((s) => (s?.type === "text" ? String(s.data?.text ?? "") : `[${String(s?.type)}]`))
    .join("");
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function avatar(contact) {
  const url = typeof contact.avatar === "string" ? contact.avatar : "";
  if (/^https?:\/\//.test(url)) {
    const img = el("img");
    img.alt = "";
    img.src = url;
    return img;
  }
  return el("span", "initial", String(contact.name || "?").slice(0, 1).toUpperCase());
}

function renderContacts() {
  const ul = $("contacts");
  ul.replaceChildren();
  for (const c of state.contacts) {
    const li = el("li", `contact${c.id === state.current ? " active" : ""}`);
    li.dataset.id = String(c.id);
    const who = el("span");
    who.append(el("strong", "name", String(c.name || c.id)), el("span", "bio", String(c.bio || "")));
    li.append(avatar(c), who);
    const unread = state.unread.get(String(c.id));
    if (unread) li.append(el("span", "unread", String(unread)));
    li.addEventListener("click", () => openChat(String(c.id)));
    ul.append(li);
  }
}

function render(contact) {
  renderContacts();
  if (contact !== state.current) return;
  const ol = $("messages");
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  ol.replaceChildren();
  for (const m of chat(contact)) {
    const li = el("li", `msg ${m.mine ? "mine" : "theirs"}${m.streaming ? " streaming" : ""}${m.failed ? " failed" : ""}`);
    if (m.id !== undefined) li.dataset.messageId = String(m.id);
    if (m.tool) li.append(el("span", "tool", m.tool));
    li.append(el("span", "text", m.text));
    if (m.note) li.append(el("span", "meta", m.note));
    if (m.mine && m.id !== undefined) {
      const button = el("button", "recall", "recall");
      button.type = "button";
      button.addEventListener("click", () => recall(m));
      li.append(button);
    }
    ol.append(li);
  }
  if (atBottom) ol.scrollTop = ol.scrollHeight;
}

function openChat(contact) {
  state.current = contact;
  state.unread.delete(contact);
  const c = state.contacts.find((x) => String(x.id) === contact);
  $("peer").textContent = c ? String(c.name || c.id) : contact;
  $("text").disabled = false;
  $("send").disabled = false;
  render(contact);
  $("text").focus();
}

function setStatus(text, offline = false) {
  $("status").textContent = text;
  $("status").classList.toggle("offline", offline);
}

function showChat() {
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me").textContent = state.user;
  if (state.current === null) {
    const first = state.contacts.find((c) => c.default) || state.contacts[0];
    if (first) openChat(String(first.id));
  }
  renderContacts();
}

function showLogin() {
  $("chat").hidden = true;
  $("login").hidden = false;
}

// ----- the forms ---------------------------------------------------------------------------

$("login-id").value = localStorage.getItem(ID_KEY) || "";
$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.user = $("login-id").value.trim();
  state.code = $("login-code").value;
  localStorage.setItem(ID_KEY, state.user);
  $("login-error").textContent = "";
  state.wanted = true;
  state.retries = 0;
  connect();
});

$("logout").addEventListener("click", () => {
  state.wanted = false;
  clearTimeout(state.retryTimer);
  if (state.ws) state.ws.close(1000);
  state.chats.clear();
  state.current = null;
  showLogin();
});

$("compose").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("text").value.trim();
  if (!text || state.current === null) return;
  $("text").value = "";
  const msg = { mine: true, text, contact: state.current };
  chat(state.current).push(msg);
  if (state.loggedIn) sendMessage(msg);
  else {
    msg.note = "waiting for the connection";
    state.unsent.push(msg);
    render(state.current);
  }
});

$("text").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("compose").requestSubmit();
  }
});
