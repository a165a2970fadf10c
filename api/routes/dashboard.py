"""The dashboard: `/dashboard` (jobs), `/dashboard/jobs/{id}` (one job), `/dashboard/compare`.

Static pages and scripts from `api/static/` (charts are SVG drawn by `charts.js`: no CDN, no
third-party code). The scripts call the JSON API with the user's key, which stays in the tab's
sessionStorage. Every page is served with a Content-Security-Policy that allows only this
origin's scripts and styles (no inline script), no framing, and nosniff.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..problems import ProblemError

router = APIRouter(tags=["dashboard"], include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
ASSETS = ("charts.js", "common.js", "jobs.js", "job.js", "compare.js", "dashboard.css")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    path = STATIC / name
    return Response(path.read_bytes(), media_type=_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/dashboard")


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> Response:
    return _file("dashboard.html")


@router.get("/dashboard/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(job_id: str) -> Response:
    return _file("job.html")  # the script reads the id from the address


@router.get("/dashboard/compare", response_class=HTMLResponse)
async def compare_page() -> Response:
    return _file("compare.html")


@router.get("/dashboard/static/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise ProblemError(404, f"no dashboard file {name!r}", kind="not-found")
    return _file(name)
