"""The one task: run a job by id. It claims the job's lease, calls `nern.train.fit` and
`nern.deliver.deliver` (compression, importance maps, the served package's evaluation), stores
the results as artifacts and records the outcome — no NeRN logic of its own.

Safe to run twice for one job (acks_late redelivery, a re-queued lease): the claim in the DB
decides who runs, and fit resumes from the job's work folder.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from api.jobstore import crud, workers
from api.jobstore.artifacts import ArtifactStore
from api.jobstore.db import session_scope
from api.jobstore.models import Job
from api.jobstore.settings import Settings, get_settings
from api.jobstore.spec import JobSpec
from api.jobstore.states import JobState
from api.logs import job_id_var

from .beacon import process_name
from .celery_app import TASK_RUN_JOB, app
from .lease import Lease, worker_identity

log = logging.getLogger("nern.worker")


# A database that cannot be reached while claiming: retry the message later (with back-off)
# rather than acknowledge it and leave the job queued with no message to run it.
@app.task(name=TASK_RUN_JOB, autoretry_for=(OperationalError, InterfaceError), retry_backoff=True,
          retry_backoff_max=120, max_retries=None)
def run_job(job_id: str) -> str:
    return execute(job_id, get_settings())


def execute(job_id: str, settings: Settings) -> str:
    """Run one job if this worker can claim it; returns the job's final state (or 'skipped')."""
    token = job_id_var.set(job_id)  # every log line of this job carries its id
    try:
        return _execute(job_id, settings)
    finally:
        job_id_var.reset(token)


def _execute(job_id: str, settings: Settings) -> str:
    owner = worker_identity()
    with session_scope(settings.database_url) as session:
        job = crud.claim_job(session, job_id, owner, settings.lease_seconds)
        if job is not None:
            workers.count_job(session, process_name())
    if job is None:
        log.info("job %s is not claimable (finished, cancelled, or held by a live worker)", job_id)
        return "skipped"
    log.info("claimed job %s (attempt %d/%d)", job_id, job.attempts, job.max_attempts)
    with Lease(settings, job_id, owner, job.attempts) as lease:
        state, error = _run(job, settings, lease)
    if lease.lost:
        return "lost"
    if state is not JobState.succeeded:
        with session_scope(settings.database_url) as session:
            crud.end_job(session, job_id, owner, state, error)
    return state.value


def _run(job: Job, settings: Settings, lease: Lease) -> tuple[JobState, str | None]:
    from nern.errors import CancelledError, NernError

    store = ArtifactStore(settings.artifact_root)
    try:
        from safetensors.torch import save_file

        from nern import package as nern_package
        from nern import train
        from nern.checkpoint import load_state_dict
        from nern.deliver import deliver

        spec = JobSpec.model_validate(job.spec)
        config = spec.fit_config(arch=job.arch)
        state_dict = load_state_dict(store.checkpoint_path(job.id))

        def on_progress(p: train.Progress) -> None:
            lease.report(
                p.stage, step=p.step, total_steps=p.total_steps, eta_seconds=p.eta_s, losses=dict(p.losses) or None,
                lr=p.lr, elapsed_s=p.elapsed_s,
            )

        def on_eval(step: int, train_seconds: float, metrics: dict) -> None:
            numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
            with session_scope(settings.database_url) as session:
                crud.record_eval_point(session, job.id, lease.owner, attempt=lease.attempt, step=step,
                                       train_seconds=train_seconds, metrics=numbers)

        work_dir = store.work_dir(job.id)
        work_dir.mkdir(parents=True, exist_ok=True)
        result = train.fit(
            state_dict, config, work_dir=work_dir, on_progress=on_progress, on_eval=on_eval,
            should_stop=lease.should_stop, source_sha256=job.checkpoint_sha256,
        )
        lease.report("compressing", step=config.steps, total_steps=config.steps)
        out = deliver(result, state_dict, config, spec.compress, on_progress=on_progress,
                      should_stop=lease.should_stop)
        lease.report("compressing", step=config.steps, total_steps=config.steps)  # fine-tuning counted its own

        artifacts: list[tuple[str, int, str, str]] = []  # (name, size, sha256, media type)

        def write(name: str, writer: Callable[[Path], Any]) -> tuple[str, int, str, str]:
            artifacts.append(store.write_artifact(job.id, name, writer))
            return artifacts[-1]

        served = write("predictor.nern", lambda p: nern_package.save_package(out.package, p))
        if out.uncompressed is not None:
            write("predictor-fp32.nern", lambda p: nern_package.save_package(out.uncompressed, p))
        write("reconstructed.safetensors",
              lambda p: save_file({k: v.contiguous() for k, v in out.reconstructed.items()}, p))
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            for path in out.importance.save(tmp):
                write(path.name, lambda p, src=path: shutil.copyfile(src, p))
        summary = _jsonable(out.summary)
        summary["package_bytes"] = served[1]
        summary["checkpoint_bytes"] = job.checkpoint_bytes
        write("report.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2)))
        with session_scope(settings.database_url) as session:
            ok = crud.finish_job(
                session, job.id, lease.owner, summary=summary, artifacts=artifacts,
                resumed_from_step=summary.get("resumed_from_step"),
            )
        if not ok:
            lease.lost = True
        return JobState.succeeded, None
    except CancelledError:
        return JobState.cancelled, None if lease.cancel_requested else "stopped: the lease was lost"
    except NernError as e:
        return JobState.failed, str(e)
    except Exception as e:  # a bug, not the user's input: keep the trace in the worker's log
        log.exception("job %s failed", job.id)
        return JobState.failed, f"internal error: {type(e).__name__}: {str(e)[:300]}"


def _jsonable(obj: Any) -> Any:
    """Summary values as plain JSON (tensors and numpy scalars to numbers; NaN/Inf to null)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
