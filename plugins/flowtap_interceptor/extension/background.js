// flowtap Interceptor: the service worker.
//
// Observes requests with chrome.webRequest and cookie changes with chrome.cookies, and sends each
// event at once to the flowtap bridge (a WebSocket on this computer), which merges the events of a
// request by id. The protocol is described by protocol.json in this folder. The worker may be
// stopped whenever it is idle: nothing important is kept in memory, and a message every 20 s keeps
// it alive while connected.

"use strict";

const PROTOCOL = 1;
const DEFAULTS = {
  bridge: "ws://127.0.0.1:5005",
  key: "",
  capture: true,
  urlFilter: "",
  methods: [],
  resourceTypes: ["main_frame", "sub_frame", "xmlhttprequest"],
  cookieDomains: [],
  captureBodies: false,
  maxBodySize: 1048576,
};
// Settings flowtap sends at each connection (and the popup may change until the next one).
const SETTINGS = ["capture", "urlFilter", "methods", "resourceTypes", "cookieDomains", "captureBodies", "maxBodySize"];
const PING_EVERY = 20000;
const RETRY_FIRST = 500;
const RETRY_MAX = 10000;
const RETRY_UNPAIRED = 30000;
const QUEUE_MAX = 1000;
const COOKIE_DEBOUNCE = 250;
const OWN_ORIGIN = chrome.runtime.getURL("").replace(/\/$/, "");

let settings = { ...DEFAULTS };
let paused = false;
let urlRegex = null;
let ws = null;
let state = "disconnected"; // connecting | connected | disconnected | unpaired | auth_failed
let detail = "";
let retryDelay = RETRY_FIRST;
let retryTimer = null;
let pingTimer = null;
let queue = [];
let counts = { requests: 0, cookies: 0, errors: 0 };
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
    const provisioned = await readPairingFile();
    if (provisioned) {
      Object.assign(settings, provisioned);
      await chrome.storage.local.set(provisioned);
    }
    const session = await chrome.storage.session.get("counts");
    if (session.counts) counts = session.counts;
  } catch (err) {
    console.warn("flowtap: could not read the settings:", err);
  }
  compileFilter();
  chrome.alarms.create("flowtap-reconnect", { periodInMinutes: 0.5 });
  connect();
}

// An optional pairing.json next to this file ({"key": "...", "bridge": "ws://..."}) pairs the
// extension without the popup: for automated set-ups and tests. Never ship one.
async function readPairingFile() {
  try {
    const response = await fetch(chrome.runtime.getURL("pairing.json"));
    if (!response.ok) return null;
    const data = await response.json();
    const out = {};
    if (typeof data.key === "string" && data.key) out.key = data.key;
    if (typeof data.bridge === "string" && data.bridge) out.bridge = data.bridge;
    return Object.keys(out).length ? out : null;
  } catch (err) {
    return null; // no such file: the usual case
  }
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
  setState("connecting", settings.bridge);
  sock.onmessage = (event) => receive(sock, event.data);
  sock.onclose = (event) => {
    if (ws !== sock) return;
    ws = null;
    queue = [];
    clearInterval(pingTimer);
    detachAll();
    if (event.code === 4401) {
      scheduleRetry(RETRY_UNPAIRED); // nothing changes until the key does
    } else {
      setState("disconnected", state === "connected" ? "flowtap stopped" : `flowtap is not running at ${settings.bridge}`);
      scheduleRetry();
    }
  };
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
    clearInterval(pingTimer);
    detachAll();
  }
  connect();
}

async function receive(sock, data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch (err) {
    return sendOn(sock, { type: "error", code: "malformed", message: "not valid JSON" });
  }
  if (!msg || msg.v !== PROTOCOL) {
    return sendOn(sock, { type: "error", code: "unsupported_version", message: `this extension speaks version ${PROTOCOL}` });
  }
  switch (msg.type) {
    case "challenge": {
      const proof = await hmacHex(settings.key, String(msg.nonce));
      sendOn(sock, {
        type: "hello",
        proof,
        client: `flowtap-interceptor/${chrome.runtime.getManifest().version}`,
        browser: navigator.userAgent.slice(0, 300),
      });
      break;
    }
    case "welcome":
      retryDelay = RETRY_FIRST;
      setState("connected", msg.server || "");
      applyConfig(msg.config || {}, true);
      pingTimer = setInterval(() => send({ type: "ping", time: Date.now() }), PING_EVERY);
      for (const queued of queue.splice(0)) {
        if (queued.type !== "capture" || capturing()) send(queued);
      }
      break;
    case "config":
      applyConfig(msg.config || {}, false);
      break;
    case "ping":
      send({ type: "pong", time: msg.time });
      break;
    case "pong":
      break;
    case "error":
      if (msg.code === "auth_failed" || msg.code === "unpaired" || msg.code === "auth_required") {
        setState(msg.code === "auth_failed" ? "auth_failed" : "unpaired", msg.message);
      } else {
        counts.errors++;
        saveCounts();
        console.warn(`flowtap refused a message: ${msg.code}: ${msg.message}`);
      }
      break;
    default:
      sendOn(sock, { type: "error", code: "unknown_type", message: `unknown message type ${msg.type}` });
  }
}

function sendOn(sock, msg) {
  if (sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify({ v: PROTOCOL, ...msg }));
}

function send(msg) {
  if (state === "connected" && ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ v: PROTOCOL, ...msg }));
  } else if (state === "connecting" && queue.length < QUEUE_MAX) {
    queue.push(msg); // woken by an event before the connection is up
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

async function hmacHex(key, nonce) {
  const enc = new TextEncoder();
  const secret = await crypto.subtle.importKey("raw", enc.encode(key), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const signature = new Uint8Array(await crypto.subtle.sign("HMAC", secret, enc.encode(nonce)));
  return Array.from(signature, (b) => b.toString(16).padStart(2, "0")).join("");
}

// -- settings ---------------------------------------------------------------------------------

function applyConfig(config, full) {
  const before = settings.cookieDomains;
  if (typeof config.paused === "boolean") paused = config.paused;
  const changed = {};
  for (const key of SETTINGS) {
    if (config[key] !== undefined) changed[key] = settings[key] = config[key];
  }
  compileFilter();
  chrome.storage.local.set(changed);
  const domains = full ? settings.cookieDomains : settings.cookieDomains.filter((d) => !before.includes(d));
  if (domains.length) dumpCookies(domains);
  syncDebugger();
}

function compileFilter() {
  urlRegex = null;
  if (!settings.urlFilter) return;
  try {
    urlRegex = new RegExp(settings.urlFilter);
  } catch (err) {
    log("warning", `the URL filter ${JSON.stringify(settings.urlFilter)} is not a valid regular expression (${err.message}); capturing every URL`);
  }
}

chrome.storage.onChanged.addListener((changes, area) => {
  if (area !== "local") return;
  ready.then(() => {
    const before = settings.cookieDomains;
    for (const [key, change] of Object.entries(changes)) {
      if (key in DEFAULTS) settings[key] = change.newValue === undefined ? DEFAULTS[key] : change.newValue;
    }
    if ("key" in changes || "bridge" in changes) return reconnect();
    if ("urlFilter" in changes) compileFilter();
    if ("cookieDomains" in changes && state === "connected") {
      const added = settings.cookieDomains.filter((d) => !before.includes(d));
      if (added.length) dumpCookies(added);
    }
    if ("capture" in changes || "captureBodies" in changes) syncDebugger();
  });
});

function capturing() {
  return settings.capture && !paused;
}

// -- requests -----------------------------------------------------------------------------------

function wanted(d) {
  if (d.initiator === OWN_ORIGIN || d.url.startsWith("chrome-extension:") || isBridge(d.url)) return false;
  const types = settings.resourceTypes;
  if (!types.includes("all") && !types.includes(d.type)) return false;
  if (settings.methods.length && !settings.methods.includes(d.method)) return false;
  return !urlRegex || urlRegex.test(d.url);
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
    const bytes = new Uint8Array(Math.min(size, settings.maxBodySize));
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
  return settings.captureBodies && capturing() && state === "connected";
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
    if (size <= settings.maxBodySize) {
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
    if (bytes.length > settings.maxBodySize) {
      bytes = bytes.subarray(0, settings.maxBodySize);
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
  return settings.cookieDomains.some((s) => d === s || d.endsWith(`.${s}`));
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
    reply({ state, detail, paused, capturing: capturing(), counts, bodies: attached.size });
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
