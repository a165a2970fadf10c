// Two or more jobs of one checkpoint: curves overlaid, results side by side.
"use strict";
const ids = (new URLSearchParams(location.search).get("ids") || "").split(",").filter(Boolean);

async function load() {
  if (!apiKey) return;
  try {
    const jobs = await Promise.all(ids.map(async (id) => (await api(`/jobs/${encodeURIComponent(id)}`)).json()));
    const metrics = await Promise.all(ids.map(async (id) => (await api(`/jobs/${encodeURIComponent(id)}/metrics?max_points=1000`)).json()));
    const shas = new Set(jobs.map((j) => j.checkpoint_sha256));
    $("warning").textContent = ids.length < 2 ? "pick two or more jobs on the jobs page" :
      shas.size > 1 ? "these jobs fitted different checkpoints; their results are not comparable" : "";
    const label = (j) => (j.name ? j.name + " " : "") + j.id.slice(0, 8);
    const spec = (j, k) => j.spec[k] ?? "";
    const rows = [
      ["job", (j) => `<a href="/dashboard/jobs/${esc(j.id)}">${esc(label(j))}</a>`],
      ["state", (j) => `<span class="state ${esc(j.state)}">${esc(j.state)}</span>`],
      ["steps", (j) => esc(spec(j, "steps"))], ["hidden", (j) => esc(spec(j, "hidden"))],
      ["compress", (j) => esc(j.spec.compress ? JSON.stringify(j.spec.compress) : "none")],
      ["original top-1", (j) => esc(pct(j.summary?.original_top1))],
      ["reconstructed top-1", (j) => esc(pct(j.summary?.reconstructed_top1))],
      ["agreement", (j) => esc(pct(j.summary?.agreement))],
      ["relative weight error", (j) => esc(j.summary?.relative_weight_error ?? "–")],
      ["package bytes", (j) => esc(fmtBytes(j.summary?.package_bytes))],
      ["training seconds", (j) => esc(j.summary?.train_seconds ?? "–")],
    ];
    $("results").innerHTML = "<tbody>" + rows.map(([k, f]) => `<tr><th>${esc(k)}</th>${jobs.map((j) => `<td class="num" data-job="${esc(j.id)}">${f(j)}</td>`).join("")}</tr>`).join("") + "</tbody>";
    const pick = (name) => jobs.flatMap((j, i) => lossSeries(metrics[i].points, label(j) + " ").filter((s) => s.name.endsWith(" " + name)));
    lineChart($("chart-rec"), pick("rec"), {logY: true, xLabel: "step", title: "rec"});
    lineChart($("chart-total"), pick("total"), {logY: true, xLabel: "step", title: "total"});
    lineChart($("chart-lr"), jobs.map((j, i) => lrSeries(metrics[i].points, label(j))), {logY: true, xLabel: "step", title: "lr"});
    lineChart($("chart-eval"), jobs.map((j, i) => ({name: label(j), points: evalPoints(metrics[i].points)
      .filter((p) => "reconstructed_top1" in p.losses).map((p) => [p.elapsed_s, p.losses.reconstructed_top1])})),
      {xLabel: "training seconds", yLabel: "%", markers: true, title: "top-1"});
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) { $("status").textContent = e.message; }
}
setupKeyForm(load);
load();
setInterval(load, 5000);
