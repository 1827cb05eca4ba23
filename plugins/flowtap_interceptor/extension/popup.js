// flowtap Interceptor: the popup. The user's choices live in chrome.storage.local: they are the most
// this browser shares with flowtap (flowtap's config can only narrow them); the service worker
// applies every change at once. The status comes from the service worker.

"use strict";

const $ = (id) => document.getElementById(id);
const STATES = {
  connected: "Connected to flowtap",
  connecting: "Connecting…",
  disconnected: "Not connected",
  unpaired: "Not paired",
  auth_failed: "Wrong pairing key",
  impostor: "Not flowtap: nothing sent",
};
const DOCS = ["main_frame", "sub_frame"];

async function load() {
  const s = await chrome.storage.local.get(null);
  const types = s.resourceTypes || ["main_frame", "sub_frame", "xmlhttprequest"];
  $("capture").checked = s.capture !== false;
  $("urlFilter").value = s.urlFilter || "";
  $("methods").value = (s.methods || []).join(", ");
  $("type-all").checked = types.includes("all");
  $("type-xhr").checked = types.includes("xmlhttprequest");
  $("type-doc").checked = DOCS.every((t) => types.includes(t));
  $("captureBodies").checked = !!s.captureBodies;
  $("cookieDomains").value = (s.cookieDomains || []).join("\n");
  $("key").value = s.key || "";
  $("bridge").value = s.bridge || "ws://127.0.0.1:5005";
}

function resourceTypes() {
  if ($("type-all").checked) return ["all"];
  const types = [];
  if ($("type-doc").checked) types.push(...DOCS);
  if ($("type-xhr").checked) types.push("xmlhttprequest");
  return types;
}

$("apply").addEventListener("click", async () => {
  await chrome.storage.local.set({
    capture: $("capture").checked,
    urlFilter: $("urlFilter").value.trim(),
    methods: $("methods").value.split(",").map((m) => m.trim().toUpperCase()).filter(Boolean),
    resourceTypes: resourceTypes(),
    captureBodies: $("captureBodies").checked,
    cookieDomains: $("cookieDomains").value.split(/\s+/).map((d) => d.replace(/^\./, "").toLowerCase()).filter(Boolean),
  });
  refresh();
});

$("pair").addEventListener("click", async () => {
  await chrome.storage.local.set({ key: $("key").value.trim(), bridge: $("bridge").value.trim() });
  setTimeout(refresh, 300);
});

async function refresh() {
  let status;
  try {
    status = await chrome.runtime.sendMessage({ cmd: "status" });
  } catch (err) {
    return;
  }
  const el = $("state");
  el.className = status.state;
  el.textContent = STATES[status.state] || status.state;
  if (status.state === "connected" && status.paused) el.textContent += " (session paused)";
  $("detail").textContent = status.detail;
  const c = status.counts;
  $("counts").textContent = `${c.requests} requests, ${c.cookies} cookie events sent` +
    (c.errors ? `, ${c.errors} refused` : "") + (status.bodies ? `; reading bodies in ${status.bodies} tab(s)` : "");
  $("declined").textContent = status.declined && status.declined.length
    ? `flowtap also asks for ${status.declined.join("; ")}: not shared (allow it above)` : "";
}

load();
refresh();
setInterval(refresh, 1000);
