// The Majordodo dashboard's script, embedded in the broker. The pages work without it; on the
// overview it refreshes the counts and draws the throughput chart from /ui/api/overview.
"use strict";

(function () {
  const chart = document.getElementById("chart");
  if (!chart) {
    return;
  }
  const SVG = "http://www.w3.org/2000/svg";
  const W = 800, H = 240, LEFT = 44, BOTTOM = 20, TOP = 10;
  const WINDOW_MS = 10 * 60 * 1000;
  const MIN_WINDOW_MS = 60 * 1000;

  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) {
      e.setAttribute(k, attrs[k]);
    }
    if (text !== undefined) {
      e.textContent = text;
    }
    return e;
  }

  function niceMax(v) {
    if (v <= 1) {
      return 1;
    }
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) {
      if (v <= m * p) {
        return m * p;
      }
    }
    return 10 * p;
  }

  function fmt(v) {
    return v >= 100 ? Math.round(v).toString() : v.toFixed(1);
  }

  function draw(rates) {
    while (chart.firstChild) {
      chart.removeChild(chart.firstChild);
    }
    const end = rates.length ? rates[rates.length - 1].t : Date.now();
    // The window grows with the samples, from one minute up to ten.
    const span = rates.length ? Math.min(WINDOW_MS, Math.max(MIN_WINDOW_MS, end - rates[0].t)) : WINDOW_MS;
    const start = end - span;
    let top = 0;
    for (const r of rates) {
      top = Math.max(top, r.submitted, r.ended);
    }
    top = niceMax(top);
    const x = (t) => LEFT + ((t - start) / span) * (W - LEFT - 4);
    const y = (v) => H - BOTTOM - (v / top) * (H - BOTTOM - TOP);
    for (const f of [0, 0.5, 1]) {
      const yy = y(top * f);
      chart.appendChild(el("line", { x1: LEFT, x2: W, y1: yy, y2: yy, class: "axis" }));
      chart.appendChild(el("text", { x: 2, y: yy + 4, class: "grid-label" }, fmt(top * f)));
    }
    for (const f of [1, 0.5, 0]) {
      const ago = Math.round((span * f) / 1000);
      const label = ago === 0 ? "now" : ago >= 120 ? "-" + Math.round(ago / 60) + " min" : "-" + ago + " s";
      chart.appendChild(el("text", { x: Math.min(x(end - span * f), W - 40), y: H - 4, class: "grid-label" }, label));
    }
    for (const series of ["submitted", "ended"]) {
      const points = rates.filter((r) => r.t >= start)
        .map((r) => x(r.t).toFixed(1) + "," + y(r[series]).toFixed(1)).join(" ");
      chart.appendChild(el("polyline", { points: points, class: series, "data-series": series }));
    }
    const now = document.getElementById("chart-now");
    if (now && rates.length) {
      const last = rates[rates.length - 1];
      now.textContent = "now: " + fmt(last.submitted) + " submitted/s, " + fmt(last.ended) + " ended/s";
    }
  }

  function setText(id, v) {
    const e = document.getElementById(id);
    if (e) {
      e.textContent = String(v);
    }
  }

  async function refresh() {
    try {
      const res = await fetch("/ui/api/overview", { credentials: "same-origin", cache: "no-store" });
      if (res.status === 401) {
        window.location.href = "/ui/login";
        return;
      }
      const body = await res.json();
      if (!body.ok) {
        return;
      }
      const c = body.counts;
      for (const k of ["waiting", "delayed", "running", "finished", "error", "tasks"]) {
        setText("count-" + k, c[k]);
      }
      setText("role", c.role);
      setText("lsn", c.lsn);
      setText("workers", c.connected_workers);
      draw(body.rates);
      chart.setAttribute("data-samples", String(body.rates.length));
    } catch (e) {
      // The broker is restarting or the network is down: try again at the next tick.
    }
  }

  draw([]);
  refresh();
  setInterval(refresh, 2000);
})();
