// The jobs list: filters, live updates (polling the JSON API every 2 s), links, actions.
"use strict";
let pages = 1;
const selected = new Set();

function row(j) {
  const s = j.summary || {};
  const id = esc(j.id);
  const acts = [];
  if (j.state === "queued" || j.state === "running") acts.push(`<button data-act="cancel" data-id="${id}">cancel</button>`);
  if (j.state === "failed" || j.state === "cancelled") acts.push(`<button data-act="retry" data-id="${id}">retry</button>`);
  if (j.state === "succeeded") acts.push(`<button data-act="download" data-id="${id}">predictor</button>`);
  return `<tr data-job="${id}" data-state="${esc(j.state)}">
    <td><input type="checkbox" data-pick="${id}" ${selected.has(j.id) ? "checked" : ""} aria-label="select for comparison"></td>
    <td><a href="/dashboard/jobs/${id}"><code>${esc(j.id.slice(0, 12))}</code></a><div class="muted">${esc(j.name || j.checkpoint_name)}</div></td>
    <td>${esc(j.arch)}</td>
    <td class="state ${esc(j.state)}">${esc(j.state)}${j.cancel_requested && j.state === "running" ? " (cancelling)" : ""}</td>
    <td>${esc(j.stage)}<div class="muted step">${j.total_steps ? esc(j.step + "/" + j.total_steps) : ""}</div></td>
    <td class="prog" data-progress="${j.progress}">${progressBar(j.progress)}</td>
    <td>${esc(fmtEta(j.state === "running" ? j.eta_seconds : null))}</td>
    <td>${esc(j.attempts + "/" + j.max_attempts)}</td>
    <td class="muted">${esc(new Date(j.created_at).toLocaleString())}</td>
    <td>${j.summary ? esc(pct(s.original_top1) + " → " + pct(s.reconstructed_top1)) : ""}
        ${j.error ? `<div class="error">${esc(j.error)}</div>` : ""}</td>
    <td>${acts.join(" ")}</td></tr>`;
}

function query() {
  const q = new URLSearchParams({limit: "50"});
  if ($("state").value) q.append("state", $("state").value);
  if ($("arch").value.trim()) q.append("arch", $("arch").value.trim());
  if ($("after").value) q.append("created_after", new Date($("after").value).toISOString());
  if ($("before").value) q.append("created_before", new Date($("before").value).toISOString());
  return q;
}

async function refresh() {
  if (!apiKey) return;
  try {
    const items = [];
    let cursor = null;
    for (let p = 0; p < pages; p++) {
      const q = query();
      if (cursor) q.append("cursor", cursor);
      const page = await (await api("/jobs?" + q)).json();
      items.push(...page.items);
      cursor = page.next_cursor;
      if (!cursor) break;
    }
    $("more").hidden = !cursor;
    $("rows").innerHTML = items.length ? items.map(row).join("") : `<tr><td colspan="11" class="muted">no jobs</td></tr>`;
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("status").textContent = e.message;
  }
}

setupKeyForm(refresh);
for (const id of ["state", "arch", "after", "before"]) $(id).addEventListener("change", () => { pages = 1; refresh(); });
$("filters").addEventListener("submit", (ev) => { ev.preventDefault(); pages = 1; refresh(); });
$("more").addEventListener("click", () => { pages += 1; refresh(); });
$("compare").addEventListener("click", () => { location.href = "/dashboard/compare?ids=" + [...selected].join(","); });
$("rows").addEventListener("change", (ev) => {
  const id = ev.target.dataset.pick;
  if (!id) return;
  if (ev.target.checked) selected.add(id); else selected.delete(id);
  $("compare").disabled = selected.size < 2;
});
$("rows").addEventListener("click", async (ev) => {
  const b = ev.target.closest("button");
  if (!b) return;
  const id = b.dataset.id;
  try {
    if (b.dataset.act === "download") await downloadArtifact(id, "predictor.nern");
    else await api(`/jobs/${id}/${b.dataset.act}`, {method: "POST"});
  } catch (e) { $("status").textContent = e.message; }
  refresh();
});
refresh();
setInterval(refresh, 2000);
