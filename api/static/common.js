// Shared by the dashboard pages: the API key (kept in this tab's sessionStorage only), fetch
// with the key, HTML escaping, number formats, downloads.
"use strict";
const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
let apiKey = sessionStorage.getItem("nern_api_key") || "";

function setupKeyForm(onKey) {
  $("key").value = apiKey;
  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    apiKey = $("key").value.trim();
    sessionStorage.setItem("nern_api_key", apiKey);
    onKey();
  });
}

async function api(path, opts = {}) {
  const r = await fetch(path, {...opts, headers: {Authorization: "Bearer " + apiKey, ...(opts.headers || {})}});
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(r.status + " " + detail);
  }
  return r;
}

function fmtEta(s) {
  if (s == null) return "";
  s = Math.round(s);
  return s >= 3600 ? Math.floor(s / 3600) + "h" + Math.floor(s % 3600 / 60) + "m" : s >= 60 ? Math.floor(s / 60) + "m" + (s % 60) + "s" : s + "s";
}
const pct = (v) => v == null ? "–" : Number(v).toFixed(2) + "%";
function fmtBytes(n) {
  if (n == null) return "–";
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function progressBar(p) {
  // <progress>, not a styled div: the CSP allows no inline style attributes.
  return `<progress max="1" value="${Number(p)}"></progress> <span class="muted">${(100 * p).toFixed(0)}%</span>`;
}

async function downloadArtifact(jobId, name) {
  const blob = await (await api(`/jobs/${encodeURIComponent(jobId)}/artifacts/${encodeURIComponent(name)}`)).blob();
  const a = Object.assign(document.createElement("a"), {href: URL.createObjectURL(blob), download: name});
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// Loss and learning-rate series of a job's metric points (training stage).
function lossSeries(points, prefix = "") {
  const train = points.filter((p) => p.stage === "training");
  const names = [...new Set(train.flatMap((p) => Object.keys(p.losses)))].filter((k) => k !== "lr");
  const series = names.map((k) => ({name: prefix + k, points: train.filter((p) => k in p.losses).map((p) => [p.step, p.losses[k]])}));
  if (names.length > 1 && !names.includes("total")) {
    series.push({name: prefix + "total", points: train.map((p) => [p.step, names.reduce((a, k) => a + (p.losses[k] || 0), 0)])});
  }
  return series;
}
const lrSeries = (points, name = "lr") => ({name, points: points.filter((p) => p.stage === "training" && p.lr != null).map((p) => [p.step, p.lr])});
const evalPoints = (points) => points.filter((p) => p.stage === "evaluating");
