// The detail pane: one flow in full, or the session's cookie jar. Captured values only ever go
// in as text (see dom.js); an image body is shown from a blob: URL, never from the network.

import { bytes, clear, clock, dateTime, decodeBase64, h, millis, toast } from "./dom.js";

let imageUrl = null; // the blob: URL of the image shown, revoked when the pane changes

function reset(pane) {
  if (imageUrl) { URL.revokeObjectURL(imageUrl); imageUrl = null; }
  pane.scrollTop = 0;
}

export function showFlow(pane, flow) {
  reset(pane);
  const req = flow.request;
  const resp = flow.response;
  clear(pane,
    h("div", { class: "detail-head" },
      h("div", { class: "line", id: "request-line" }, h("b", null, req.method), " ", req.url, " ", h("span", { class: "muted" }, req.http_version)),
      resp
        ? h("div", { class: `line ${resp.status >= 400 ? "bad" : ""}`, id: "status-line" }, h("b", null, String(resp.status)), " ", resp.reason, " ", h("span", { class: "muted" }, resp.http_version))
        : null,
      flow.error ? h("div", { class: "flow-error", id: "flow-error" }, "Failed: ", flow.error) : null,
      h("div", { class: "buttons" },
        h("button", { id: "copy-curl", onclick: () => copy(flow.curl) }, "Copy as curl"),
        h("span", { class: "muted small" }, `${flow.source} · ${flow.id}`))),
    section("Request headers", headers(req.headers)),
    section("Request body", body(req.body), req.body.kind === "empty"),
    resp ? section("Response headers", headers(resp.headers)) : null,
    resp ? section("Response body", body(resp.body, "response-body")) : null,
    section("Timing", waterfall(flow.timings)),
    section("Connection", connection(flow)),
    section("Cookies", cookies(flow.cookies), !flow.cookies.sent.length && !flow.cookies.set.length),
    flow.websocket ? section(`WebSocket messages (${flow.websocket_count})`, websocket(flow.websocket)) : null,
    section("curl", h("pre", { class: "code" }, flow.curl), true));
}

function section(title, content, closed = false) {
  return h("details", { class: "part", open: !closed }, h("summary", null, title), content);
}

function headers(pairs) {
  if (!pairs.length) return h("p", { class: "muted" }, "none");
  return h("table", { class: "headers" }, pairs.map(([name, value]) => h("tr", null, h("th", null, name), h("td", null, value))));
}

function body(b, id) {
  if (b.kind === "empty") {
    return h("p", { class: "muted" }, b.truncated ? `not captured (${b.size === null ? "size unknown" : bytes(b.size)})` : "empty");
  }
  const label = [b.content_type || "no Content-Type", b.charset ? `charset ${b.charset}` : null, bytes(b.size ?? b.captured)].filter(Boolean).join(" · ");
  const notes = [];
  if (b.truncated) notes.push(`truncated: ${bytes(b.captured)} captured of ${b.size === null ? "an unknown size" : bytes(b.size)}`);
  if (b.shown < b.captured) notes.push(`the first ${bytes(b.shown)} shown`);
  let view;
  if (b.kind === "json") view = jsonView(b.text);
  else if (b.kind === "text") view = h("pre", { class: "code" }, b.text);
  else if (b.kind === "image") {
    imageUrl = URL.createObjectURL(new Blob([decodeBase64(b.base64)], { type: b.content_type }));
    view = h("img", { class: "preview", src: imageUrl, alt: "response image" });
  } else view = h("pre", { class: "code hex" }, hexdump(decodeBase64(b.base64).subarray(0, 16384)));
  return h("div", { class: `body ${b.kind}`, id: id || null, dataset: { kind: b.kind } },
    h("div", { class: "muted small" }, label, notes.length ? h("span", { class: "truncated" }, ` · ${notes.join(" · ")}`) : null), view);
}

function jsonView(text) {
  if (text.length > 200000) return h("pre", { class: "code" }, JSON.stringify(JSON.parse(text), null, 2));
  return h("div", { class: "json" }, jsonNode(JSON.parse(text), null, 0));
}

function jsonNode(value, key, depth) {
  const name = key === null ? null : h("span", { class: "key" }, `${JSON.stringify(key)}: `);
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
    const summary = h("summary", null, name, `${open} `, h("span", { class: "muted" }, `${entries.length} ${Array.isArray(value) ? "items" : "keys"}`), ` ${close}`);
    return h("details", { class: "node", open: depth < 2 }, summary,
      entries.map(([k, v]) => jsonNode(v, Array.isArray(value) ? null : k, depth + 1)));
  }
  const kind = value === null ? "null" : typeof value;
  return h("div", { class: "leaf" }, name, h("span", { class: kind }, JSON.stringify(value)));
}

function hexdump(data) {
  const lines = [];
  for (let offset = 0; offset < data.length; offset += 16) {
    const chunk = data.subarray(offset, offset + 16);
    const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = Array.from(chunk, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join("\n");
}

const PHASES = ["dns", "connect", "tls", "send", "wait", "receive"];

function waterfall(t) {
  const known = PHASES.filter((p) => t[p] !== null && t[p] !== undefined && t[p] >= 0);
  const total = t.duration || known.reduce((sum, p) => sum + t[p], 0) || 1;
  let at = 0;
  const bars = known.map((p) => {
    const bar = h("div", { class: "phase" },
      h("span", { class: "label" }, p),
      h("span", { class: "track" }, h("span", { class: `bar ${p}`, style: { left: `${(at / total) * 100}%`, width: `${Math.max(0.5, (t[p] / total) * 100)}%` } })),
      h("span", { class: "num" }, millis(t[p])));
    at += t[p];
    return bar;
  });
  return h("div", { class: "waterfall" },
    h("div", { class: "muted small" }, `started ${clock(t.start)}`, t.duration !== null ? ` · took ${millis(t.duration)}` : " · unfinished"),
    bars.length ? bars : h("p", { class: "muted" }, "no phase timings from this source"));
}

function connection(flow) {
  const rows = [
    ["Client", flow.client_address], ["Server", flow.server_address], ["Server IP", flow.server_ip],
    ["TLS", flow.tls && [flow.tls.version, flow.tls.cipher].filter(Boolean).join(" · ")],
    ["SNI", flow.tls && flow.tls.sni], ["ALPN", flow.tls && flow.tls.alpn],
    ...Object.entries(flow.metadata),
  ].filter(([, v]) => v);
  return h("table", { class: "headers" }, rows.map(([k, v]) => h("tr", null, h("th", null, k), h("td", null, v))));
}

function cookies(c) {
  return h("div", null,
    h("h4", null, "Sent"),
    c.sent.length ? h("table", { class: "headers" }, c.sent.map(([n, v]) => h("tr", null, h("th", null, n), h("td", null, v)))) : h("p", { class: "muted" }, "none"),
    h("h4", null, "Set"),
    c.set.length ? cookieTable(c.set) : h("p", { class: "muted" }, "none"));
}

function cookieTable(list) {
  return h("table", { class: "grid cookies" },
    h("tr", null, ["Name", "Value", "Domain", "Path", "Expires", "Flags"].map((t) => h("th", null, t))),
    list.map((c) => h("tr", null, h("td", null, c.name), h("td", { class: "value" }, c.value), h("td", null, c.domain), h("td", null, c.path),
      h("td", null, c.expires ? dateTime(c.expires) : "session"),
      h("td", null, [c.secure && "Secure", c.http_only && "HttpOnly", c.same_site && `SameSite=${c.same_site}`, c.host_only && "host-only"].filter(Boolean).join(" ")))));
}

function websocket(messages) {
  return h("div", { class: "ws" }, messages.map((m) => h("div", { class: `message ${m.from_client ? "out" : "in"}` },
    h("span", { class: "muted small" }, `${m.from_client ? "→" : "←"} ${clock(m.time)} · ${bytes(m.size)}`),
    h("pre", { class: "code" }, m.text !== null ? m.text : hexdump(decodeBase64(m.base64))))));
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast("curl command copied");
  } catch {
    toast("the browser refused the clipboard: the command is in the curl section below", true);
  }
}

export function showCookies(pane, domains) {
  reset(pane);
  const names = Object.keys(domains);
  clear(pane, h("h2", null, "Cookie jar"),
    h("p", { class: "muted small" }, "The cookies this session's responses (and sources) set, as a browser would hold them at its end."),
    names.length ? names.map((d) => h("section", { class: "domain" }, h("h3", null, d), cookieTable(domains[d]))) : h("p", { class: "muted", id: "no-cookies" }, "no cookies"));
}
