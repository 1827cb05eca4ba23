// A session's page: its controls, the filter bar, the flow table (virtual, keyset-paged, live)
// and the detail pane.

import { showCookies, showFlow } from "./detail.js";
import { api, bytes, clear, clock, getJSON, h, millis, query, toast } from "./dom.js";

const ROW = 24;            // px: every table line has this height
const PAGE = 200;          // rows asked for at a time
const WINDOW = 2000;       // rows kept in the page at most (the store holds the rest)
const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
const COLUMNS = ["", "Time", "Method", "Status", "Host", "Path", "Type", "Size", "Duration"];

export class SessionPage {
  constructor(root, where, id, flowId) {
    this.id = id;
    this.rows = [];          // the window of the table: rows in recording order
    this.events = [];        // pauses, resumes, clears, markers
    this.items = [];         // rows and events merged, as drawn
    this.moreBefore = false; // the store has matching rows before the window
    this.moreAfter = false;  // ... after it
    this.selected = new Set();
    this.current = flowId;
    this.follow = true;
    this.loading = false;
    this.session = null;
    this.source = null;      // the live stream

    this.crumb = h("span", { class: "crumb" });
    clear(where, h("a", { href: "#/" }, "Sessions"), " / ", this.crumb);
    this.header = h("div", { class: "session-head" });
    this.controls = h("div", { class: "controls" });
    this.filterBar = this.buildFilters();
    this.saveBar = this.buildSave();
    this.spacer = h("div", { class: "spacer" });
    this.scroller = h("div", { class: "scroller", id: "flows", onscroll: () => this.onScroll() }, this.spacer);
    this.detail = h("aside", { class: "detail", id: "detail" }, h("p", { class: "muted" }, "Select a flow to see it in full."));
    this.status = h("span", { class: "muted" });
    clear(root, h("section", { class: "session" },
      h("div", { class: "bars" }, this.header, this.controls, this.filterBar, this.saveBar),
      h("div", { class: "split" },
        h("div", { class: "table" },
          h("div", { class: "thead row" }, COLUMNS.map((c, i) => i === 0
            ? h("span", null, h("input", { type: "checkbox", title: "select every loaded flow", onchange: (e) => this.selectAll(e.target.checked) }))
            : h("span", null, c))),
          this.scroller,
          h("div", { class: "tfoot" }, this.status)),
        this.detail)));
    this.start();
    if (flowId) this.open(flowId);
  }

  close() {
    this.closed = true;
    if (this.source) this.source.close();
  }

  // -- loading -------------------------------------------------------------------------

  async start() {
    // A stored session opens at its first rows: ask for them along with the session.
    const first = this.fetchPage(false).catch((e) => e);
    try {
      this.session = await getJSON(`/api/sessions/${encodeURIComponent(this.id)}`);
    } catch (e) { toast(e.message, true); this.crumb.textContent = "(not found)"; return; }
    this.events = this.session.events;
    this.showSession();
    await this.reload(this.session.live ? null : first);
    this.loadSinks();
  }

  fetchPage(newest) {
    return getJSON(`/api/sessions/${encodeURIComponent(this.id)}/flows${query({ ...this.filters(), limit: PAGE, newest: newest ? "1" : "" })}`);
  }

  filters() {
    return { ...this.filterValues };
  }

  async reload(prefetched = null) {
    if (this.source) { this.source.close(); this.source = null; }
    const live = this.session.live;
    const page = await (prefetched || this.fetchPage(live)).catch((e) => e);
    if (page instanceof Error) { this.filterError.textContent = page.message; return; }
    this.filterError.textContent = "";
    this.rows = page.rows;
    this.moreBefore = live ? page.more : false;
    this.moreAfter = live ? false : page.more;
    this.follow = live;
    this.draw(true);
    if (live) {
      this.scroller.scrollTop = this.scroller.scrollHeight;
      this.listen(page.top);
    }
  }

  listen(cursor) {
    const url = `/api/sessions/${encodeURIComponent(this.id)}/live${query({ ...this.filters(), after: cursor })}`;
    const source = this.source = new EventSource(url);
    source.onmessage = (message) => {
      if (this.closed || source !== this.source) return;
      const news = JSON.parse(message.data);
      const cleared = news.session.events.filter((e) => e.kind === "clear").length > this.events.filter((e) => e.kind === "clear").length;
      this.session = news.session;
      this.events = news.session.events;
      this.showSession();
      if (cleared) {
        // The store forgot the flows; the next ones may take their numbers again: start afresh.
        this.selected.clear();
        this.updateSave();
        this.reload();
        return;
      }
      if (news.gap) {
        if (this.follow) { this.rows = news.rows; this.moreBefore = true; } else this.moreAfter = true;
      } else if (!this.moreAfter && news.rows.length) {
        this.rows = this.rows.concat(news.rows);
        this.trimFront();
      }
      this.draw();
      if (this.follow) this.scroller.scrollTop = this.scroller.scrollHeight;
      if (!news.session.live) { source.close(); this.source = null; this.showSession(); }
    };
    source.onerror = () => {
      if (source === this.source && source.readyState === EventSource.CONNECTING) {
        toast("lost the connection to flowtap (did the run end?); retrying", true);
      }
    };
  }

  trimFront() {
    const extra = this.rows.length - WINDOW;
    if (extra <= 0) return;
    const before = this.items.length;
    this.rows = this.rows.slice(extra);
    this.moreBefore = true;
    this.merge();
    if (!this.follow) this.scroller.scrollTop -= (before - this.items.length) * ROW;
  }

  async loadAfter() {
    if (this.loading || !this.moreAfter || !this.rows.length) return;
    this.loading = true;
    try {
      const last = this.rows[this.rows.length - 1].seq;
      const page = await getJSON(`/api/sessions/${encodeURIComponent(this.id)}/flows${query({ ...this.filters(), after: last, limit: PAGE })}`);
      this.rows = this.rows.concat(page.rows);
      this.moreAfter = page.more;
      this.trimFront();
      if (!page.more && this.session.live && !this.source) this.listen(this.rows.length ? this.rows[this.rows.length - 1].seq : 0);
      this.draw();
    } catch (e) { toast(e.message, true); return; } finally { this.loading = false; }
    this.nearEdges();
  }

  async loadBefore() {
    if (this.loading || !this.moreBefore || !this.rows.length) return;
    this.loading = true;
    try {
      const page = await getJSON(`/api/sessions/${encodeURIComponent(this.id)}/flows${query({ ...this.filters(), before: this.rows[0].seq, limit: PAGE })}`);
      const before = this.items.length;
      this.rows = page.rows.concat(this.rows);
      this.moreBefore = page.more;
      if (this.rows.length > WINDOW) { this.rows = this.rows.slice(0, WINDOW); this.moreAfter = true; this.follow = false; }
      this.merge();
      this.scroller.scrollTop += (this.items.length - before) * ROW;
      this.draw();
    } catch (e) { toast(e.message, true); return; } finally { this.loading = false; }
    this.nearEdges();
  }

  // -- drawing the table ------------------------------------------------------------------

  merge() {
    const rows = this.rows;
    const from = this.moreBefore && rows.length ? rows[0].time : -Infinity;
    const to = this.moreAfter && rows.length ? rows[rows.length - 1].time : Infinity;
    const events = this.events.filter((e) => e.time >= from && e.time <= to);
    const items = [];
    let i = 0;
    for (const row of rows) {
      while (i < events.length && events[i].time <= row.time) items.push({ event: events[i++] });
      items.push({ row });
    }
    while (i < events.length) items.push({ event: events[i++] });
    this.items = items;
  }

  draw(merge = true) {
    if (merge) this.merge();
    this.spacer.style.height = `${this.items.length * ROW}px`;
    this.paint();
    const shown = this.rows.length;
    this.status.textContent = `${shown} flow${shown === 1 ? "" : "s"} loaded` +
      (this.moreBefore ? " · earlier ones above" : "") + (this.moreAfter ? " · more below" : "") +
      (this.selected.size ? ` · ${this.selected.size} selected` : "");
  }

  paint() {
    const top = this.scroller.scrollTop;
    const height = this.scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW) - 10);
    const last = Math.min(this.items.length, Math.ceil((top + height) / ROW) + 10);
    const lines = [];
    for (let i = first; i < last; i++) lines.push(this.line(this.items[i], i));
    clear(this.spacer, lines);
  }

  line(item, index) {
    const style = { top: `${index * ROW}px` };
    if (item.event) {
      const e = item.event;
      const label = e.kind === "mark" ? `marker: ${e.text || ""}` : e.kind === "pause" ? "paused" : e.kind === "resume" ? "resumed" : e.kind === "clear" ? "cleared" : e.kind;
      return h("div", { class: `row event ${e.kind}`, style }, h("span", null, `── ${clock(e.time)} ${label} ──`));
    }
    const r = item.row;
    const port = r.port && !((r.scheme === "https" && r.port === 443) || (r.scheme === "http" && r.port === 80)) ? `:${r.port}` : "";
    const classes = ["row", "flow"];
    if (r.id === this.current) classes.push("current");
    if (r.error) classes.push("failed");
    else if (r.status >= 400) classes.push("bad");
    return h("div", { class: classes.join(" "), style, dataset: { id: r.id }, onclick: (e) => { if (e.target.type !== "checkbox") this.open(r.id); } },
      h("span", null, h("input", { type: "checkbox", checked: this.selected.has(r.id), onchange: (e) => this.select(r.id, e.target.checked) })),
      h("span", null, clock(r.time)),
      h("span", { class: "method" }, r.method),
      h("span", { class: "status" }, r.error ? "error" : r.status === null ? "—" : String(r.status)),
      h("span", { title: r.host + port }, r.host + port),
      h("span", { class: "path", title: r.path }, r.path),
      h("span", { title: r.type }, r.websocket ? "websocket" : r.type),
      h("span", { class: "num" }, bytes(r.size)),
      h("span", { class: "num" }, millis(r.duration)));
  }

  onScroll() {
    const s = this.scroller;
    const atBottom = s.scrollTop + s.clientHeight >= s.scrollHeight - ROW * 2;
    this.follow = atBottom && !this.moreAfter && this.session && this.session.live;
    this.paint();
    this.nearEdges();
  }

  // Within 20 lines of an end of the window: fetch the next page that way (again after each
  // page, as long as the view stays there).
  nearEdges() {
    const s = this.scroller;
    if (s.scrollTop < ROW * 20) this.loadBefore();
    else if (s.scrollTop + s.clientHeight > s.scrollHeight - ROW * 20) this.loadAfter();
  }

  select(id, on) {
    if (on) this.selected.add(id); else this.selected.delete(id);
    this.draw(false);
    this.updateSave();
  }

  selectAll(on) {
    for (const r of this.rows) if (on) this.selected.add(r.id); else this.selected.delete(r.id);
    this.draw(false);
    this.updateSave();
  }

  async open(id) {
    this.current = id;
    history.replaceState(null, "", `#/s/${encodeURIComponent(this.id)}/f/${encodeURIComponent(id)}`);
    this.paint();
    try {
      const flow = await getJSON(`/api/flows/${encodeURIComponent(id)}`);
      if (this.current === id) showFlow(this.detail, flow);
    } catch (e) { toast(e.message, true); }
  }

  // -- the session and its controls ----------------------------------------------------------

  showSession() {
    const s = this.session;
    this.crumb.textContent = s.name;
    clear(this.header,
      h("h1", null, s.name),
      h("span", { class: `state ${s.state}`, id: "state" }, s.state),
      h("span", { class: "muted", id: "counts" }, `${s.flows} flows stored · ${s.recorded} recorded · ${s.filtered} filtered out · ${s.paused} while paused`));
    if (!s.live) { clear(this.controls); return; }
    if (this.controls.childElementCount) {
      this.controls.querySelector("#pause").disabled = s.state === "paused";
      this.controls.querySelector("#resume").disabled = s.state !== "paused";
      return;
    }
    const text = h("input", { type: "text", id: "mark-text", placeholder: "marker text", onkeydown: (e) => { if (e.key === "Enter") this.control("mark", text.value); } });
    clear(this.controls,
      h("button", { id: "pause", onclick: () => this.control("pause"), disabled: s.state === "paused" }, "Pause"),
      h("button", { id: "resume", onclick: () => this.control("resume"), disabled: s.state !== "paused" }, "Resume"),
      h("button", { id: "clear", onclick: () => { if (confirm("Forget every flow captured so far in this session?")) this.control("clear"); } }, "Clear"),
      text,
      h("button", { id: "mark", onclick: () => this.control("mark", text.value) }, "Mark"),
      h("button", { id: "stop", class: "danger", onclick: () => { if (confirm("End this capture (the run stops)?")) this.control("stop"); } }, "Stop"));
  }

  async control(op, text) {
    try {
      await api(`/api/sessions/${encodeURIComponent(this.id)}/control`, { json: { op, text: text || undefined } });
      toast({ pause: "paused", resume: "recording again", clear: "cleared", mark: "marked", stop: "stopping" }[op]);
      if (op === "mark") this.controls.querySelector("#mark-text").value = "";
    } catch (e) { toast(e.message, true); }
  }

  // -- filters -----------------------------------------------------------------------------------

  buildFilters() {
    const expr = h("input", { type: "text", id: "filter", class: "wide", placeholder: "filter expression, e.g. ~d api.example.com & ~m POST & !~c 200", spellcheck: false });
    const url = h("input", { type: "text", id: "url", placeholder: "URL contains" });
    const notUrl = h("input", { type: "text", id: "not-url", placeholder: "URL does not contain" });
    const methods = METHODS.map((m) => h("label", { class: "chip" }, h("input", { type: "checkbox", value: m, class: "method-filter" }), m));
    const assets = h("input", { type: "checkbox", id: "hide-assets" });
    this.filterError = h("span", { class: "error", id: "filter-error" });
    this.filterValues = {};
    const apply = () => {
      this.filterValues = {
        filter: expr.value.trim(), url: url.value, not_url: notUrl.value,
        methods: methods.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value).join(","),
        hide_assets: assets.checked ? "1" : "",
      };
      this.selected.clear();
      this.updateSave();
      this.reload();
    };
    let timer = 0;
    const later = () => { clearTimeout(timer); timer = setTimeout(apply, 400); };
    for (const input of [expr, url, notUrl]) {
      input.addEventListener("keydown", (e) => { if (e.key === "Enter") { clearTimeout(timer); apply(); } });
      input.addEventListener("input", later);
    }
    for (const box of [...methods.map((l) => l.firstChild), assets]) box.addEventListener("change", apply);
    return h("div", { class: "filters" }, expr, url, notUrl, h("span", { class: "chips" }, methods),
      h("label", { class: "chip" }, assets, "Hide images/JS/CSS"), this.filterError);
  }

  // -- saving ---------------------------------------------------------------------------------------

  buildSave() {
    this.sink = h("select", { id: "sink" });
    this.scope = h("select", { id: "scope" }, h("option", { value: "all" }, "every flow matching the filter"), h("option", { value: "selected" }, "the selected flows"));
    return h("div", { class: "save" }, "Save ", this.scope, " as ", this.sink,
      h("button", { id: "download", onclick: () => this.download() }, "⤓ Download"),
      h("button", { id: "cookies", onclick: () => this.cookies() }, "Cookies"));
  }

  loadSinks() {
    getJSON("/api/sinks").then((reply) => clear(this.sink, reply.sinks.map((s) => h("option", { value: s }, s === "curl" ? "curl script" : s))))
      .catch((e) => toast(e.message, true));
  }

  updateSave() {
    this.scope.options[1].textContent = `the selected flows (${this.selected.size})`;
    if (this.selected.size && this.scope.value === "all") this.scope.value = "selected";
    if (!this.selected.size) this.scope.value = "all";
  }

  async download() {
    const ids = this.scope.value === "selected" ? [...this.selected] : undefined;
    try {
      const response = await api(`/api/sessions/${encodeURIComponent(this.id)}/export`, { json: { sink: this.sink.value, filters: this.filters(), ids } });
      const disposition = response.headers.get("Content-Disposition") || "";
      const name = decodeURIComponent((disposition.match(/filename\*=UTF-8''(.+)$/) || [])[1] || "export");
      const url = URL.createObjectURL(await response.blob());
      const link = h("a", { href: url, download: name });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      toast(`saved ${name}`);
    } catch (e) { toast(e.message, true); }
  }

  async cookies() {
    this.current = null;
    this.paint();
    try {
      const reply = await getJSON(`/api/sessions/${encodeURIComponent(this.id)}/cookies`);
      showCookies(this.detail, reply.domains);
    } catch (e) { toast(e.message, true); }
  }
}
