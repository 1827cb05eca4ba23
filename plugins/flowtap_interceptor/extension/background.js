// flowtap Interceptor: the service worker.
//
// Observes requests with chrome.webRequest and cookie changes with chrome.cookies, and sends each
// event at once to the flowtap bridge (a WebSocket on this computer), which merges the events of a
// request by id. The protocol is described by protocol.json in this folder. The worker may be
// stopped whenever it is idle: nothing important is kept in memory, and a message every 20 s keeps
// it alive while connected.
//
// Trust. Whatever listens on the bridge's port gets nothing until it proves it holds the pairing
// key: the extension sends a fresh nonce (hello), the bridge answers with its own nonce and an
// HMAC over both (challenge), and only if that checks out does the extension answer with its own
// HMAC (auth) and, once welcomed, send anything at all. What it captures is bounded by what the
// user allowed here (the popup, or pairing.json): flowtap's settings can narrow that, never widen it.

"use strict";

const PROTOCOL = 2;
// The user's choices: stored in chrome.storage.local, set in the popup (or by pairing.json).
const DEFAULTS = {
  bridge: "ws://127.0.0.1:5005",
  key: "",
  capture: true,
  urlFilter: "",
  methods: [],
  resourceTypes: ["main_frame", "sub_frame", "xmlhttprequest"],
  cookieDomains: [],
  captureBodies: false,
};
// What pairing.json may set besides the key and the bridge: the same choices the popup offers.
const PROVISIONED = { capture: "boolean", urlFilter: "string", methods: "array", resourceTypes: "array",
                      cookieDomains: "array", captureBodies: "boolean" };
const MAX_BODY_SIZE = 1048576; // until flowtap says otherwise
const PING_EVERY = 20000;
const RETRY_FIRST = 500;
const RETRY_MAX = 10000;
const RETRY_UNPAIRED = 30000;
const QUEUE_MAX = 1000;
const COOKIE_DEBOUNCE = 250;
const CLOSE_UNAUTHORIZED = 4401;
const PAIRING_TIMEOUT = 10000;
const HEX64 = /^[0-9a-f]{64}$/;
const PAIRING_ERRORS = {
  unpaired: ["unpaired", "flowtap has no pairing key yet: run `flowtap interceptor pair`"],
  auth_failed: ["auth_failed", "flowtap refused this extension's key: paste the key `flowtap interceptor pair` shows"],
  auth_required: ["auth_failed", "flowtap refused the pairing: load this extension again from `flowtap interceptor extension`"],
};
const OWN_ORIGIN = chrome.runtime.getURL("").replace(/\/$/, "");

let settings = { ...DEFAULTS };
let server = null; // what flowtap asked for in welcome/config: narrows the settings above
let eff = { ...combine(settings, null), regexes: [] }; // what is captured now
let declined = []; // what flowtap asked for beyond the user's settings
let ws = null;
let state = "disconnected"; // connecting | connected | disconnected | unpaired | auth_failed | impostor
let detail = "";
let retryDelay = RETRY_FIRST;
let retryTimer = null;
let pingTimer = null;
let queue = [];
let counts = { requests: 0, cookies: 0, errors: 0 };
// This browser session's id: kept across the worker's restarts, so the bridge joins the events of
// a request that began before a restart to the ones after it.
let instance = "";
let countsTimer = null;
const pendingCookies = new Map();
let cookieTimer = null;

// -- start-up -----------------------------------------------------------------------------------

const ready = init();

async function init() {
  try {
    const stored = await chrome.storage.local.get(null);
    for (const key of Object.keys(DEFAULTS)) {
      if (stored[key] !== undefined) settings[key] = stored[key];
    }
    const provisioned = await readPairingFile(stored.provisioned);
    if (provisioned) {
      Object.assign(settings, provisioned);
      await chrome.storage.local.set(provisioned);
    }
    const session = await chrome.storage.session.get(["counts", "instance"]);
    if (session.counts) counts = session.counts;
    instance = session.instance;
    if (!instance) {
      instance = randomHex(16);
      await chrome.storage.session.set({ instance });
    }
  } catch (err) {
    console.warn("flowtap: could not read the settings:", err);
  }
  recompute();
  chrome.alarms.create("flowtap-reconnect", { periodInMinutes: 0.5 });
  connect();
}

// An optional pairing.json next to this file pairs the extension without the popup, for automated
// set-ups and tests: {"key": "...", "bridge": "ws://...", and optionally the choices the popup
// offers: "cookieDomains": [...], "captureBodies": true, "resourceTypes": [...], ...}. The key and
// the bridge are read at every start; the choices once per new content of the file (the popup's
// changes then stand). Never ship one.
async function readPairingFile(applied) {
  let data;
  try {
    const response = await fetch(chrome.runtime.getURL("pairing.json"));
    if (!response.ok) return null;
    data = await response.json();
  } catch (err) {
    return null; // no such file: the usual case
  }
  const out = {};
  if (typeof data.key === "string" && data.key) out.key = data.key;
  if (typeof data.bridge === "string" && data.bridge) out.bridge = data.bridge;
  const choices = {};
  for (const [name, kind] of Object.entries(PROVISIONED)) {
    const value = data[name];
    if (kind === "array" ? Array.isArray(value) && value.every((v) => typeof v === "string") : typeof value === kind) {
      choices[name] = value;
    }
  }
  const text = JSON.stringify(choices);
  if (text !== applied) Object.assign(out, choices, { provisioned: text });
  return Object.keys(out).length ? out : null;
}

// -- the connection to the bridge -------------------------------------------------------------

function connect() {
  clearTimeout(retryTimer);
  retryTimer = null;
  if (ws) return;
  if (!settings.key) {
    setState("unpaired", "paste the key that `flowtap interceptor pair` shows");
    return;
  }
  let sock;
  try {
    sock = new WebSocket(settings.bridge);
  } catch (err) {
    setState("disconnected", `bad bridge address ${settings.bridge}: ${err.message}`);
    return;
  }
  ws = sock;
  sock.phase = "hello"; // hello -> auth (the bridge proved the key) -> ready (welcomed)
  sock.chain = Promise.resolve(); // messages are handled one after the other, in order
  setState("connecting", settings.bridge);
  sock.onopen = () => {
    sock.nonce = randomHex(32);
    sendOn(sock, { type: "hello", nonce: sock.nonce });
    setTimeout(() => {
      if (ws === sock && sock.phase !== "ready") distrust(sock, `the server at ${settings.bridge} did not pair within ${PAIRING_TIMEOUT / 1000} s`);
    }, PAIRING_TIMEOUT);
  };
  sock.onmessage = (event) => {
    sock.chain = sock.chain.then(() => receive(sock, event.data)).catch((err) => console.warn("flowtap:", err));
  };
  sock.onclose = (event) => {
    if (ws !== sock) return;
    ws = null;
    disconnected();
    if (event.code === CLOSE_UNAUTHORIZED) {
      if (state === "connected") setState("auth_failed", "flowtap's pairing key changed: paste the new key");
      scheduleRetry(RETRY_UNPAIRED); // nothing changes until the key does
    } else {
      setState("disconnected", state === "connected" ? "flowtap stopped" : `flowtap is not running at ${settings.bridge}`);
      scheduleRetry();
    }
  };
}

function disconnected() {
  queue = [];
  server = null;
  declined = [];
  clearInterval(pingTimer);
  detachAll();
  recompute();
}

function scheduleRetry(delay) {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, delay || retryDelay);
  if (!delay) retryDelay = Math.min(retryDelay * 2, RETRY_MAX);
}

function reconnect() {
  retryDelay = RETRY_FIRST;
  if (ws) {
    const sock = ws;
    ws = null;
    sock.close();
    disconnected();
  }
  connect();
}

// Ends a connection whose server did not prove it is flowtap, or broke the pairing protocol.
function distrust(sock, why) {
  if (ws === sock) {
    ws = null;
    disconnected();
    setState("impostor", why);
    scheduleRetry();
  }
  try {
    sock.close(CLOSE_UNAUTHORIZED, "the bridge did not prove the pairing key");
  } catch (err) {
    // already closed
  }
}

async function receive(sock, data) {
  if (ws !== sock) return;
  let msg;
  try {
    msg = JSON.parse(data);
  } catch (err) {
    msg = null;
  }
  if (sock.phase !== "ready") return pair(sock, msg);
  if (!msg || typeof msg !== "object") {
    return sendOn(sock, { type: "error", code: "malformed", message: "not valid JSON" });
  }
  if (msg.v !== PROTOCOL) {
    return sendOn(sock, { type: "error", code: "unsupported_version", message: `this extension speaks version ${PROTOCOL}` });
  }
  switch (msg.type) {
    case "config":
      applyServer({ ...server, ...(msg.config || {}) });
      break;
    case "ping":
      send({ type: "pong", time: msg.time });
      break;
    case "pong":
      break;
    case "error":
      counts.errors++;
      saveCounts();
      console.warn(`flowtap refused a message: ${msg.code}: ${msg.message}`);
      break;
    default:
      sendOn(sock, { type: "error", code: "unknown_type", message: `unknown message type ${msg.type}` });
  }
}

// The pairing, before anything else is sent or accepted. Nothing the server says is believed
// before its proof checks out: its error texts are not shown, a welcome before then ends it.
async function pair(sock, msg) {
  const type = msg && typeof msg === "object" && msg.v === PROTOCOL ? msg.type : null;
  if (type === "error" && PAIRING_ERRORS[msg.code]) {
    const [next, text] = PAIRING_ERRORS[msg.code];
    if (sock.phase === "auth" || msg.code === "unpaired") setState(next, text); // the bridge closes next
    else distrust(sock, `the server at ${settings.bridge} refused to pair without proving it is flowtap`);
    return;
  }
  if (sock.phase === "hello" && type === "challenge") {
    const theirs = msg.nonce;
    const ok = typeof theirs === "string" && HEX64.test(theirs) && typeof msg.proof === "string" && HEX64.test(msg.proof)
      && theirs !== sock.nonce
      && await hmacVerify(settings.key, `flowtap-bridge\n${sock.nonce}\n${theirs}`, msg.proof);
    if (ws !== sock) return;
    if (!ok) {
      return distrust(sock, `the server at ${settings.bridge} did not prove it holds the pairing key: it is not flowtap, or flowtap has another key`);
    }
    sock.phase = "auth";
    sendOn(sock, {
      type: "auth",
      proof: await hmacHex(settings.key, `flowtap-extension\n${theirs}\n${sock.nonce}`),
      client: `flowtap-interceptor/${chrome.runtime.getManifest().version}`,
      browser: navigator.userAgent.slice(0, 300),
      ...(instance ? { instance } : {}),
    });
    return;
  }
  if (sock.phase === "auth" && type === "welcome") {
    sock.phase = "ready";
    retryDelay = RETRY_FIRST;
    setState("connected", typeof msg.server === "string" ? msg.server : "");
    applyServer(msg.config || {}, true);
    pingTimer = setInterval(() => send({ type: "ping", time: Date.now() }), PING_EVERY);
    for (const queued of queue.splice(0)) {
      if (queued.type !== "capture" || (capturing() && wantedMessage(queued))) send(queued);
    }
    return;
  }
  distrust(sock, `the server at ${settings.bridge} broke the pairing protocol (${type || "not a message"} during ${sock.phase})`);
}

function sendOn(sock, msg) {
  if (sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify({ v: PROTOCOL, ...msg }));
}

function send(msg) {
  if (state === "connected" && ws && ws.phase === "ready" && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ v: PROTOCOL, ...msg }));
  } else if (state === "connecting" && queue.length < QUEUE_MAX) {
    queue.push(msg); // woken by an event before the connection is up: sent once flowtap proved itself
  }
}

function log(level, message) {
  console[level === "error" ? "error" : "warn"](`flowtap: ${message}`);
  send({ type: "log", level, message: String(message).slice(0, 4000) });
}

function setState(next, text) {
  state = next;
  detail = text || "";
}

function randomHex(bytes) {
  return toHex(crypto.getRandomValues(new Uint8Array(bytes)));
}

function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function hmacKey(key, usage) {
  return crypto.subtle.importKey("raw", new TextEncoder().encode(key), { name: "HMAC", hash: "SHA-256" }, false, [usage]);
}

async function hmacHex(key, message) {
  const signature = await crypto.subtle.sign("HMAC", await hmacKey(key, "sign"), new TextEncoder().encode(message));
  return toHex(new Uint8Array(signature));
}

// WebCrypto's verify compares in constant time.
async function hmacVerify(key, message, hex) {
  const signature = Uint8Array.from(hex.match(/../g), (h) => parseInt(h, 16));
  return crypto.subtle.verify("HMAC", await hmacKey(key, "verify"), signature, new TextEncoder().encode(message));
}

// -- settings: the user's, narrowed by flowtap's ----------------------------------------------

function covered(domain, list) {
  return list.some((s) => domain === s || domain.endsWith(`.${s}`));
}

// What is captured: each of the user's choices, narrowed by what flowtap asks for (if connected).
function combine(user, asked) {
  const out = {
    capture: user.capture,
    paused: false,
    filters: [user.urlFilter],
    methods: user.methods.length ? user.methods : null, // null: every method
    resourceTypes: user.resourceTypes,
    cookieDomains: user.cookieDomains,
    captureBodies: user.captureBodies,
    maxBodySize: MAX_BODY_SIZE,
  };
  if (!asked) return out;
  const list = (value) => (Array.isArray(value) ? value.filter((v) => typeof v === "string") : []);
  out.capture = out.capture && asked.capture !== false;
  out.paused = asked.paused === true;
  if (typeof asked.urlFilter === "string") out.filters.push(asked.urlFilter);
  const methods = list(asked.methods);
  if (methods.length) out.methods = out.methods ? out.methods.filter((m) => methods.includes(m)) : methods;
  if (Array.isArray(asked.resourceTypes)) {
    const types = list(asked.resourceTypes);
    if (out.resourceTypes.includes("all")) out.resourceTypes = types;
    else if (!types.includes("all")) out.resourceTypes = out.resourceTypes.filter((t) => types.includes(t));
  }
  const domains = list(asked.cookieDomains).map((d) => d.replace(/^\./, "").toLowerCase());
  out.cookieDomains = [...new Set([...domains.filter((d) => covered(d, user.cookieDomains)),
                                   ...user.cookieDomains.filter((d) => covered(d, domains))])];
  out.captureBodies = out.captureBodies && asked.captureBodies === true;
  if (Number.isInteger(asked.maxBodySize) && asked.maxBodySize >= 0) out.maxBodySize = asked.maxBodySize;
  return out;
}

// What flowtap asked for that the user's choices do not allow, in words.
function beyond(user, asked) {
  const out = [];
  const domains = (Array.isArray(asked.cookieDomains) ? asked.cookieDomains : []).filter((d) => !covered(String(d), user.cookieDomains));
  if (domains.length) out.push(`cookies of ${domains.join(", ")}`);
  if (asked.captureBodies === true && !user.captureBodies) out.push("response bodies");
  const types = Array.isArray(asked.resourceTypes) ? asked.resourceTypes : [];
  if (!user.resourceTypes.includes("all")) {
    const more = types.includes("all") ? ["all"] : types.filter((t) => !user.resourceTypes.includes(t));
    if (more.length) out.push(`requests of type ${more.join(", ")}`);
  }
  if (asked.capture === true && !user.capture) out.push("requests (capture is off)");
  return out;
}

function recompute() {
  eff = combine(settings, server);
  eff.regexes = [];
  for (const filter of eff.filters) {
    if (!filter) continue;
    try {
      eff.regexes.push(new RegExp(filter));
    } catch (err) {
      log("warning", `the URL filter ${JSON.stringify(filter)} is not a valid regular expression (${err.message}); it is ignored`);
    }
  }
}

// flowtap's settings arrived (welcome: all of them; config: a change): narrow, dump cookies of
// domains newly synced, tell flowtap what this browser does not share.
function applyServer(asked, full) {
  const before = full ? [] : eff.cookieDomains;
  server = asked;
  recompute();
  const text = beyond(settings, asked).join("; ");
  if (text && text !== declined.join("; ")) {
    log("warning", `not shared, as this browser's flowtap extension is set: ${text} (allow them in the extension's popup)`);
  }
  declined = text ? text.split("; ") : [];
  const added = eff.cookieDomains.filter((d) => !before.includes(d));
  if (added.length) dumpCookies(added);
  syncDebugger();
}

chrome.storage.onChanged.addListener((changes, area) => {
  if (area !== "local") return;
  ready.then(() => {
    const before = eff.cookieDomains;
    for (const [key, change] of Object.entries(changes)) {
      if (key in DEFAULTS) settings[key] = change.newValue === undefined ? DEFAULTS[key] : change.newValue;
    }
    if ("key" in changes || "bridge" in changes) return reconnect();
    recompute();
    if (server) declined = beyond(settings, server);
    if (state === "connected") {
      const added = eff.cookieDomains.filter((d) => !before.includes(d));
      if (added.length) dumpCookies(added);
    }
    syncDebugger();
  });
});

function capturing() {
  return eff.capture && !eff.paused;
}

// -- requests -----------------------------------------------------------------------------------

function wanted(d) {
  if (d.initiator === OWN_ORIGIN || d.url.startsWith("chrome-extension:") || isBridge(d.url)) return false;
  return wantedMessage({ url: d.url, method: d.method, resourceType: d.type });
}

// Whether the settings in force now capture a request (also asked again of the events queued
// before flowtap's settings arrived).
function wantedMessage(m) {
  const types = eff.resourceTypes;
  if (!types.includes("all") && !types.includes(m.resourceType)) return false;
  if (eff.methods && !eff.methods.includes(m.method)) return false;
  return eff.regexes.every((regex) => regex.test(m.url));
}

function isBridge(url) {
  try {
    const target = new URL(url);
    return target.host === new URL(settings.bridge).host && /^(ws|http)s?:$/.test(target.protocol);
  } catch (err) {
    return false;
  }
}

function onRequestEvent(event, d) {
  if (!capturing() || (state !== "connected" && state !== "connecting") || !wanted(d)) return;
  const msg = {
    type: "capture",
    event,
    id: String(d.requestId),
    url: d.url,
    method: d.method,
    timeStamp: d.timeStamp,
    tabId: d.tabId,
    frameId: d.frameId,
    resourceType: d.type,
  };
  if (d.initiator) msg.initiator = d.initiator;
  if (event === "request" && d.requestBody) msg.requestBody = encodeRequestBody(d.requestBody);
  if (event === "headers") msg.requestHeaders = encodeHeaders(d.requestHeaders);
  if (event === "redirect" || event === "completed") {
    msg.statusCode = d.statusCode;
    msg.statusLine = d.statusLine || "";
    msg.responseHeaders = encodeHeaders(d.responseHeaders);
    if (d.redirectUrl) msg.redirectUrl = d.redirectUrl;
  }
  if (event === "completed" && attached.has(d.tabId)) msg.bodyPending = true;
  if (event === "error") msg.error = d.error;
  if (d.ip) msg.ip = d.ip;
  if (d.fromCache) msg.fromCache = true;
  if (event !== "request" && event !== "headers") {
    counts.requests++;
    saveCounts();
  }
  send(msg);
}

function encodeHeaders(list) {
  return (list || []).map((h) => ({
    name: h.name,
    value: h.value !== undefined ? h.value : String.fromCharCode(...(h.binaryValue || [])),
  }));
}

function encodeRequestBody(body) {
  if (body.formData) return { formData: body.formData };
  const out = {};
  if (body.error) out.error = body.error;
  if (body.raw) {
    const parts = body.raw.filter((p) => p.bytes).map((p) => new Uint8Array(p.bytes));
    const files = body.raw.length - parts.length;
    const size = parts.reduce((n, p) => n + p.length, 0);
    const bytes = new Uint8Array(Math.min(size, eff.maxBodySize));
    let at = 0;
    for (const part of parts) {
      if (at >= bytes.length) break;
      const piece = part.subarray(0, bytes.length - at);
      bytes.set(piece, at);
      at += piece.length;
    }
    out.raw = toBase64(bytes);
    if (size > bytes.length || files) {
      out.truncated = true;
      out.size = size;
    }
    if (files) out.error = `${files} file part(s) of the body are not shown by the browser`;
  }
  return out;
}

function toBase64(bytes) {
  if (bytes.toBase64) return bytes.toBase64();
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

const ALL_URLS = { urls: ["<all_urls>"] };
const on = (event) => (d) => { ready.then(() => onRequestEvent(event, d)); };
chrome.webRequest.onBeforeRequest.addListener(on("request"), ALL_URLS, ["requestBody"]);
chrome.webRequest.onSendHeaders.addListener(on("headers"), ALL_URLS, ["requestHeaders", "extraHeaders"]);
chrome.webRequest.onBeforeRedirect.addListener(on("redirect"), ALL_URLS, ["responseHeaders", "extraHeaders"]);
chrome.webRequest.onCompleted.addListener(on("completed"), ALL_URLS, ["responseHeaders", "extraHeaders"]);
chrome.webRequest.onErrorOccurred.addListener(on("error"), ALL_URLS);

// -- response bodies through chrome.debugger (opt-in) ------------------------------------------

const attached = new Set(); // tabs whose responses the debugger reads
const attaching = new Set();
const debugged = new Map(); // "tabId:requestId" -> {url, method}

async function syncDebugger() {
  if (bodiesWanted()) {
    for (const tab of await chrome.tabs.query({})) attachTab(tab);
  } else {
    detachAll();
  }
}

async function attachTab(tab) {
  const url = tab.pendingUrl || tab.url || "";
  if (attached.has(tab.id) || attaching.has(tab.id) || /^(chrome|devtools|edge|brave)[a-z-]*:/.test(url)) return;
  attaching.add(tab.id);
  try {
    await chrome.debugger.attach({ tabId: tab.id }, "1.3");
    await chrome.debugger.sendCommand({ tabId: tab.id }, "Network.enable", {});
    if (bodiesWanted()) attached.add(tab.id);
    else chrome.debugger.detach({ tabId: tab.id }).catch(() => {});
  } catch (err) {
    if (/^https?:/.test(url)) log("warning", `cannot read response bodies in tab ${tab.id} (${url}): ${err.message}`);
  } finally {
    attaching.delete(tab.id);
  }
}

function detachAll() {
  for (const tabId of attached) chrome.debugger.detach({ tabId }).catch(() => {});
  attached.clear();
  debugged.clear();
}

function bodiesWanted() {
  return eff.captureBodies && capturing() && state === "connected";
}

// Attach as soon as a tab exists, so that its first requests are seen too.
chrome.tabs.onCreated.addListener((tab) => {
  ready.then(() => { if (bodiesWanted()) attachTab(tab); });
});

chrome.tabs.onUpdated.addListener((tabId, info, tab) => {
  ready.then(() => { if (bodiesWanted() && info.url) attachTab(tab); });
});

chrome.debugger.onDetach.addListener((source) => attached.delete(source.tabId));

chrome.debugger.onEvent.addListener((source, method, params) => {
  const key = `${source.tabId}:${params.requestId}`;
  if (method === "Network.requestWillBeSent") {
    const request = { url: params.request.url, method: params.request.method };
    // webRequest shows a form body only as fields sorted by name; the debugger has its bytes.
    const entries = params.request.postDataEntries;
    const type = Object.entries(params.request.headers || {})
      .find(([name]) => name.toLowerCase() === "content-type");
    if (entries && entries.length && entries.every((e) => e.bytes !== undefined) && type &&
        /x-www-form-urlencoded|multipart\/form-data/i.test(type[1])) request.postData = entries;
    debugged.set(key, request);
  } else if (method === "Network.loadingFailed") {
    debugged.delete(key);
  } else if (method === "Network.loadingFinished") {
    const request = debugged.get(key);
    debugged.delete(key);
    if (request) sendBody(source.tabId, params.requestId, request);
  }
});

async function sendBody(tabId, requestId, request) {
  const msg = { type: "body", tabId, url: request.url, method: request.method };
  if (request.postData) {
    const parts = request.postData.map((e) => Uint8Array.from(atob(e.bytes), (c) => c.charCodeAt(0)));
    const size = parts.reduce((n, p) => n + p.length, 0);
    if (size <= eff.maxBodySize) {
      const bytes = new Uint8Array(size);
      let at = 0;
      for (const part of parts) { bytes.set(part, at); at += part.length; }
      msg.requestBody = toBase64(bytes);
    }
  }
  try {
    const result = await chrome.debugger.sendCommand({ tabId }, "Network.getResponseBody", { requestId });
    let bytes = result.base64Encoded ? Uint8Array.from(atob(result.body), (c) => c.charCodeAt(0)) : new TextEncoder().encode(result.body);
    msg.size = bytes.length;
    if (bytes.length > eff.maxBodySize) {
      bytes = bytes.subarray(0, eff.maxBodySize);
      msg.truncated = true;
    }
    msg.data = toBase64(bytes);
  } catch (err) {
    msg.error = `the browser kept no body: ${err.message}`;
  }
  send(msg);
}

// -- cookies ------------------------------------------------------------------------------------

function syncs(domain) {
  const d = domain.replace(/^\./, "").toLowerCase();
  return covered(d, eff.cookieDomains);
}

function encodeCookie(c) {
  const out = {
    name: c.name, value: c.value, domain: c.domain, path: c.path, hostOnly: c.hostOnly,
    secure: c.secure, httpOnly: c.httpOnly, sameSite: c.sameSite, session: c.session, storeId: c.storeId,
  };
  if (!c.session && c.expirationDate !== undefined) out.expirationDate = c.expirationDate;
  return out;
}

async function dumpCookies(domains) {
  const found = new Map();
  for (const domain of domains) {
    for (const c of await chrome.cookies.getAll({ domain })) {
      found.set(`${c.storeId}|${c.domain}|${c.path}|${c.name}`, encodeCookie(c));
    }
  }
  counts.cookies += found.size;
  saveCounts();
  send({ type: "cookies", reason: "dump", cookies: [...found.values()] });
}

chrome.cookies.onChanged.addListener((info) => {
  ready.then(() => {
    // A removal caused by "overwrite" is followed by the set that replaces the cookie: skip it.
    if (state !== "connected" || (info.removed && info.cause === "overwrite") || !syncs(info.cookie.domain)) return;
    const c = info.cookie;
    const key = `${c.storeId}|${c.domain}|${c.path}|${c.name}`;
    pendingCookies.delete(key); // the last event for a cookie wins, in order
    pendingCookies.set(key, { ...encodeCookie(c), removed: info.removed, cause: info.cause });
    clearTimeout(cookieTimer);
    cookieTimer = setTimeout(flushCookies, COOKIE_DEBOUNCE);
  });
});

function flushCookies() {
  const cookies = [...pendingCookies.values()];
  pendingCookies.clear();
  if (!cookies.length) return;
  counts.cookies += cookies.length;
  saveCounts();
  send({ type: "cookies", reason: "change", cookies });
}

// -- the popup, alarms, counts -------------------------------------------------------------------

chrome.runtime.onMessage.addListener((request, sender, reply) => {
  if (sender.id !== chrome.runtime.id) return false;
  ready.then(() => {
    if (request && request.cmd === "reconnect") reconnect();
    if (request && request.cmd === "resetCounts") {
      counts = { requests: 0, cookies: 0, errors: 0 };
      saveCounts();
    }
    reply({ state, detail, paused: eff.paused, capturing: capturing(), counts, bodies: attached.size, declined });
  });
  return true;
});

chrome.alarms.onAlarm.addListener((alarm) => {
  if (alarm.name === "flowtap-reconnect") ready.then(() => { if (!ws && !retryTimer) connect(); });
});

function saveCounts() {
  if (countsTimer) return;
  countsTimer = setTimeout(() => {
    countsTimer = null;
    chrome.storage.session.set({ counts });
  }, 1000);
}
