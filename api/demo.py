"""The README's main job: start the embedded service, compress the shipped ResNet-20 through it,
check the result locally, and leave the service running (or stop it).

    python -m api.demo [--stop] [--steps N]

It creates an API key for tenant 'demo', submits the checkpoint with a short budget, follows
the job's progress, downloads the predictor package, reconstructs the network from it,
evaluates original and reconstruction on the CIFAR-10 test set and prints both accuracies
(and the ones the job reported), then says where the dashboard is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .client import NernClient

SHARED_CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "data" / "resnet20-12fca82f.th"


def default_checkpoint() -> Path:
    try:
        from nern.assets import default_checkpoint as shipped  # provided by the library

        return Path(shipped())
    except ImportError:
        return SHARED_CHECKPOINT


def _service_up(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _start_service(home: Path, port: int) -> subprocess.Popen:
    log = open(home / "serve.log", "ab")  # noqa: SIM115 - handed to the service process
    return subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--port", str(port), "--data-dir", str(home)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                       os.environ.get("PYTHONPATH")]))},
    )


def run_demo(stop: bool, *, steps: int = 600, port: int = 8000, home: str | os.PathLike | None = None) -> int:
    """Run the main job end to end through the embedded service; returns an exit code."""
    from .jobstore import crud
    from .jobstore.db import migrate, session_scope
    from .jobstore.settings import Settings

    if home is not None:
        os.environ["NERN_HOME"] = str(home)
    settings = Settings()
    settings.ensure_dirs()
    migrate(settings.database_url)
    with session_scope(settings.database_url) as session:
        key, _ = crud.create_key(session, "demo")
    url = f"http://127.0.0.1:{port}"
    proc = None
    if _service_up(url):
        print(f"using the service already running at {url}")
    else:
        print(f"starting the embedded service at {url} (data in {settings.home}) ...", flush=True)
        proc = _start_service(settings.home, port)
        deadline = time.monotonic() + 180
        while not _service_up(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"the service did not start; see {settings.home / 'serve.log'}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    try:
        return _follow_job(url, key, steps, proc, stop, settings.home)
    finally:
        if stop and proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            print("service stopped")


def _follow_job(url: str, key: str, steps: int, proc, stop: bool, home: Path) -> int:
    from tqdm import tqdm

    from nern.checkpoint import load_state_dict
    from nern.data import load_labelled
    from nern.evaluate import evaluate_package
    from nern.package import load_package

    checkpoint = default_checkpoint()
    # The whole test set, so that the accuracies recomputed below are over the same images.
    spec = {"arch": "resnet20", "steps": steps, "eval_data": "cifar10-test", "name": "demo: resnet20"}
    with NernClient(url, key) as client:
        job = client.submit(checkpoint, spec)
        print(f"submitted {checkpoint.name} as job {job['id']} ({steps} steps)")
        bar = tqdm(total=100, bar_format="{desc} {bar} {n:.0f}% [{elapsed}<{remaining}]", file=sys.stderr)

        def show(j: dict) -> None:
            bar.set_description_str(f"{j['state']}/{j['stage']} step {j['step']}/{j['total_steps']}")
            bar.n = round(100 * j["progress"], 1)
            bar.refresh()

        job = client.wait(job["id"], poll=1.0, on_update=show)
        bar.close()
        if job["state"] != "succeeded":
            print(f"job {job['state']}: {job.get('error') or ''}", file=sys.stderr)
            return 1
        out = Path(tempfile.mkdtemp(prefix="nern-demo-"))
        package_path = client.download(job["id"], "predictor.nern", out)
        report = json.loads(client.download(job["id"], "report.json", out).read_text())

    package = load_package(package_path)
    scores = evaluate_package(package, load_state_dict(checkpoint), load_labelled("cifar10-test", package.image_size))
    top_o, top_r = scores["original_top1"], scores["reconstructed_top1"]
    print(f"checkpoint {checkpoint.stat().st_size:,} B → predictor package {package_path.stat().st_size:,} B "
          f"({package_path})")
    print(f"top-1 on {scores['eval_images']:,} CIFAR-10 test images, recomputed here from the downloaded package:")
    print(f"  original       {top_o:6.2f} %   (job reported {report.get('original_top1')})")
    print(f"  reconstructed  {top_r:6.2f} %   (job reported {report.get('reconstructed_top1')})")
    print(f"dashboard: {url}/dashboard  (API key for tenant 'demo': {key})")
    if not stop and proc is not None:
        print(f"the service keeps running (pid {proc.pid}, data in {home}); stop it with: kill -- -{proc.pid}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m api.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--stop", action="store_true", help="stop the service at the end")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--data-dir", type=Path)
    args = ap.parse_args(argv)
    return run_demo(args.stop, steps=args.steps, port=args.port, home=args.data_dir)


if __name__ == "__main__":
    sys.exit(main())
