// stylefarm dashboard: follows the page's server-sent event stream and updates
// what moves (states, progress, loss curves, thumbnails). Hand-written, no
// dependencies, no build step. The server renders every page; this only patches.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const page = document.body.dataset.page;

// ---------------------------------------------------------------- formatting

function ago(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}

function duration(s) {
  if (!isFinite(s)) return "—";
  if (s < 60) return `${Math.ceil(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

const loss = (v) => (v == null || !isFinite(v) ? "" : `loss ${Number(v).toExponential(3)}`);

function tickTimes() {
  for (const t of $$("time[data-ms]")) {
    const ms = Number(t.dataset.ms);
    if (!ms) continue;
    if (!t.title) t.title = t.textContent;
    t.textContent = t.classList.contains("age") ? ago(ms) : new Date(ms).toLocaleString();
  }
  for (const el of $$("[data-batch][data-total]")) eta(el);
}

// ---------------------------------------------------------------- batches

const COUNTS = ["total", "queued", "running", "succeeded", "failed", "cancelled"];

function countsText(c) {
  const done = c.succeeded + c.failed + c.cancelled;
  let text = `${done}/${c.total} done`;
  for (const k of ["running", "queued", "failed", "cancelled"]) if (c[k] > 0) text += ` · ${c[k]} ${k}`;
  return text;
}

function eta(el) {
  const cell = $(".eta", el);
  if (!cell) return;
  const c = Object.fromEntries(COUNTS.map((k) => [k, Number(el.dataset[k] || 0)]));
  const started = Number(el.dataset.started || 0);
  const done = c.succeeded + c.failed + c.cancelled;
  if (Number(el.dataset.finished || 0) > 0) cell.textContent = "finished";
  else if (!started || done === 0) cell.textContent = "—";
  else cell.textContent = duration(((Date.now() - started) / 1000 / done) * (c.total - done));
}

function setState(el, state) {
  el.dataset.state = state;
  const pill = $(".state .pill", el) || $(".pill", el);
  if (pill) {
    pill.className = `pill s-${state}`;
    pill.textContent = state;
  }
}

// Applies a batch view (counts, state, times) to a row or the batch summary.
function updateBatch(el, b) {
  for (const k of COUNTS) el.dataset[k] = b[k];
  el.dataset.started = b.started_ms;
  el.dataset.finished = b.finished_ms;
  setState(el, b.state);
  const rects = $$("svg.bar rect", el);
  let x = 0;
  ["succeeded", "failed", "cancelled", "running"].forEach((k, i) => {
    const w = (b[k] / Math.max(1, b.total)) * 100;
    if (rects[i]) {
      rects[i].setAttribute("x", x.toFixed(3));
      rects[i].setAttribute("width", w.toFixed(3));
    }
    x += w;
  });
  const counts = $(".counts", el);
  if (counts) counts.textContent = countsText(b);
  const priority = $(".priority", el);
  if (priority) priority.textContent = b.priority;
  eta(el);
}

const pendingRows = new Set();
async function batchRow(id) {
  if (pendingRows.has(id)) return;
  pendingRows.add(id);
  try {
    const r = await fetch(`/fragments/batch-row/${encodeURIComponent(id)}`);
    if (!r.ok || $(`#batch-${CSS.escape(id)}`)) return;
    $("#batches").insertAdjacentHTML("afterbegin", await r.text());
    $("#no-batches")?.remove();
    tickTimes();
  } finally {
    pendingRows.delete(id);
  }
}

function onBatchesEvent(ev) {
  const b = ev.batch;
  if (!b) return;
  const row = $(`#batch-${CSS.escape(b.id)}`);
  if (ev.kind === "batch_deleted") { row?.remove(); return; }
  const filter = $("#batches").dataset.filter;
  if (row) updateBatch(row, b);
  else if (filter === "all" || filter === b.state) batchRow(b.id);
}

// ---------------------------------------------------------------- loss curves

const traces = new Map(); // job id -> rows [iteration, total, content, style, tv, scale, elapsed_ms]

function appendRows(id, rows) {
  const have = traces.get(id) || [];
  const last = have[have.length - 1];
  for (const r of rows) {
    if (last && (r[5] < last[5] || (r[5] === last[5] && r[0] <= last[0]))) continue;
    have.push(r);
  }
  traces.set(id, have);
  return have;
}

async function loadTrace(id) {
  const r = await fetch(`/api/jobs/${encodeURIComponent(id)}/trace`);
  if (!r.ok) return;
  const t = await r.json();
  if (t.source === "store" || !traces.has(id)) traces.set(id, t.rows);
  else appendRows(id, t.rows);
  drawJob(id);
}

function polyline(svg, points, cls) {
  // a NaN or non-positive value (log scale) breaks the line
  let run = [];
  const flush = () => {
    if (run.length) {
      const p = document.createElementNS(SVG, "polyline");
      p.setAttribute("points", run.join(" "));
      p.setAttribute("class", cls);
      svg.appendChild(p);
    }
    run = [];
  };
  for (const pt of points) (pt ? run.push(`${pt[0].toFixed(2)},${pt[1].toFixed(2)}`) : flush());
  flush();
}

const log10 = (v) => (v > 0 && isFinite(v) ? Math.log10(v) : null);

function spark(svg, rows) {
  svg.replaceChildren();
  svg.dataset.points = rows.length;
  const ys = rows.map((r) => log10(r[1])).filter((v) => v !== null);
  if (!ys.length) return;
  const [lo, hi] = [Math.min(...ys), Math.max(...ys)];
  const n = Math.max(1, rows.length - 1);
  polyline(svg, rows.map((r, i) => { const y = log10(r[1]); return y === null ? null : [(i / n) * 200, 46 - ((y - lo) / Math.max(hi - lo, 1e-9)) * 44]; }), "l-total");
}

const SERIES = [[1, "l-total"], [2, "l-content"], [3, "l-style"], [4, "l-tv"]];

function plot(svg, rows) {
  svg.replaceChildren();
  svg.dataset.points = rows.length;
  const [W, H, L, B] = [900, 320, 60, 24];
  const ys = rows.flatMap((r) => SERIES.map(([k]) => log10(r[k]))).filter((v) => v !== null);
  if (!ys.length) return;
  // at most 6 decades below the top: a first content loss of ~0 would flatten everything else
  const hi = Math.ceil(Math.max(...ys)), lo = Math.max(Math.floor(Math.min(...ys)), hi - 6);
  const n = Math.max(1, rows.length - 1);
  const X = (i) => L + (i / n) * (W - L - 10);
  const Y = (v) => H - B - ((v - lo) / Math.max(hi - lo, 1)) * (H - B - 10);
  for (let d = lo; d <= hi; d++) {
    const line = document.createElementNS(SVG, "line");
    Object.entries({ x1: L, x2: W - 10, y1: Y(d), y2: Y(d), class: "grid" }).forEach(([k, v]) => line.setAttribute(k, v));
    const label = document.createElementNS(SVG, "text");
    Object.entries({ x: L - 6, y: Y(d) + 4, class: "tick" }).forEach(([k, v]) => label.setAttribute(k, v));
    label.textContent = d === 0 ? "1" : `1e${d}`;
    svg.append(line, label);
  }
  // scale boundaries
  rows.forEach((r, i) => {
    if (i > 0 && r[5] !== rows[i - 1][5]) {
      const line = document.createElementNS(SVG, "line");
      Object.entries({ x1: X(i), x2: X(i), y1: 10, y2: H - B, class: "scale" }).forEach(([k, v]) => line.setAttribute(k, v));
      svg.appendChild(line);
    }
  });
  for (const [k, cls] of SERIES) polyline(svg, rows.map((r, i) => { const y = log10(r[k]); return y === null || y < lo ? null : [X(i), Y(y)]; }), cls);
  const xl = document.createElementNS(SVG, "text");
  Object.entries({ x: W - 10, y: H - 6, class: "tick end" }).forEach(([k, v]) => xl.setAttribute(k, v));
  xl.textContent = `${rows.length} rows (iterations over every scale)`;
  svg.appendChild(xl);
}

function drawJob(id) {
  const rows = traces.get(id) || [];
  if (page === "batch") {
    const svg = $(`#job-${CSS.escape(id)} svg.spark`);
    if (svg) spark(svg, rows);
  } else if (page === "job") {
    plot($("#loss"), rows);
  }
}

// ---------------------------------------------------------------- jobs

function jobProgress(el, j) {
  const iter = $(".iter", el), l = $(".loss", el);
  if (j.state === "running" && j.total_iterations) {
    iter.textContent = `it ${j.iteration}/${j.total_iterations}` + (j.scales > 1 ? ` · scale ${j.scale + 1}/${j.scales}` : "");
  } else if (j.state !== "running") iter.textContent = j.state === "queued" && j.waiting_reason ? j.waiting_reason : "";
  const latest = j.final_loss ?? (j.latest ? j.latest[1] : null);
  if (latest != null) l.textContent = loss(latest);
}

function fileLinks(j) {
  return j.files.filter((f) => f.kind !== "snapshot").map((f) => {
    const a = document.createElement("a");
    a.href = `/files/${encodeURIComponent(j.id)}/${f.name}`;
    a.download = f.name.split("/").pop();
    a.textContent = f.name;
    return a;
  });
}

function onJobCard(ev) {
  const j = ev.job;
  const el = $(`#job-${CSS.escape(j.id)}`);
  if (!el) return;
  const before = el.dataset.state;
  setState(el, j.state);
  jobProgress(el, j);
  if (ev.kind === "started") traces.delete(j.id);
  if (j.rows.length) { appendRows(j.id, j.rows); drawJob(j.id); }
  else if (j.state === "running" && !traces.has(j.id)) loadTrace(j.id);
  if (j.state === "succeeded" && (before !== "succeeded" || !$("img", el))) {
    const img = document.createElement("img");
    img.src = `/files/${encodeURIComponent(j.id)}/output.png`;
    img.alt = j.name;
    $(".thumb", el).replaceChildren(img);
    $(".links", el).replaceChildren(...fileLinks(j).flatMap((a) => [a, " "]));
    loadTrace(j.id);
  }
  if ((j.state === "failed" || j.state === "cancelled") && j.error) {
    let p = $(".error", el);
    if (!p) { p = document.createElement("p"); p.className = "error"; $(".links", el).before(p); }
    p.textContent = j.error;
  }
}

// The job page swaps in its freshly rendered self when the job changes state
// (outputs, attempts, timeline), without a reload.
async function refreshJobPage() {
  const r = await fetch(location.href, { cache: "no-store" });
  if (!r.ok) return;
  const doc = new DOMParser().parseFromString(await r.text(), "text/html");
  $("main").replaceWith(doc.querySelector("main"));
  tickTimes();
  const id = $("#job").dataset.job;
  drawJob(id);
  if ($("#job").dataset.state === "succeeded") loadTrace(id);
}

function onJobEvent(ev) {
  const el = $("#job");
  const j = ev.job;
  if (!el || !j || j.id !== el.dataset.job) return;
  const before = el.dataset.state;
  jobProgress(el, j);
  if (ev.kind === "started") traces.delete(j.id);
  if (j.rows.length) { appendRows(j.id, j.rows); drawJob(j.id); }
  if (j.state !== before || ev.kind === "started") refreshJobPage();
}

// ---------------------------------------------------------------- workers

let workersTimer = null;
function refreshWorkers() {
  clearTimeout(workersTimer);
  workersTimer = setTimeout(async () => {
    const r = await fetch("/fragments/workers");
    if (r.ok) { $("#workers").innerHTML = await r.text(); tickTimes(); }
  }, 300);
}

function onWorkersEvent(ev) {
  const j = ev.job;
  if (!j) return;
  const cur = $(`.cur[data-job="${CSS.escape(j.id)}"]`);
  if (ev.kind === "progress" && cur) jobProgress(cur, j);
  else if (ev.kind !== "progress") refreshWorkers();
}

// ---------------------------------------------------------------- stream

const handlers = { batches: onBatchesEvent, workers: onWorkersEvent, batch: onBatchEvent, job: onJobEvent };

// The server-rendered sections of a batch page (a video batch's frames, a
// tiled render's mosaic: one rule for the page and the CLI): a change of
// state of one of their jobs fetches the section again, at most once a second.
const sectionDue = {};
function refreshSection(id) {
  const el = document.getElementById(id);
  if (!el || sectionDue[id]) return;
  sectionDue[id] = setTimeout(async () => {
    try {
      const r = await fetch(`/fragments/${id}/${encodeURIComponent(el.dataset.batch)}`);
      if (r.ok) document.getElementById(id).outerHTML = await r.text();
    } catch (e) {
      // the coordinator is away: the next event tries again
    } finally {
      sectionDue[id] = null;
    }
  }, 1000);
}

// A batch control: POST with the header a cross-site form cannot send.
async function batchAction(id, action, query = "") {
  const r = await fetch(`/api/batches/${encodeURIComponent(id)}/${action}${query}`, { method: "POST", headers: { "x-stylefarm-action": action } });
  const body = await r.json();
  if (!r.ok) { alert(body.error); return null; }
  return body;
}

// A worker control (admin): disable, enable, drain, forget; the row refreshes.
async function workerAction(id, action) {
  const r = await fetch(`/api/workers/${encodeURIComponent(id)}/${action}`, { method: "POST", headers: { "x-stylefarm-action": action } });
  const body = await r.json();
  if (!r.ok) { alert(body.error); return null; }
  return body;
}

function setPauseButton(paused) {
  const b = $("#pause");
  if (!b) return;
  b.dataset.action = paused ? "resume" : "pause";
  b.textContent = paused ? "Resume" : "Pause";
}

function onBatchEvent(ev) {
  const summary = $("#summary");
  if (ev.batch && summary) updateBatch(summary, ev.batch);
  if (ev.job) onJobCard(ev);
  if (ev.job?.video && ev.kind !== "progress") refreshSection("frames");
  if (ev.job?.tile && ev.kind !== "progress") refreshSection("tiles");
  if (ev.kind === "batch_changed" && ev.batch) setPauseButton(ev.batch.state === "paused");
  if (ev.kind === "batch_finished") { $(".controls")?.remove(); refreshSection("frames"); refreshSection("tiles"); }
  if (ev.kind === "batch_deleted") location.assign("/");
}

function follow() {
  const url = document.body.dataset.stream;
  if (!url) return;
  const live = $("#live");
  const source = new EventSource(url);
  source.onopen = () => live?.classList.add("on");
  source.onerror = () => live?.classList.remove("on");
  const handle = (e) => handlers[page]?.(JSON.parse(e.data));
  for (const kind of ["snapshot", "queued", "started", "progress", "succeeded", "failed", "cancelled", "waiting", "batch_changed", "batch_finished", "batch_deleted"]) {
    source.addEventListener(kind, handle);
  }
  source.addEventListener("batch_finished", () => { source.close(); live?.classList.remove("on"); });
  source.addEventListener("bye", () => source.close());
  source.addEventListener("resync", () => location.reload());
  // the farm-wide stream says hello once it is subscribed: nothing after this is missed
  source.addEventListener("hello", () => { document.body.dataset.following = "yes"; });
}

function start() {
  tickTimes();
  setInterval(tickTimes, 1000);
  if (page === "batch") {
    // traces of finished and running jobs as their cards come into view
    const seen = new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (!e.isIntersecting) continue;
        seen.unobserve(e.target);
        const { job, state } = e.target.dataset;
        if ((state === "succeeded" || state === "running") && !traces.has(job)) loadTrace(job);
      }
    });
    $$("article.job").forEach((a) => seen.observe(a));
    $("#cancel")?.addEventListener("click", async (e) => {
      const id = e.target.dataset.batch;
      if (!confirm(`Cancel batch ${id}? Queued jobs stop now, running ones at their next heartbeat.`)) return;
      await batchAction(id, "cancel");
    });
    $("#pause")?.addEventListener("click", async (e) => {
      const id = $(".controls").dataset.batch;
      const action = e.target.dataset.action;
      let query = "";
      if (action === "pause" && Number($("#summary").dataset.running) > 0
        && confirm("Hand the running jobs back now (no attempt spent)? Cancel lets them finish.")) query = "?now";
      const body = await batchAction(id, action, query);
      if (body) setPauseButton(body.state === "paused");
    });
    $("#retry")?.addEventListener("click", async (e) => {
      const body = await batchAction(e.target.dataset.batch, "retry");
      if (body) location.reload();
    });
    $("#delete")?.addEventListener("click", async (e) => {
      const id = e.target.dataset.batch;
      if (!confirm(`Delete batch ${id}, its jobs, history and every output? This cannot be undone.`)) return;
      const force = Number($("#summary").dataset.running) > 0
        && confirm("Jobs are running: take them back and cancel them first?") ? "?force" : "";
      if (await batchAction(id, "delete", force)) location.assign("/");
    });
    $("#priority")?.addEventListener("click", async () => {
      const id = $(".controls").dataset.batch;
      const value = prompt("New priority (-1000..1000, higher first):", $(".priority")?.textContent ?? "0");
      if (value === null) return;
      await batchAction(id, "priority", `?priority=${encodeURIComponent(value.trim())}`);
    });
  }
  if (page === "workers") {
    // delegated: the rows are replaced as workers change
    $("#workers")?.addEventListener("click", async (e) => {
      const b = e.target.closest("button.worker-action");
      if (!b) return;
      const { worker, action } = b.dataset;
      const ask = { drain: `Drain ${worker}: no new jobs, and its running jobs go back to the queue (no attempt spent)?`,
        forget: `Forget ${worker}? Its record goes; a worker that comes back registers again.` }[action];
      if (ask && !confirm(ask)) return;
      if (await workerAction(worker, action)) refreshWorkers();
    });
  }
  if (page === "job") loadTrace($("#job").dataset.job);
  follow();
}

start();
