// The UI's entry: a hash router between the sessions page and a session's page.

import { api, clear, dateTime, getJSON, h, span, toast } from "./dom.js";
import { SessionPage } from "./session.js";

const main = document.getElementById("main");
const where = document.getElementById("where");
let current = null; // the page shown: { close() }

function route() {
  if (current) current.close();
  const match = location.hash.match(/^#\/s\/([^/]+)(?:\/f\/([^/]+))?/);
  if (match) {
    current = new SessionPage(main, where, decodeURIComponent(match[1]), match[2] ? decodeURIComponent(match[2]) : null);
  } else {
    current = new SessionsPage(main, where);
  }
}

class SessionsPage {
  constructor(root, where) {
    this.root = root;
    clear(where, h("span", { class: "crumb" }, "Sessions"));
    this.table = h("tbody");
    this.note = h("p", { class: "muted" });
    clear(root, h("section", { class: "sessions" },
      h("table", { class: "grid", id: "sessions" },
        h("thead", null, h("tr", null, ["Name", "State", "Started", "Duration", "Flows", "Hosts", ""].map((t) => h("th", null, t)))),
        this.table),
      this.note));
    this.load();
    this.timer = setInterval(() => this.load(), 2000); // counts of live sessions move
  }

  close() { clearInterval(this.timer); }

  async load() {
    let reply;
    try { reply = await getJSON("/api/sessions"); } catch (e) { toast(e.message, true); return; }
    this.note.textContent = reply.sessions.length ? `store: ${reply.store}` : `No sessions recorded yet (${reply.store}). Start one with flowtap run.`;
    clear(this.table, reply.sessions.map((s) => this.row(s)));
  }

  row(s) {
    const duration = (s.ended || (s.live ? Date.now() / 1000 : s.started)) - s.started;
    return h("tr", { dataset: { id: s.id } },
      h("td", null, h("a", { href: `#/s/${encodeURIComponent(s.id)}`, class: "open" }, s.name), h("div", { class: "muted small" }, s.id)),
      h("td", null, h("span", { class: `state ${s.state}` }, s.state)),
      h("td", null, dateTime(s.started)),
      h("td", null, span(duration)),
      h("td", { class: "num" }, String(s.flows)),
      h("td", { class: "hosts" }, (s.hosts || []).map(([host, n]) => `${host} (${n})`).join(", ")),
      h("td", { class: "actions" },
        h("button", { onclick: () => this.rename(s) }, "Rename"),
        h("button", { onclick: () => this.remove(s), disabled: s.live, title: s.live ? "being recorded: stop it first" : "" }, "Delete")));
  }

  async rename(s) {
    const name = prompt(`New name for session “${s.name}”`, s.name);
    if (name === null || name === s.name) return;
    try {
      await api(`/api/sessions/${encodeURIComponent(s.id)}`, { method: "PATCH", json: { name } });
      toast(`renamed to ${name}`);
    } catch (e) { toast(e.message, true); }
    this.load();
  }

  async remove(s) {
    if (!confirm(`Delete session “${s.name}” and its ${s.flows} flows?`)) return;
    try {
      await api(`/api/sessions/${encodeURIComponent(s.id)}`, { method: "DELETE" });
      toast(`deleted ${s.name}`);
    } catch (e) { toast(e.message, true); }
    this.load();
  }
}

window.addEventListener("hashchange", route);
route();
