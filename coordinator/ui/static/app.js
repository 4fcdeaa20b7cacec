/* The UI's page logic: routing, fetching the JSON API, tables, and feeding uPlot (which does all drawing).
   Pages: ?page=runs (default), ?page=run&id=ID, ?page=texts&id=ID&key=K[&rank=R], ?page=compare&runs=A,B[&key=K].
   Every user value is put in the page as text (textContent / text nodes), never as HTML.
   The run page stays bounded with thousands of keys: summaries come a page at a time (the next
   page when the end of the list scrolls into view) and a chart is created and fetched only when
   its box scrolls into view (IntersectionObserver).
   With &check=1 each chart, once drawn, counts its canvas pixels of the line and band colours
   into data attributes (the browser test reads them from the dumped DOM). */
"use strict";

const COLORS = {
  line: [31, 95, 191], // the main series
  band: [255, 140, 0], // the ranks' min-max band, drawn at BAND_ALPHA
  runs: ["#1f5fbf", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"],
  ranks: ["#6baed6", "#fd8d3c", "#74c476", "#9e9ac8", "#fdae6b", "#a1d99b", "#bcbddc", "#c6dbef"],
};
const BAND_ALPHA = 0.35;
const POLL_MS = 2000;
const params = new URLSearchParams(location.search);
const CHECK = params.get("check") === "1";
const app = document.getElementById("app");
const rgb = (c, a) => (a === undefined ? `rgb(${c.join(",")})` : `rgba(${c.join(",")},${a})`);

/* ------------------------------------------------------------------ helpers */

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}

async function get(path, query) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) {
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const r = await fetch(path + (q.toString() ? "?" + q : ""));
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
function fmtNum(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v !== "number") return String(v);
  return Math.abs(v) < 1e6 ? +v.toPrecision(6) : Math.round(v * 1000) / 1000; // a timestamp keeps its digits
}
const fmtVal = (v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : fmtNum(v));
function fmtDur(s) {
  if (s === null || s === undefined) return "-";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function fmtBytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return i ? n.toFixed(1) + " " + u[i] : n + " B";
}
const link = (q, text) => h("a", { href: "?" + new URLSearchParams(q) }, text);
const crumbs = (...parts) => document.getElementById("crumbs").replaceChildren(...parts.flatMap((p) => [" / ", p]));
const put = (el, ...kids) => el.replaceChildren(...kids.flat(2).filter((k) => k !== null && k !== undefined));
const fail = (e) => app.replaceChildren(h("p", { class: "error" }, String(e.message || e)));

/* ------------------------------------------------------------------ runs table */

async function pageRuns() {
  crumbs("runs");
  const filt = { project: params.get("project") || "", tag: params.get("tag") || "", state: params.get("state") || "",
    name: params.get("name") || "" };
  let sortKey = "created", sortDir = -1, data = null;
  const picked = new Set();
  const table = h("div");
  const select = (name, values) =>
    h("select", { onchange: (e) => { filt[name] = e.target.value; load(); } },
      h("option", { value: "" }, "any " + name), values.map((v) => h("option", { value: v, selected: v === filt[name] }, v)));
  const bar = h("div", { class: "filters" });
  const cols = [["id", "run"], ["project", "project"], ["name", "name"], ["state", "state"], ["world_size", "ranks", 1],
    ["points", "points", 1], ["size_bytes", "size", 1], ["created", "created"], ["duration_s", "duration", 1], ["tags", "tags"]];
  function render() {
    const rows = [...data.runs].sort((a, b) => {
      const x = a[sortKey] ?? "", y = b[sortKey] ?? "";
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    });
    const head = h("tr", {}, h("th"), cols.map(([k, label, num]) =>
      h("th", { class: "sortable" + (num ? " num" : ""), onclick: () => { sortDir = sortKey === k ? -sortDir : 1; sortKey = k; render(); } },
        label + (sortKey === k ? (sortDir > 0 ? " \u25b2" : " \u25bc") : ""))));
    const body = rows.map((r) => h("tr", {},
      h("td", {}, h("input", { type: "checkbox", checked: picked.has(r.id), onchange: (e) => { e.target.checked ? picked.add(r.id) : picked.delete(r.id); } })),
      h("td", {}, link({ page: "run", id: r.id }, r.id)), h("td", {}, r.project), h("td", {}, r.name),
      h("td", { class: "state-" + r.state }, r.state), h("td", { class: "num" }, r.world_size),
      h("td", { class: "num" }, fmtNum(r.points)), h("td", { class: "num" }, fmtBytes(r.size_bytes)),
      h("td", {}, fmtTime(r.created)), h("td", { class: "num" }, fmtDur(r.duration_s)), h("td", {}, (r.tags || []).join(", "))));
    table.replaceChildren(
      h("p", { class: "muted" }, `${data.runs.length} of ${data.total} runs`),
      h("table", { id: "runs" }, h("thead", {}, head), h("tbody", {}, body)),
      h("p", {}, h("button", { onclick: () => {
        if (picked.size < 2) alert("pick two or more runs to compare");
        else location.search = "?" + new URLSearchParams({ page: "compare", runs: [...picked].join(",") });
      } }, "compare selected")));
  }
  async function load() {
    try {
      data = await get("/api/runs", filt);
    } catch (e) { return fail(e); }
    bar.replaceChildren(select("project", data.projects), select("tag", data.tags), select("state", data.states),
      h("input", { placeholder: "name or id", value: filt.name, onchange: (e) => { filt.name = e.target.value; load(); } }));
    render();
  }
  app.replaceChildren(bar, table);
  await load();
}

/* ------------------------------------------------------------------ charts */

const view = { time: false, smooth: 0 }; // shared by every chart of the page
const charts = [];

/* TensorBoard's smoothing, as `coordinator plot --smooth`: an EMA debiased at the start; gaps stay gaps. */
function ema(values, alpha) {
  if (!alpha) return values;
  let acc = 0, i = 0;
  return values.map((v) => {
    if (v === null) return null;
    acc = alpha * acc + (1 - alpha) * v;
    i += 1;
    return acc / (1 - Math.pow(alpha, i));
  });
}

/* Buckets -> uPlot columns. A bucket of one step is its point; a wider one is two points (its
   min and max, in the order its first and last values suggest), so the line spans what the
   pixel holds. The band and rank lines share the same x. */
function columns(d, series) {
  const one = d.width === 1, xs = [], tx = [];
  let tPrev = -Infinity;
  d.x.forEach((x, i) => {
    const t = d.t[i] === null ? tPrev : Math.max(tPrev, d.t[i]);
    tPrev = t;
    if (one) { xs.push(x); tx.push(t); } else { xs.push(x, x + d.width / 2); tx.push(t, t + 1e-3); }
  });
  const expand = (c) => {
    const out = [];
    c.min.forEach((mn, i) => {
      if (one) out.push(c.last[i]);
      else if (c.first[i] !== null && c.last[i] !== null && c.first[i] > c.last[i]) out.push(c.max[i], mn);
      else out.push(mn, c.max[i]);
    });
    return out;
  };
  const flat = (a) => (one ? a : a.flatMap((v) => [v, v]));
  return { x: view.time ? tx : xs, lines: series.map(expand), flat };
}

/* Charts are created when their box scrolls into view (200 px ahead), and fetched then. */
const pending = new Set(); // loads started, for data-ready
const lazy = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (!e.isIntersecting) continue;
    lazy.unobserve(e.target);
    const make = e.target.makeChart;
    if (make) { const p = make(); pending.add(p); p.finally(() => pending.delete(p)); }
  }
}, { rootMargin: "200px" });

class Chart {
  constructor(runId, key, holder) {
    this.runId = runId;
    this.key = key;
    this.zoom = null; // [lo, hi] steps, or null: the whole series
    this.ranks = false;
    this.u = null;
    this.el = h("div", { class: "chart", "data-key": key });
    this.status = h("span", { class: "muted" });
    this.plot = h("div", { class: "plot" });
    this.loaded = false;
    this.el.append(
      h("div", { class: "bar" }, h("b", {}, key), this.status,
        h("label", {}, h("input", { type: "checkbox", onchange: (e) => { this.ranks = e.target.checked; this.load(); } }), " ranks"),
        h("button", { onclick: () => { this.zoom = null; this.load(); } }, "reset zoom")),
      this.plot);
    holder.append(this.el);
    charts.push(this);
    this.el.makeChart = () => { this.loaded = true; return this.load(); };
    lazy.observe(this.el);
  }

  width() { return Math.max(320, Math.min(560, (app.clientWidth || 1100) / 2 - 30)); }

  async load() {
    const q = { key: this.key, buckets: Math.round(this.width()), ranks: this.ranks ? 1 : undefined };
    if (this.zoom) { q.lo = this.zoom[0]; q.hi = this.zoom[1]; }
    try {
      this.data = await get(`/api/runs/${encodeURIComponent(this.runId)}/series`, q);
    } catch (e) { this.status.textContent = "error: " + e.message; this.status.className = "error"; return; }
    const d = this.data;
    this.status.textContent = `${d.points} pts` + (d.width > 1 ? ` \u00b7 ${d.width} steps/px` : "") + (this.zoom ? " \u00b7 zoomed" : "");
    this.draw();
  }

  draw() {
    const d = this.data;
    if (!d) return;
    const rankIds = this.ranks && d.per_rank ? Object.keys(d.per_rank) : [];
    const c = columns(d, [d.main, ...rankIds.map((r) => d.per_rank[r])]);
    // the band's edges first, so the main line (and the rank lines) are drawn over its fill
    const cols = [c.x];
    const series = [{ label: view.time ? "time" : "step" }];
    const bands = [];
    if (d.band) {
      cols.push(c.flat(d.band.max), c.flat(d.band.min));
      const edge = { stroke: "rgba(0,0,0,0)", width: 0, points: { show: false } };
      series.push({ label: "ranks max", ...edge }, { label: "ranks min", ...edge });
      bands.push({ series: [1, 2], fill: rgb(COLORS.band, BAND_ALPHA) });
    }
    cols.push(ema(c.lines[0], view.smooth));
    series.push({ label: "main", stroke: rgb(COLORS.line), width: 1.5 });
    rankIds.forEach((r, i) => {
      cols.push(ema(c.lines[i + 1], view.smooth));
      series.push({ label: "rank " + r, stroke: COLORS.ranks[i % COLORS.ranks.length], width: 1 });
    });
    const opts = {
      width: this.width(), height: 240, series, bands, legend: { show: rankIds.length > 0 },
      scales: { x: { time: view.time } },
      axes: [{}, { size: 72 }], // room for labels such as 3,000,000
      cursor: { drag: { x: true, y: false, setScale: false } },
      hooks: { setSelect: [(u) => this.select(u)], draw: [(u) => this.check(u)] },
    };
    if (this.u) this.u.destroy();
    this.u = new uPlot(opts, cols, this.plot);
  }

  /* A drag: fetch a finer downsample of the selected range (steps; on a time axis, the buckets inside it). */
  select(u) {
    if (u.select.width < 3) return;
    const a = u.posToVal(u.select.left, "x"), b = u.posToVal(u.select.left + u.select.width, "x");
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    const d = this.data;
    let lo = Math.floor(a), hi = Math.ceil(b);
    if (view.time) {
      const inside = d.x.filter((_, i) => d.t[i] !== null && d.t[i] >= a && d.t[i] <= b);
      if (!inside.length) return;
      lo = inside[0]; hi = inside[inside.length - 1] + d.width - 1;
    }
    if (hi <= lo) return;
    this.zoom = [lo, hi];
    this.load();
  }

  check(u) {
    if (!CHECK) return;
    const img = u.ctx.getImageData(0, 0, u.ctx.canvas.width, u.ctx.canvas.height).data;
    const near = (i, c) => Math.abs(img[i] - c[0]) < 24 && Math.abs(img[i + 1] - c[1]) < 24 && Math.abs(img[i + 2] - c[2]) < 24;
    const bandA = BAND_ALPHA * 255;
    let line = 0, band = 0;
    for (let i = 0; i < img.length; i += 4) {
      if (img[i + 3] > 200 && near(i, COLORS.line)) line++;
      else if (Math.abs(img[i + 3] - bandA) < 30 && near(i, COLORS.band)) band++;
    }
    this.el.dataset.linePixels = line;
    this.el.dataset.bandPixels = band;
    this.el.dataset.drawn = "1";
  }
}

function chartControls() {
  return h("div", { class: "controls" },
    h("label", {}, "x axis ", h("select", { onchange: (e) => { view.time = e.target.value === "time"; charts.forEach((c) => c.draw()); } },
      h("option", { value: "step" }, "step"), h("option", { value: "time" }, "wall clock"))),
    h("label", {}, "smoothing ", h("input", { type: "range", min: 0, max: 0.99, step: 0.01, value: 0,
      oninput: (e) => { view.smooth = +e.target.value; charts.forEach((c) => c.draw()); } })));
}

/* ------------------------------------------------------------------ run page */

function timeline(hl) {
  const span = Math.max(1e-9, hl.t1 - hl.t0);
  const pct = (t) => Math.min(100, Math.max(0, ((t - hl.t0) / span) * 100));
  const rows = Object.entries(hl.ranks).map(([r, v]) => h("div", { class: "tl-row" },
    h("span", { class: "tl-label" }, "rank " + r),
    h("div", { class: "tl-track" },
      v.segments.map((s) => h("div", { class: "tl-seg seg-" + s.state, title: `${s.label}: ${s.state}`,
        style: `left:${pct(s.start)}%;width:${Math.max(0.3, pct(s.end) - pct(s.start))}%` })),
      v.marks.map((m) => h("div", { class: "tl-mark mark-" + m.kind, title: `${fmtTime(m.ts)} ${m.kind}: ${m.text}`,
        style: `left:${pct(m.ts)}%` })))));
  return h("div", { class: "timeline" }, rows.length ? rows : h("p", { class: "muted" }, "no ranks connected"),
    h("div", { class: "muted" }, `${fmtTime(hl.t0)} \u2192 ${fmtTime(hl.t1)}`));
}

const kv = (obj) => h("table", {}, Object.entries(obj).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, fmtVal(v)))));

/* A <details> whose body is made only when opened: raw data (incarnation numbers, JSON) stays out
   of the page until asked for, and a long event list costs one element per event until then. */
function rawDetails(label, make) {
  const det = h("details", { class: "raw", ontoggle: () => {
    if (det.open && det.children.length === 1) det.append(h("pre", {}, make()));
  } }, h("summary", {}, label));
  return det;
}

/* Events as sentences (short incarnation labels, counters as words); the stored detail behind "raw". */
function eventsTable(events) {
  if (!events.length) return h("p", { class: "muted" }, "no events");
  return h("table", { id: "events" }, h("tr", {}, h("th", {}, "time"), h("th", {}, "kind"), h("th", {}, "rank"), h("th", {}, "what happened")),
    events.map((e) => h("tr", { "data-kind": e.kind }, h("td", {}, fmtTime(e.ts)), h("td", {}, e.kind.replace(/_/g, " ")),
      h("td", {}, e.rank ?? "-"),
      h("td", {}, h("span", { class: "event-text" }, e.text || e.kind),
        e.detail && e.detail !== e.text ? rawDetails("raw", () => e.detail) : null))));
}

/* The final report as its summary lines, anomalies first and coloured; the whole JSON collapsed below. */
function reportView(summary, report) {
  const lines = h("ul", { id: "summary" }, summary.map((l) => h("li", { class: "sum-" + l.level }, l.text)));
  return h("div", {}, lines, report ? rawDetails("full report (JSON)", () => JSON.stringify(report, null, 2)) : null);
}

function groupSystem(series) {
  const groups = {};
  for (const s of series) (groups[s.key.split("/")[1] || "other"] ||= []).push(s);
  return groups;
}

/* The text series: per key, each rank's text count and last text (as text, cut long), linking the text view. */
function textsTable(runId, texts) {
  if (texts && texts.error) return h("p", { class: "error" }, "cannot read the text series: " + texts.error);
  if (!texts || !texts.length) return h("p", { class: "muted" }, "no text series");
  return h("table", { id: "texts" }, h("tr", {}, h("th", {}, "series"), h("th", {}, "rank"), h("th", { class: "num" }, "texts"),
    h("th", { class: "num" }, "last step"), h("th", {}, "last text")),
    texts.map((t) => h("tr", { "data-key": t.key, "data-rank": t.rank },
      h("td", {}, link({ page: "texts", id: runId, key: t.key, rank: t.rank }, t.key)), h("td", {}, t.rank),
      h("td", { class: "num" }, t.n), h("td", { class: "num" }, t.last_step ?? "-"),
      h("td", {}, h("div", { class: "text last-text" }, t.last_text ?? ""),
        t.cut ? h("span", { class: "muted" }, ` (${t.cut} characters: open the series for all)`) : null))));
}

/* A list of charts fed page by page from /summaries (``first``: the page the run page already holds). */
function chartList(runId, holder, query, first) {
  const keys = new Set();
  const sentinel = h("div", { class: "sentinel" });
  let next = first.next, busy = false;
  const add = (list) => { for (const s of list) if (!keys.has(s.key)) { keys.add(s.key); new Chart(runId, s.key, holder); } };
  const more = new IntersectionObserver(async (entries) => {
    if (busy || next === null || !entries.some((e) => e.isIntersecting)) return;
    busy = true;
    try {
      const page = await get(`/api/runs/${encodeURIComponent(runId)}/summaries`, { ...query, offset: next });
      add(page.summaries);
      next = page.next;
    } catch (e) { sentinel.textContent = "error: " + e.message; }
    busy = false;
    if (next === null) more.disconnect();
    else { more.unobserve(sentinel); more.observe(sentinel); } // still in view: fetch the next page too
  }, { rootMargin: "400px" });
  add(first.summaries);
  holder.after(sentinel);
  if (next !== null) more.observe(sentinel);
  return { keys, add };
}

async function pageRun() {
  const id = params.get("id");
  crumbs(link({ page: "runs" }, "runs"), id);
  let d;
  try { d = await get(`/api/runs/${encodeURIComponent(id)}`); } catch (e) { return fail(e); }
  const r = d.run;
  const side = h("div");
  function renderSide() {
    put(side,
      h("h2", {}, "Texts"), textsTable(r.id, d.texts),
      h("h2", {}, "Rank health"), timeline(d.health),
      h("h2", {}, "Events"), eventsTable(d.events),
      h("h2", {}, "Final report"), reportView(d.summary, d.report));
  }
  const metrics = h("div", { class: "charts", id: "charts" });
  const userFields = {}, sysFields = {};
  for (const [k, v] of Object.entries(d.fields)) (k.startsWith("sys/") ? sysFields : userFields)[k] = v;
  const system = h("div");
  let list = null;
  const filter = h("input", { placeholder: "filter series", value: "", onchange: async (e) => {
    const match = e.target.value;
    let first;
    try { first = await get(`/api/runs/${encodeURIComponent(r.id)}/summaries`, { match }); } catch (err) { return fail(err); }
    for (const c of charts.splice(0)) { lazy.unobserve(c.el); if (c.u) c.u.destroy(); }
    metrics.replaceChildren();
    metrics.nextElementSibling?.classList.contains("sentinel") && metrics.nextElementSibling.remove();
    count.textContent = `${first.total} series`;
    list = chartList(r.id, metrics, { match }, first);
  } });
  const count = h("span", { class: "muted" }, `${d.metrics_total} series`);
  put(app,
    h("h2", { id: "title" }, `${r.name} `, h("span", { class: "state-" + r.state }, r.state)),
    h("p", {}, `${r.id} \u00b7 project ${r.project} \u00b7 ${r.world_size} ranks \u00b7 started ${fmtTime(r.created)} \u00b7 ${fmtDur(r.duration_s)}`),
    h("h2", {}, "Series"), h("div", { class: "controls" }, chartControls(), filter, count), metrics,
    d.system_total ? [h("h2", {}, "System metrics"), system] : null,
    h("h2", {}, "Fields"), kv(userFields),
    h("details", {}, h("summary", {}, `coordinator fields (sys/*, ${Object.keys(sysFields).length})`), kv(sysFields)), side);
  renderSide();
  list = chartList(r.id, metrics, {}, { summaries: d.metrics, next: d.metrics_next });
  for (const [g, n] of Object.entries(d.system_groups)) {
    const box = h("div", { class: "charts" });
    const query = { group: "system", prefix: `system/${g}/` };
    const det = h("details", { ontoggle: async () => {
      if (!det.open || box.dataset.opened) return;
      box.dataset.opened = "1";
      try { chartList(r.id, box, query, await get(`/api/runs/${encodeURIComponent(r.id)}/summaries`, query)); }
      catch (e) { box.replaceChildren(h("p", { class: "error" }, e.message)); }
    } }, h("summary", {}, `${g} (${n})`), box);
    system.append(det);
  }
  // ready once the charts in view were created and drawn (the observer reports after layout)
  await new Promise((res) => requestAnimationFrame(() => setTimeout(res, 50)));
  while (pending.size) await Promise.allSettled([...pending]);
  document.body.dataset.ready = "1";
  if (r.state === "running") live(r.id, d, renderSide, () => list);
}

/* ------------------------------------------------------------------ text view */

async function pageTexts() {
  const id = params.get("id"), key = params.get("key") || "";
  crumbs(link({ page: "runs" }, "runs"), link({ page: "run", id }, id), key);
  const rank = params.get("rank");
  let d;
  try { d = await get(`/api/runs/${encodeURIComponent(id)}/texts`, { key, rank }); } catch (e) { return fail(e); }
  const pick = h("select", { id: "rank", onchange: (e) => { location.search = "?" + new URLSearchParams({ page: "texts", id, key, rank: e.target.value }); } },
    d.ranks.map((x) => h("option", { value: x, selected: x === d.rank }, "rank " + x)));
  const rows = h("tbody");
  const older = h("button", {}, "older texts");
  const shown = h("span", { class: "muted" });
  let next = d.next, count = 0;
  const add = (page) => {
    for (const t of page.texts) rows.append(h("tr", { "data-step": t.step },
      h("td", { class: "num" }, t.step), h("td", {}, fmtTime(t.ts)), h("td", {}, h("div", { class: "text" }, t.text))));
    count += page.texts.length;
    next = page.next;
    shown.textContent = `${count} of ${page.total} texts, newest first`;
    older.hidden = next === null;
  };
  older.addEventListener("click", async () => {
    older.disabled = true;
    try { add(await get(`/api/runs/${encodeURIComponent(id)}/texts`, { key, rank: d.rank, before: next })); }
    catch (e) { shown.textContent = "error: " + e.message; }
    older.disabled = false;
  });
  app.replaceChildren(h("h2", {}, key), h("div", { class: "controls" }, pick, shown),
    h("table", { id: "text-rows" }, h("thead", {}, h("tr", {}, h("th", { class: "num" }, "step"), h("th", {}, "time"), h("th", {}, "text"))), rows),
    h("p", {}, older));
  add(d);
  document.body.dataset.ready = "1";
}

/* While the run is running: every POLL_MS ask what changed since the journal position we drew,
   reload only those charts (unless zoomed), and the events and health when they changed. */
function live(id, d, renderSide, chartsOf) {
  const badge = document.getElementById("live");
  let pos = d.position, events = d.events.length;
  const tick = async () => {
    let c;
    try { c = await get(`/api/runs/${encodeURIComponent(id)}/changes`, { since: pos }); } catch (e) { badge.textContent = "live: " + e.message; return setTimeout(tick, POLL_MS); }
    pos = c.position;
    badge.textContent = `live \u00b7 ${c.state} \u00b7 ${new Date().toLocaleTimeString()}`;
    for (const ch of charts) if (ch.loaded && c.keys.includes(ch.key) && !ch.zoom) ch.load();
    const fresh = c.keys.filter((k) => !k.startsWith("system/") && !chartsOf().keys.has(k));
    if (fresh.length) chartsOf().add(fresh.map((key) => ({ key }))); // created when scrolled to, like the rest
    if (c.events !== events || c.state !== "running" || fresh.length) {
      try {
        Object.assign(d, await get(`/api/runs/${encodeURIComponent(id)}`));
        events = c.events;
        renderSide();
      } catch (e) { badge.textContent = "live: " + e.message; }
    }
    if (c.state === "running") setTimeout(tick, POLL_MS);
    else badge.textContent = `run ${c.state}`;
  };
  setTimeout(tick, POLL_MS);
}

/* ------------------------------------------------------------------ compare */

async function pageCompare() {
  const ids = (params.get("runs") || "").split(",").filter(Boolean);
  crumbs(link({ page: "runs" }, "runs"), "compare");
  let key = params.get("key") || "";
  let d;
  try { d = await get("/api/compare", { runs: ids.join(","), key }); } catch (e) { return fail(e); }
  if (!key && d.keys.length) {
    key = d.keys.find((k) => !k.startsWith("system/")) || d.keys[0];
    try { d = await get("/api/compare", { runs: ids.join(","), key }); } catch (e) { return fail(e); }
  }
  const plot = h("div", { class: "chart" });
  const pick = h("select", { onchange: (e) => { location.search = "?" + new URLSearchParams({ page: "compare", runs: ids.join(","), key: e.target.value }); } },
    d.keys.map((k) => h("option", { value: k, selected: k === key }, k)));
  const fieldRows = Object.entries(d.fields).map(([p, vals]) => {
    const differ = new Set(vals.map((v) => JSON.stringify(v))).size > 1;
    return h("tr", {}, h("td", {}, p), vals.map((v) => h("td", { class: differ ? "diff" : "" }, fmtVal(v))));
  });
  app.replaceChildren(h("div", { class: "controls" }, h("label", {}, "series ", pick)), plot, h("h2", {}, "Fields"),
    h("table", { id: "fields" }, h("tr", {}, h("th", {}, "field"), d.runs.map((r) => h("th", {}, link({ page: "run", id: r.id }, `${r.name} (${r.id})`)))), fieldRows));
  if (d.series) {
    const s = d.series;
    const c = columns({ x: s.x, t: s.x.map(() => null), width: s.width }, s.runs);
    const series = [{ label: "step" }, ...d.runs.map((r, i) => ({ label: `${r.name} (${r.id})`, stroke: COLORS.runs[i % COLORS.runs.length], width: 1.5 }))];
    new uPlot({ width: Math.min(1100, app.clientWidth - 20 || 900), height: 320, series, scales: { x: { time: false } } }, [c.x, ...c.lines], plot);
  }
  document.body.dataset.ready = "1";
}

/* ------------------------------------------------------------------ route */

({ run: pageRun, texts: pageTexts, compare: pageCompare }[params.get("page")] || pageRuns)().catch(fail);
