// SVG charts drawn by us: line charts (linear or log y), bar charts, scatter plots. No library.
"use strict";
const NERN_COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];
const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function fmtNum(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(0);
  return String(+v.toPrecision(3));
}

// series: [{name, points: [[x, y], ...]}]; opts: {logY, xLabel, yLabel, markers}
function lineChart(host, series, opts = {}) {
  host.textContent = "";
  series = series.map((s) => ({...s, points: s.points.filter(([x, y]) => isFinite(x) && isFinite(y) && (!opts.logY || y > 0))}))
                 .filter((s) => s.points.length);
  if (!series.length) { host.appendChild(Object.assign(document.createElement("div"), {className: "empty", textContent: "no data yet"})); return null; }
  const W = 460, H = 240, L = 54, R = 10, T = 10, B = 36;
  const xs = series.flatMap((s) => s.points.map((p) => p[0])), ys = series.flatMap((s) => s.points.map((p) => p[1]));
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const fy = opts.logY ? Math.log10 : (v) => v;
  let y0 = fy(Math.min(...ys)), y1 = fy(Math.max(...ys));
  if (y1 - y0 < 1e-12) { y0 -= opts.logY ? 0.5 : Math.abs(y0) * 0.1 + 1; y1 += opts.logY ? 0.5 : Math.abs(y1) * 0.1 + 1; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R), sy = (y) => T + (1 - (fy(y) - y0) / (y1 - y0)) * (H - T - B);
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title || "chart"});
  const yt = opts.logY ? Array.from({length: Math.floor(y1) - Math.ceil(y0) + 1}, (_, i) => Math.pow(10, Math.ceil(y0) + i))
                       : niceTicks(y0, y1, 5);
  for (const v of yt) {
    const y = sy(v);
    svg.appendChild(svgEl("line", {x1: L, x2: W - R, y1: y, y2: y, stroke: "#eceff3"}));
    svg.appendChild(svgEl("text", {x: L - 4, y: y + 3, "text-anchor": "end", "font-size": 10, fill: "#6b7280"}, fmtNum(v)));
  }
  for (const v of niceTicks(x0, x1, 6)) {
    const x = sx(v);
    svg.appendChild(svgEl("line", {x1: x, x2: x, y1: H - B, y2: H - B + 4, stroke: "#9ca3af"}));
    svg.appendChild(svgEl("text", {x, y: H - B + 15, "text-anchor": "middle", "font-size": 10, fill: "#6b7280"}, fmtNum(v)));
  }
  svg.appendChild(svgEl("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#9ca3af"}));
  svg.appendChild(svgEl("line", {x1: L, x2: L, y1: T, y2: H - B, stroke: "#9ca3af"}));
  if (opts.xLabel) svg.appendChild(svgEl("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", "font-size": 11}, opts.xLabel));
  if (opts.yLabel) svg.appendChild(svgEl("text", {x: 12, y: (T + H - B) / 2, "text-anchor": "middle", "font-size": 11, transform: `rotate(-90 12 ${(T + H - B) / 2})`}, opts.yLabel));
  series.forEach((s, i) => {
    const color = s.color || NERN_COLORS[i % NERN_COLORS.length];
    const d = s.points.map(([x, y], j) => (j ? "L" : "M") + sx(x).toFixed(1) + " " + sy(y).toFixed(1)).join(" ");
    svg.appendChild(svgEl("path", {d, fill: "none", stroke: color, "stroke-width": 1.6, "stroke-dasharray": s.dash || "", class: "series", "data-name": s.name}));
    if (opts.markers || s.points.length < 3) for (const [x, y] of s.points) svg.appendChild(svgEl("circle", {cx: sx(x), cy: sy(y), r: 3, fill: color}));
  });
  host.appendChild(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  series.forEach((s, i) => {
    const span = document.createElement("span"), sw = document.createElement("i");
    sw.style.background = s.color || NERN_COLORS[i % NERN_COLORS.length];
    span.append(sw, s.name);
    legend.appendChild(span);
  });
  host.appendChild(legend);
  return svg;
}

// bars: [{label, value}]
function barChart(host, bars, opts = {}) {
  host.textContent = "";
  bars = bars.filter((b) => isFinite(b.value));
  if (!bars.length) { host.appendChild(Object.assign(document.createElement("div"), {className: "empty", textContent: "no data"})); return null; }
  const W = 460, rowH = 14, L = 150, R = 50, T = 4, H = T + bars.length * rowH + 4;
  const vmax = Math.max(...bars.map((b) => b.value), 1e-30);
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title || "bar chart"});
  bars.forEach((b, i) => {
    const y = T + i * rowH, w = (W - L - R) * b.value / vmax;
    svg.appendChild(svgEl("text", {x: L - 4, y: y + 10, "text-anchor": "end", "font-size": 9, fill: "#374151"}, b.label));
    svg.appendChild(svgEl("rect", {x: L, y: y + 2, width: Math.max(w, 0.5).toFixed(1), height: rowH - 4, fill: "#2563eb", class: "bar"}));
    svg.appendChild(svgEl("text", {x: L + w + 3, y: y + 10, "font-size": 9, fill: "#6b7280"}, fmtNum(b.value)));
  });
  host.appendChild(svg);
  return svg;
}
