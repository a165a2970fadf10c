// One job: state and actions, loss/lr/evaluation curves, accuracy summary, per-layer error,
// accuracy versus bytes, importance heatmaps, artifacts. Polls while the job is live.
"use strict";
const jobId = decodeURIComponent(location.pathname.split("/").pop());
let finishedShown = null;  // finished_at of the results on screen
let timer = null;

function showHead(j) {
  $("title").textContent = "Job " + (j.name ? j.name + " · " : "") + j.id.slice(0, 12);
  $("head").innerHTML = `<span class="state ${esc(j.state)}" id="state">${esc(j.state)}</span>
    <span>stage <b id="stage">${esc(j.stage)}</b></span>
    <span id="step">${j.total_steps ? esc(j.step + "/" + j.total_steps) : ""}</span>
    <span id="progress" data-progress="${j.progress}">${progressBar(j.progress)}</span>
    <span>${j.state === "running" && j.eta_seconds != null ? "ETA " + esc(fmtEta(j.eta_seconds)) : ""}</span>
    <span class="muted">${esc(j.arch)} · ${esc(j.queue)} queue · attempt ${esc(j.attempts + "/" + j.max_attempts)} ·
      ${esc(j.checkpoint_name)} (${esc(fmtBytes(j.checkpoint_bytes))})</span>`;
  $("cancel").classList.toggle("hidden", !(j.state === "queued" || j.state === "running"));
  $("retry").classList.toggle("hidden", !(j.state === "failed" || j.state === "cancelled"));
  $("error").textContent = j.error || "";
}

function showSummary(j) {
  const s = j.summary;
  if (!s) return;
  const rows = [
    ["original top-1", pct(s.original_top1)], ["reconstructed top-1", pct(s.reconstructed_top1)],
    ["agreement", pct(s.agreement)], ["relative weight error", s.relative_weight_error],
    ["package bytes", fmtBytes(s.package_bytes)], ["original checkpoint bytes", fmtBytes(s.checkpoint_bytes ?? j.checkpoint_bytes)],
    ["size ratio", s.package_bytes ? ((s.checkpoint_bytes ?? j.checkpoint_bytes) / s.package_bytes).toFixed(1) + "×" : "–"],
    ["evaluation images", s.eval_images], ["training seconds", s.train_seconds],
  ];
  $("summary").innerHTML = "<tbody>" + rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td class="num" data-key="${esc(k)}">${esc(v ?? "–")}</td></tr>`).join("") + "</tbody>";
  const layers = Object.entries(s.layer_errors || {}).map(([label, value]) => ({label, value}));
  barChart($("chart-layers"), layers, {title: "per-layer error"});
  const c = s.compression;
  $("compression").classList.toggle("hidden", !c);
  if (c) {
    const pts = [
      {name: "original checkpoint", bytes: s.checkpoint_bytes ?? j.checkpoint_bytes, top1: s.original_top1},
      {name: "fp32 predictor", bytes: c.source_package_bytes, top1: (c.uncompressed || {}).reconstructed_top1},
      {name: `compressed (prune ${c.prune}, ${c.quantize})`, bytes: s.package_bytes, top1: s.reconstructed_top1},
    ];
    $("compress-table").innerHTML = "<thead><tr><th>weights</th><th class='num'>bytes</th><th class='num'>top-1</th></tr></thead><tbody>" +
      pts.map((p) => `<tr><td>${esc(p.name)}</td><td class="num">${esc(fmtBytes(p.bytes))}</td><td class="num">${esc(pct(p.top1))}</td></tr>`).join("") + "</tbody>";
    lineChart($("chart-compress"), pts.filter((p) => p.bytes && p.top1 != null).map((p) => ({name: p.name, points: [[p.bytes / 1024, p.top1]]})),
              {xLabel: "KiB", yLabel: "top-1 %", markers: true, title: "accuracy versus bytes"});
  }
}

async function showCurves() {
  const {points} = await (await api(`/jobs/${jobId}/metrics?max_points=1000`)).json();
  lineChart($("chart-loss"), lossSeries(points), {logY: true, xLabel: "step", yLabel: "loss", title: "losses"});
  lineChart($("chart-lr"), [lrSeries(points)], {logY: true, xLabel: "step", yLabel: "learning rate", title: "learning rate"});
  const ev = evalPoints(points);
  const keys = [...new Set(ev.flatMap((p) => Object.keys(p.losses)))].filter((k) => k !== "eval_images");
  lineChart($("chart-eval"), keys.map((k) => ({name: k, points: ev.filter((p) => k in p.losses).map((p) => [p.elapsed_s, p.losses[k]])})),
            {xLabel: "training seconds", yLabel: "%", markers: true, title: "evaluations"});
}

async function showArtifacts() {
  const {items} = await (await api(`/jobs/${jobId}/artifacts`)).json();
  $("artifacts").querySelector("tbody").innerHTML = items.map((a) => `<tr data-artifact="${esc(a.name)}" data-sha256="${esc(a.sha256)}">
    <td>${esc(a.name)}</td><td class="num">${esc(fmtBytes(a.size))}</td><td><code>${esc(a.sha256)}</code></td>
    <td class="muted">${esc(a.media_type)}</td><td><button data-download="${esc(a.name)}">download</button></td></tr>`).join("");
  if (!items.some((a) => a.name === "importance.json")) { $("heatmaps").innerHTML = '<span class="muted">no importance maps</span>'; return; }
  const index = await (await api(`/jobs/${jobId}/artifacts/importance.json`)).json();
  const layers = Array.isArray(index.layers) ? index.layers.map((l) => l.name ?? l) : Object.keys(index.layers || {});
  $("heatmaps").textContent = "";
  for (const layer of layers) {
    const fig = document.createElement("figure"), img = document.createElement("img"), cap = document.createElement("figcaption");
    img.alt = "importance map of " + layer;
    img.dataset.layer = layer;
    cap.textContent = layer;
    fig.append(img, cap);
    $("heatmaps").appendChild(fig);
    api(`/jobs/${jobId}/importance/${encodeURIComponent(layer)}.png`).then((r) => r.blob())
      .then((b) => { img.src = URL.createObjectURL(b); }).catch((e) => { cap.textContent = layer + ": " + e.message; });
  }
}

async function refresh() {
  if (!apiKey) return;
  try {
    const j = await (await api(`/jobs/${jobId}`)).json();
    showHead(j);
    await showCurves();
    if (j.state === "succeeded" && finishedShown !== j.finished_at) {
      finishedShown = j.finished_at;
      showSummary(j);
      await showArtifacts();
    }
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
    const live = j.state === "queued" || j.state === "running";
    clearTimeout(timer);
    timer = setTimeout(refresh, live ? 1000 : 10000);
  } catch (e) {
    $("status").textContent = e.message;
    clearTimeout(timer);
    timer = setTimeout(refresh, 5000);
  }
}

setupKeyForm(refresh);
for (const act of ["cancel", "retry"]) {
  $(act).addEventListener("click", async () => {
    try { await api(`/jobs/${jobId}/${act}`, {method: "POST"}); } catch (e) { $("status").textContent = e.message; }
    refresh();
  });
}
$("artifacts").addEventListener("click", async (ev) => {
  const name = ev.target.dataset.download;
  if (name) { try { await downloadArtifact(jobId, name); } catch (e) { $("status").textContent = e.message; } }
});
refresh();
