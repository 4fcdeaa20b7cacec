/* The UI's page logic: routing, fetching the JSON API, tables, and feeding uPlot (which does all drawing).
   Pages: ?page=runs (default), ?page=run&id=ID, ?page=compare&runs=A,B[&key=K].
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

function ema(values, alpha) {
  if (!alpha) return values;
  let acc = null;
  return values.map((v) => (v === null ? null : (acc = acc === null ? v : alpha * acc + (1 - alpha) * v)));
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

class Chart {
  constructor(runId, key, holder) {
    this.runId = runId;
    this.key = key;
    this.zoom = null; // [lo, hi] steps, or null: the whole series
    this.ranks = false;
    this.u = null;
    this.el = h("div", { class: "chart", "data-key": key });
    this.status = h("span", { class: "muted" });
    this.plot = h("div");
    this.el.append(
      h("div", { class: "bar" }, h("b", {}, key), this.status,
        h("label", {}, h("input", { type: "checkbox", onchange: (e) => { this.ranks = e.target.checked; this.load(); } }), " ranks"),
        h("button", { onclick: () => { this.zoom = null; this.load(); } }, "reset zoom")),
      this.plot);
    holder.append(this.el);
    charts.push(this);
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
      v.segments.map((s) => h("div", { class: "tl-seg seg-" + s.state, title: `incarnation ${s.incarnation}: ${s.state}`,
        style: `left:${pct(s.start)}%;width:${Math.max(0.3, pct(s.end) - pct(s.start))}%` })),
      v.marks.map((m) => h("div", { class: "tl-mark mark-" + m.kind, title: `${fmtTime(m.ts)} ${m.kind}: ${m.detail || ""}`,
        style: `left:${pct(m.ts)}%` })))));
  return h("div", { class: "timeline" }, rows.length ? rows : h("p", { class: "muted" }, "no ranks connected"),
    h("div", { class: "muted" }, `${fmtTime(hl.t0)} \u2192 ${fmtTime(hl.t1)}`));
}

const kv = (obj) => h("table", {}, Object.entries(obj).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, fmtVal(v)))));

function eventsTable(events) {
  if (!events.length) return h("p", { class: "muted" }, "no events");
  return h("table", {}, h("tr", {}, h("th", {}, "time"), h("th", {}, "kind"), h("th", {}, "rank"), h("th", {}, "detail")),
    events.map((e) => h("tr", {}, h("td", {}, fmtTime(e.ts)), h("td", {}, e.kind), h("td", {}, e.rank ?? "-"), h("td", {}, e.detail))));
}

function groupSystem(series) {
  const groups = {};
  for (const s of series) (groups[s.key.split("/")[1] || "other"] ||= []).push(s);
  return groups;
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
      h("h2", {}, "Rank health"), timeline(d.health),
      h("h2", {}, "Events"), eventsTable(d.events),
      h("h2", {}, "Final report"), d.report ? h("pre", { id: "report" }, JSON.stringify(d.report, null, 2)) : h("p", { class: "muted" }, "the run has not ended"),
      d.texts ? [h("h2", {}, "Texts"), h("pre", {}, JSON.stringify(d.texts, null, 2))] : null);
  }
  const metrics = h("div", { class: "charts", id: "charts" });
  const userFields = {}, sysFields = {};
  for (const [k, v] of Object.entries(d.fields)) (k.startsWith("sys/") ? sysFields : userFields)[k] = v;
  const system = h("div");
  put(app,
    h("h2", { id: "title" }, `${r.name} `, h("span", { class: "state-" + r.state }, r.state)),
    h("p", {}, `${r.id} \u00b7 project ${r.project} \u00b7 ${r.world_size} ranks \u00b7 started ${fmtTime(r.created)} \u00b7 ${fmtDur(r.duration_s)}`),
    h("h2", {}, "Series"), chartControls(), metrics,
    d.system.length ? [h("h2", {}, "System metrics"), system] : null,
    h("h2", {}, "Fields"), kv(userFields),
    h("details", {}, h("summary", {}, `coordinator fields (sys/*, ${Object.keys(sysFields).length})`), kv(sysFields)), side);
  renderSide();
  const loads = d.metrics.map((s) => new Chart(r.id, s.key, metrics).load());
  for (const [g, list] of Object.entries(groupSystem(d.system))) {
    const box = h("div", { class: "charts" });
    const det = h("details", { ontoggle: () => { if (det.open && !box.childElementCount) list.forEach((s) => new Chart(r.id, s.key, box).load()); } },
      h("summary", {}, `${g} (${list.length})`), box);
    system.append(det);
  }
  await Promise.all(loads);
  document.body.dataset.ready = "1";
  if (r.state === "running") live(r.id, d, renderSide, metrics);
}

/* While the run is running: every POLL_MS ask what changed since the journal position we drew,
   reload only those charts (unless zoomed), and the events and health when they changed. */
function live(id, d, renderSide, holder) {
  const badge = document.getElementById("live");
  let pos = d.position, events = d.events.length;
  const tick = async () => {
    let c;
    try { c = await get(`/api/runs/${encodeURIComponent(id)}/changes`, { since: pos }); } catch (e) { badge.textContent = "live: " + e.message; return setTimeout(tick, POLL_MS); }
    pos = c.position;
    badge.textContent = `live \u00b7 ${c.state} \u00b7 ${new Date().toLocaleTimeString()}`;
    const known = new Set(charts.map((ch) => ch.key));
    for (const ch of charts) if (c.keys.includes(ch.key) && !ch.zoom) ch.load();
    if (c.keys.some((k) => !known.has(k) && !k.startsWith("system/")) || c.events !== events || c.state !== "running") {
      const fresh = await get(`/api/runs/${encodeURIComponent(id)}`);
      events = c.events;
      Object.assign(d, fresh);
      renderSide();
      for (const s of fresh.metrics) if (!known.has(s.key)) new Chart(id, s.key, holder).load();
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

({ run: pageRun, compare: pageCompare }[params.get("page")] || pageRuns)().catch(fail);
