// spreadqueue dashboard: reads /events (server-sent snapshots) and draws the page.
// No framework and no CDN: a few DOM helpers and SVG polylines.
"use strict";

const WINDOW_S = 600;  // the plots show at most the last ten minutes...
const MIN_WINDOW_S = 60;  // ...and at least one (a young manager's data is not a sliver)
const series = [];     // {t, depth, inflight, done, failed, p50, p99, wait99}

function $(id) { return document.getElementById(id); }

function seconds(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1e-3) return (v * 1e6).toFixed(0) + " µs";
  if (v < 1) return (v * 1e3).toFixed(1) + " ms";
  if (v < 120) return v.toFixed(1) + " s";
  if (v < 7200) return (v / 60).toFixed(1) + " min";
  return (v / 3600).toFixed(1) + " h";
}
function megabytes(v) { return v === null || v === undefined ? "–" : (v / 1048576).toFixed(0) + " MB"; }
function rate(v) { return v >= 100 ? v.toFixed(0) : v.toFixed(1); }

function cell(text, cls) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  if (cls) td.className = cls;
  return td;
}
function fill(table, rows, empty) {
  const body = $(table).tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(empty);
    td.colSpan = $(table).tHead.rows[0].cells.length;
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const c of row) tr.appendChild(Array.isArray(c) ? cell(c[0], c[1]) : cell(c));
    body.appendChild(tr);
  }
}
function bar(value) {
  const wrap = document.createElement("span");
  const b = document.createElement("span");
  b.className = "bar" + (value > 0.9 ? " hot" : "");
  const inner = document.createElement("span");
  inner.style.width = Math.round(100 * Math.min(1, value || 0)) + "%";
  b.appendChild(inner);
  const label = document.createElement("b");
  label.textContent = Math.round(100 * (value || 0)) + "%";
  wrap.append(b, label);
  return wrap;
}

function plot(id, lines, opts) {
  const svg = $(id);
  const W = 600, H = 160, top = 8, bottom = 18, left = 4;
  const now = series.length ? series[series.length - 1].t : Date.now() / 1000;
  const first = series.length ? series[0].t : now;
  const span = Math.min(WINDOW_S, Math.max(MIN_WINDOW_S, now - first));
  const since = now - span;
  const points = series.filter(p => p.t >= since);
  let max = opts.min || 1;
  for (const p of points) for (const l of lines) max = Math.max(max, p[l.key] || 0);
  max *= 1.15;
  const x = t => left + (W - left) * (t - since) / span;
  const y = v => top + (H - top - bottom) * (1 - (v || 0) / max);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const gy = top + (H - top - bottom) * i / 4;
    parts.push(`<line class="grid" x1="0" x2="${W}" y1="${gy}" y2="${gy}"/>`);
  }
  parts.push(`<text class="axis" x="${W - 4}" y="${top + 10}" text-anchor="end">${opts.fmt(max)}</text>`);
  const ago = span >= 120 ? Math.round(span / 60) + " min" : Math.round(span) + " s";
  parts.push(`<text class="axis" x="4" y="${H - 4}">−${ago}</text>`);
  parts.push(`<text class="axis" x="${W - 4}" y="${H - 4}" text-anchor="end">now</text>`);
  lines.forEach((l, i) => {
    const pts = points.map(p => `${x(p.t).toFixed(1)},${y(p[l.key]).toFixed(1)}`).join(" ");
    parts.push(`<polyline class="s${i} ${l.cls || ""}" points="${pts}"><title>${l.name}</title></polyline>`);
  });
  lines.forEach((l, i) => {
    parts.push(`<text class="axis" x="${70 + i * 100}" y="${H - 4}">` +
      `<tspan class="l${i} ${l.cls || ""}">■</tspan> ${l.name}</text>`);
  });
  svg.innerHTML = parts.join("");
}

function remember(s) {
  const active = s.status ? s.status.active : null;
  series.push({
    t: s.t,
    depth: s.depth !== undefined ? s.depth : active ? active.depth : null,
    inflight: s.in_flight !== undefined ? s.in_flight : active ? active.in_flight : null,
    done: s.rates.done_per_s,
    failed: s.rates.failed_per_s,
    p50: s.latency.run_p50 === null ? null : s.latency.run_p50 * 1e3,
    p99: s.latency.run_p99 === null ? null : s.latency.run_p99 * 1e3,
    wait99: s.latency.wait_p99 === null ? null : s.latency.wait_p99 * 1e3,
  });
  while (series.length && series[0].t < s.t - WINDOW_S) series.shift();
}

function render(s) {
  const status = s.status, active = status.active;
  document.title = `spreadqueue · ${status.queue}`;
  $("queue").textContent = status.queue;
  const state = $("state");
  if (!active) { state.textContent = "no active manager"; state.className = "pill bad"; }
  else if (active.paused) { state.textContent = "dispatch paused"; state.className = "pill warn"; }
  else { state.textContent = "active: " + active.manager; state.className = "pill ok"; }
  $("updated").textContent = "updated " + new Date(s.t * 1000).toLocaleTimeString();
  $("depth").textContent = active ? active.depth : "–";
  $("oldest").textContent = active && active.oldest_queued_for !== null ? "oldest " + seconds(active.oldest_queued_for) : "";
  $("inflight").textContent = active ? active.in_flight : "–";
  $("senders").textContent = active ? active.senders + " sender(s)" : "";
  $("done-rate").textContent = rate(s.rates.done_per_s);
  $("done-total").textContent = s.done + " done";
  $("failed-rate").textContent = rate(s.rates.failed_per_s);
  $("failed-total").textContent = s.failed + " failed";
  const workers = status.workers;
  const drained = workers.filter(w => w.drained).length;
  $("workers-count").textContent = workers.length;
  $("workers-sub").textContent = (drained ? drained + " drained, " : "") + (active ? active.workers_ever + " since start" : "");
  $("latency").textContent = seconds(s.latency.run_p50) + " / " + seconds(s.latency.run_p99);
  $("wait").textContent = "queue wait p99 " + seconds(s.latency.wait_p99);

  fill("workers", workers.map(w => {
    const r = w.report || {};
    const proc = r.process || {};
    const st = w.drained ? "drained" : (r.state || "no answer");
    const oldest = (r.current || []).reduce((m, t) => Math.max(m, t.age), -1);
    return [
      [w.worker, "mono"], [st + (w.registered ? "" : " (unregistered)"), "state-" + st],
      bar(r.utilisation_1m), Math.round(100 * (r.utilisation || 0)) + "%",
      `${r.running !== undefined ? r.running : w.held}/${r.concurrency || "?"}`,
      oldest >= 0 ? seconds(oldest) : "–",
      r.counts ? r.counts.completed : "–", r.counts ? r.counts.errors : "–",
      seconds(w.idle_for), `${proc.host || "?"}:${proc.pid || "?"}`, megabytes(proc.rss_bytes),
    ];
  }), "no worker registered");
  fill("managers", status.managers.map(m => {
    const proc = m.process || {};
    return [[m.manager, "mono"], m.active ? ["active", "state-ready"] : "standby",
      `${proc.host || "?"}:${proc.pid || "?"}`, seconds(m.now - m.started), megabytes(proc.rss_bytes)];
  }), "no manager answered");
  const functions = active ? Object.entries(active.functions || {}) : [];
  fill("functions", functions.sort().map(([name, f]) => {
    const o = Object.assign({}, f.outcomes);
    const done = o.done || 0, failed = o.failed || 0;
    delete o.done; delete o.failed;
    const other = Object.entries(o).map(([k, v]) => `${k} ${v}`).join(", ") || "–";
    return [[name, "mono"], done, failed, other, seconds(f.queue_wait.p99), seconds(f.run_time.p50), seconds(f.run_time.p99)];
  }), "no task yet");
  const failures = active ? (active.recent_failures || []).slice(0, 8) : [];
  fill("failures", failures.map(f => [
    seconds(f.ago) + " ago", [f.task_id, "mono"], f.func, [f.worker, "mono"], [f.error, "error"],
  ]), "none");
  const waiting = active ? (active.waiting || []) : [];
  fill("waiting", waiting.map(w => [
    [w.func, "mono"], w.queued, seconds(w.oldest_for),
    w.workers ? w.workers : ["none: no worker serves it", "error"],
  ]), "nothing waits");

  plot("plot-depth", [{key: "depth", name: "queued"}, {key: "inflight", name: "in flight"}], {fmt: v => v.toFixed(0)});
  plot("plot-rate", [{key: "done", name: "done/s"}, {key: "failed", name: "failed/s", cls: "bad"}], {fmt: v => v.toFixed(0)});
  plot("plot-latency", [{key: "p50", name: "run p50"}, {key: "p99", name: "run p99"}, {key: "wait99", name: "wait p99"}], {fmt: v => v.toFixed(1) + " ms", min: 0.01});
}

function connect() {
  const events = new EventSource("events");
  events.addEventListener("history", e => {
    series.length = 0;
    for (const s of JSON.parse(e.data)) remember(s);
  });
  events.onmessage = e => { const s = JSON.parse(e.data); remember(s); render(s); };
  events.onerror = () => { $("state").textContent = "reconnecting…"; $("state").className = "pill warn"; };
}
connect();
