"""Bounded loopback load on the job API: GET /jobs/{id} against a bare endpoint of the same app.

    python benchmarks/api_load.py                       # starts its own embedded service
    python benchmarks/api_load.py --duration 20 --connections 32 --posts 40
    python benchmarks/api_load.py --server http://127.0.0.1:8000 --api-key nern_...

For each of `/healthz` (bare: no auth, no DB) and `GET /jobs/{id}` (auth + one indexed query +
serialisation) it keeps N keep-alive connections busy for D seconds and prints requests/s,
p50 and p99 latency and the ratio of the two rates; then `POST /jobs` p50/p99 with the 1.1 MB
ResNet-20 checkpoint (sequential submissions, each checked and stored; no worker runs them).
The load generator is a minimal asyncio HTTP/1.1 client so that it, not the server, is cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = Path(os.environ.get("NERN_DATA_DIR", REPO.parent / "shared" / "data")) / "resnet20-12fca82f.th"


async def _connection(host: str, port: int, request: bytes, stop_at: float, latencies: list[float],
                      errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000.0


async def _load(url: str, path: str, headers: dict[str, str], connections: int, duration: float) -> dict:
    u = httpx.URL(url)
    lines = [f"GET {path} HTTP/1.1", f"Host: {u.host}:{u.port}"] + [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    latencies: list[float] = []
    errors: list[int] = []
    stop_at = time.perf_counter() + duration
    t0 = time.perf_counter()
    await asyncio.gather(*(_connection(u.host, u.port, request, stop_at, latencies, errors)
                           for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    return {"path": path, "requests": len(latencies), "errors": len(errors), "rps": len(latencies) / elapsed,
            "p50_ms": _pct(latencies, 0.50), "p99_ms": _pct(latencies, 0.99)}


def _posts(url: str, key: str, n: int) -> dict:
    data = CHECKPOINT.read_bytes()
    spec = json.dumps({"arch": "resnet20", "steps": 10, "device": "cuda", "name": "api-load"})
    lat = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post("/jobs", files={"checkpoint": ("resnet20.th", data)}, data={"spec": spec})
            lat.append(time.perf_counter() - t0)
            if r.status_code != 202:
                raise SystemExit(f"POST /jobs answered {r.status_code}: {r.text[:200]}")
    return {"path": "POST /jobs", "requests": n, "bytes": len(data), "p50_ms": _pct(lat, 0.5),
            "p99_ms": _pct(lat, 0.99), "mean_ms": statistics.mean(lat) * 1000}


def _start_service(home: Path, port: int) -> tuple[subprocess.Popen, str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NERN_")}, "NERN_HOME": str(home),
           "PYTHONPATH": str(REPO)}
    for k in ("NERN_DATABASE_URL", "NERN_BROKER_URL", "NERN_DATA_DIR"):
        if k in os.environ:
            env[k] = os.environ[k]
    key = subprocess.run([sys.executable, "-m", "api", "keys", "create", "--tenant", "bench"], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.strip()
    proc = subprocess.Popen([sys.executable, "-m", "api", "serve", "--no-worker", "--port", str(port)], env=env,
                            cwd=REPO, stdout=open(home / "api.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, key
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the service did not start; see " + str(home / "api.log"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", help="an already running service (default: start an embedded one)")
    ap.add_argument("--api-key", default=os.environ.get("NERN_API_KEY"))
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per endpoint (≤ 60)")
    ap.add_argument("--connections", type=int, default=32, help="keep-alive connections (≤ 256)")
    ap.add_argument("--posts", type=int, default=40, help="POST /jobs submissions to time (≤ 500)")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    args.duration = min(args.duration, 60.0)
    args.connections = min(args.connections, 256)
    args.posts = min(args.posts, 500)

    proc = None
    tmp = None
    url, key = args.server, args.api_key
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="nern-bench-")
        proc, key = _start_service(Path(tmp.name), args.port)
        url = f"http://127.0.0.1:{args.port}"
    if not key:
        raise SystemExit("--api-key (or NERN_API_KEY) is needed with --server")
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            r = c.post("/jobs", files={"checkpoint": ("r20.th", CHECKPOINT.read_bytes())},
                       data={"spec": json.dumps({"steps": 10, "device": "cuda", "name": "api-load-probe"})})
            r.raise_for_status()
            job_id = r.json()["id"]
        auth = {"Authorization": f"Bearer {key}"}
        asyncio.run(_load(url, "/healthz", {}, args.connections, 2.0))  # warm-up
        bare = asyncio.run(_load(url, "/healthz", {}, args.connections, args.duration))
        status = asyncio.run(_load(url, f"/jobs/{job_id}", auth, args.connections, args.duration))
        posts = _posts(url, key, args.posts)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
        if tmp is not None:
            tmp.cleanup()

    print(f"loopback, {args.connections} connections, {args.duration:.0f} s per endpoint, {os.cpu_count()} CPUs")
    print(f"{'endpoint':<22}{'requests':>10}{'errors':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for row, name in ((bare, "GET /healthz (bare)"), (status, "GET /jobs/{id}")):
        print(f"{name:<22}{row['requests']:>10}{row['errors']:>8}{row['rps']:>10.0f}{row['p50_ms']:>9.2f}"
              f"{row['p99_ms']:>9.2f}")
    ratio = status["rps"] / bare["rps"]
    print(f"job status / bare rate: {ratio:.2f} (target ≥ 0.50)")
    print(f"POST /jobs ({posts['bytes']:,} B checkpoint, {posts['requests']} sequential): "
          f"p50 {posts['p50_ms']:.1f} ms, p99 {posts['p99_ms']:.1f} ms")
    print(json.dumps({"bare": bare, "job_status": status, "ratio": round(ratio, 3), "post_jobs": posts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
