"""The dashboard in a real browser (Playwright driving Debian's chromium) against a live service
with real jobs: a running job's progress moves without a reload, the job page draws non-empty
charts (as many bars as the job has layers), every heatmap image loads, downloads match the
sha256 the API lists (computed here from the bytes), cancel works from the page, another
tenant's key sees nothing, compare overlays two jobs; no console errors (CSP violations would
be). Screenshots go to $NERN_SCREENSHOT_DIR (default: the test's tmp folder)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from harness import TINY_SPEC, submit, wait_done, wait_for

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LONG = {**TINY_SPEC, "name": "long", "steps": 80, "eval_every": 20, "checkpoint_every": 0}
COMPRESSED = {**TINY_SPEC, "name": "compressed", "steps": 20, "eval_every": 10,
              "compress": {"prune": 0.5, "quantize": "int8"}}
ENDLESS = {**TINY_SPEC, "name": "to-cancel", "steps": 100000, "checkpoint_every": 0}


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: scripts/test.sh installs it (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    out = Path(os.environ.get("NERN_SCREENSHOT_DIR", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _page(browser, live, key: str, errors: list[str]):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live.deployment.url + "/dashboard")
    page.fill("#key", key)
    page.click("#keyform button[type=submit]")
    return ctx, page


def test_dashboard_in_a_browser(browser, live, shots):
    errors: list[str] = []
    with live.client("a") as a:
        long = submit(a, LONG).json()
        comp = submit(a, COMPRESSED).json()
        ctx, page = _page(browser, live, live.key_a, errors)

        # Live list: the long job's progress cell changes while it runs, the page never reloads.
        row = f'tr[data-job="{long["id"]}"]'
        page.wait_for_selector(row)
        page.evaluate("window.__marker = 1")
        seen = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(seen) < 3:
            state = page.get_attribute(row, "data-state")
            if state == "running":
                seen.add(page.get_attribute(f"{row} td.prog", "data-progress"))
            if state in ("succeeded", "failed"):
                break
            time.sleep(0.3)
        assert len(seen) >= 2, seen  # at least two different progress values shown
        assert page.evaluate("window.__marker") == 1  # same document: updated in place
        page.screenshot(path=str(shots / "dashboard-list.png"))
        # The key lives in this tab's session only.
        assert page.evaluate("localStorage.length") == 0
        assert page.evaluate("sessionStorage.getItem('nern_api_key')") == live.key_a

        # Filters: arch and state narrow the list.
        page.fill("#arch", "resnet56")
        page.dispatch_event("#arch", "change")
        page.wait_for_selector("#rows >> text=no jobs")
        page.fill("#arch", "")
        page.dispatch_event("#arch", "change")
        page.wait_for_selector(row)

        done = wait_done(a, long["id"])
        assert done["state"] == "succeeded", live.deployment.log("worker.log")
        comp_done = wait_done(a, comp["id"])
        assert comp_done["state"] == "succeeded"
        endless = submit(a, ENDLESS).json()

        # Job page: charts, summary, per-layer bars, heatmaps, artifacts.
        page.click(f'{row} a[href="/dashboard/jobs/{long["id"]}"]')
        page.wait_for_url(f"**/dashboard/jobs/{long['id']}")
        page.wait_for_selector("#artifacts tbody tr")
        for chart in ("#chart-loss", "#chart-lr", "#chart-eval"):
            paths = page.eval_on_selector_all(f"{chart} path.series", "els => els.map(e => e.getAttribute('d'))")
            assert paths and all(d.count("L") >= 1 for d in paths), (chart, paths)
        names = page.eval_on_selector_all("#chart-loss path.series", "els => els.map(e => e.dataset.name)")
        assert {"rec", "kd", "total"} <= set(names)
        points = a.get(f"/jobs/{long['id']}/metrics").json()["points"]
        evals = [p for p in points if p["stage"] == "evaluating"]
        assert [p["step"] for p in evals] == [20, 40, 60, 80]
        assert evals[-1]["losses"]["reconstructed_top1"] == done["summary"]["reconstructed_top1"]
        bars = page.eval_on_selector_all("#chart-layers rect.bar", "els => els.map(e => +e.getAttribute('width'))")
        assert len(bars) == len(done["summary"]["layer_errors"]) == 19 and max(bars) > 0
        shown = page.text_content('#summary td[data-key="reconstructed top-1"]')
        assert shown == f'{done["summary"]["reconstructed_top1"]:.2f}%'

        index = json.loads(a.get(f"/jobs/{long['id']}/artifacts/importance.json").content)
        page.wait_for_function(
            "n => [...document.querySelectorAll('#heatmaps img')].filter(i => i.complete && i.naturalWidth > 0).length === n",
            arg=len(index["layers"]), timeout=60_000)
        page.screenshot(path=str(shots / "dashboard-job.png"), full_page=False)

        listed = {x["name"]: x for x in a.get(f"/jobs/{long['id']}/artifacts").json()["items"]}
        table = dict(page.eval_on_selector_all(
            "#artifacts tbody tr", "els => els.map(e => [e.dataset.artifact, e.dataset.sha256])"))
        assert table == {n: x["sha256"] for n, x in listed.items()}
        for name in ("predictor.nern", "report.json"):
            with page.expect_download() as dl:
                page.click(f'button[data-download="{name}"]')
            data = Path(dl.value.path()).read_bytes()
            assert len(data) == listed[name]["size"] and hashlib.sha256(data).hexdigest() == listed[name]["sha256"]

        # Compression job: the accuracy-versus-bytes table and plot.
        page.goto(f"{live.deployment.url}/dashboard/jobs/{comp['id']}")
        page.wait_for_selector("#compression:not(.hidden) #compress-table tbody tr")
        assert page.locator("#compress-table tbody tr").count() == 3
        assert page.locator("#chart-compress circle").count() == 3

        # Compare: both jobs' curves overlaid, results side by side.
        page.goto(f"{live.deployment.url}/dashboard/compare?ids={long['id']},{comp['id']}")
        page.wait_for_selector("#chart-rec path.series >> nth=1")
        assert page.locator("#chart-rec path.series").count() == 2
        assert page.locator('#results td[data-job]').count() == 2 * 11
        page.screenshot(path=str(shots / "dashboard-compare.png"))

        # Cancel from the job page while it runs.
        wait_for(a, endless["id"], lambda j: j["state"] == "running" and j["step"] > 0, timeout=120)
        page.goto(f"{live.deployment.url}/dashboard/jobs/{endless['id']}")
        page.wait_for_selector("#cancel:not(.hidden)")
        page.click("#cancel")
        page.wait_for_selector("#state.cancelled", timeout=60_000)
        assert a.get(f"/jobs/{endless['id']}").json()["state"] == "cancelled"
        ctx.close()

    # Another tenant's key: an empty list, and 404 on the first tenant's job page.
    ctx, page = _page(browser, live, live.key_b, errors)
    page.wait_for_selector("#rows >> text=no jobs")
    page.goto(f"{live.deployment.url}/dashboard/jobs/{long['id']}")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('404')")
    assert page.locator("#artifacts tbody tr").count() == 0
    ctx.close()
    assert not [e for e in errors if "404" not in e], errors
