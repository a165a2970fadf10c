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
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import InterfaceError, OperationalError

from api.jobstore import crud, workers
from api.jobstore.artifacts import ArtifactStore
from api.jobstore.datasets import DataPartError, check_npz, resolve_data
from api.jobstore.db import session_scope
from api.jobstore.models import Job
from api.jobstore.settings import Settings, get_settings
from api.jobstore.spec import JobSpec
from api.jobstore.states import JobState, Stage
from api.logs import job_id_var

from .beacon import process_name
from .celery_app import TASK_RUN_JOB, app, drain_on_sigterm, draining
from .lease import Lease, retrying, worker_identity

if TYPE_CHECKING:  # nern itself is imported only when a job runs
    from nern.deliver import Deliverables

log = logging.getLogger("nern.worker")


# A database that cannot be reached while claiming: retry the message later (with back-off)
# rather than acknowledge it and leave the job queued with no message to run it.
@app.task(name=TASK_RUN_JOB, autoretry_for=(OperationalError, InterfaceError), retry_backoff=True,
          retry_backoff_max=120, max_retries=None)
def run_job(job_id: str) -> str:
    return execute(job_id, get_settings())


def execute(job_id: str, settings: Settings) -> str:
    """Run one job if this worker can claim it; returns the job's final state (or 'skipped')."""
    if draining.is_set():
        return "skipped"
    drain_on_sigterm()
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
    if state is JobState.cancelled and draining.is_set() and not lease.cancel_requested:
        # The worker is stopping (deploy): hand the job back without using up its attempt.
        with session_scope(settings.database_url) as session:
            crud.release_job(session, job_id, owner)
        log.info("worker stopping: job %s handed back to the queue (attempt not counted)", job_id)
        return "released"
    if state is not JobState.succeeded:
        retrying(settings, f"end of job {job_id}", lambda: _end(settings, job_id, owner, state, error))
    return state.value


def _end(settings: Settings, job_id: str, owner: str, state: JobState, error: str | None) -> None:
    with session_scope(settings.database_url) as session:
        crud.end_job(session, job_id, owner, state, error)


def _run(job: Job, settings: Settings, lease: Lease) -> tuple[JobState, str | None]:
    from nern.errors import CancelledError, NernError

    store = ArtifactStore(settings.artifact_root)
    try:
        out, work_dir = _fit_and_deliver(job, settings, store, lease)
        artifacts, summary = _write_artifacts(job, store, work_dir, out)
        if not _record_result(job, settings, lease, summary, artifacts):
            lease.lost = True
        return JobState.succeeded, None
    except CancelledError:
        return JobState.cancelled, None if lease.cancel_requested else "stopped: the lease was lost"
    except (NernError, DataPartError) as e:
        return JobState.failed, _public_error(str(e), store, settings, job.id)
    except Exception as e:  # a bug, not the user's input: keep the trace in the worker's log
        log.exception("job %s failed", job.id)
        return JobState.failed, _public_error(f"internal error: {type(e).__name__}: {str(e)[:300]}", store,
                                              settings, job.id)


def _fit_and_deliver(job: Job, settings: Settings, store: ArtifactStore, lease: Lease) -> tuple[Deliverables, Path]:
    """Fit the job's checkpoint (resuming from its work folder) and deliver the results
    (`nern.deliver.deliver`); returns them with the work folder."""
    from nern import train
    from nern.checkpoint import load_state_dict
    from nern.deliver import deliver
    from nern.targets import load_target

    spec = JobSpec.model_validate(job.spec)
    state_dict = load_state_dict(store.checkpoint_path(job.id))
    _model, _name, target_kwargs = load_target(state_dict, job.arch)
    del _model
    config = spec.fit_config(
        arch=job.arch,
        data=_data_source(store, settings, job.id, "data", spec.data, target_kwargs),
        eval_data=_data_source(store, settings, job.id, "eval_data", spec.eval_data, target_kwargs),
    )
    on_progress, on_eval = _reporters(job, settings, lease)
    work_dir = store.work_dir(job.id)
    work_dir.mkdir(parents=True, exist_ok=True)
    result = train.fit(
        state_dict, config, work_dir=work_dir, on_progress=on_progress, on_eval=on_eval,
        should_stop=lease.should_stop, source_sha256=job.checkpoint_sha256,
    )
    lease.report(Stage.compressing, step=config.steps, total_steps=config.steps)
    out = deliver(result, state_dict, config, spec.compress, on_progress=on_progress,
                  should_stop=lease.should_stop)
    lease.report(Stage.compressing, step=config.steps, total_steps=config.steps)  # fine-tuning counted its own
    return out, work_dir


def _reporters(job: Job, settings: Settings, lease: Lease) -> tuple[Callable[..., None], Callable[..., None]]:
    """fit's callbacks: progress through the lease's heartbeat, evaluations as metric points."""
    from nern import train

    def on_progress(p: train.Progress) -> None:
        lease.report(
            Stage(p.stage), step=p.step, total_steps=p.total_steps, eta_seconds=p.eta_s, losses=dict(p.losses) or None,
            lr=p.lr, elapsed_s=p.elapsed_s,
        )

    def on_eval(step: int, train_seconds: float, metrics: dict) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        with session_scope(settings.database_url) as session:
            crud.record_eval_point(session, job.id, lease.owner, attempt=lease.attempt, step=step,
                                   train_seconds=train_seconds, metrics=numbers)

    return on_progress, on_eval


def _write_artifacts(job: Job, store: ArtifactStore, work_dir: Path,
                     out: Deliverables) -> tuple[list[tuple[str, int, str, str]], dict[str, Any]]:
    """Store the delivery's files as the job's artifacts; returns them (name, size, sha256,
    media type) with the summary written as report.json."""
    from safetensors.torch import save_file

    from nern import package as nern_package

    artifacts: list[tuple[str, int, str, str]] = []

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
    summary["worker_device"] = _device_label()
    write("report.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2)))
    return artifacts, summary


def _record_result(job: Job, settings: Settings, lease: Lease, summary: dict[str, Any],
                   artifacts: list[tuple[str, int, str, str]]) -> bool:
    """Mark the job succeeded with its summary and artifacts; False when the lease was lost."""

    def finish() -> bool:
        with session_scope(settings.database_url) as session:
            return crud.finish_job(
                session, job.id, lease.owner, summary=summary, artifacts=artifacts,
                resumed_from_step=summary.get("resumed_from_step"),
            )

    return retrying(settings, f"result of job {job.id}", finish)


def _data_source(store: ArtifactStore, settings: Settings, job_id: str, field: str, value: str | None,
                 target_kwargs: dict[str, Any]) -> str | None:
    """The spec's data name as a path on this machine; an uploaded part is checked again by the
    validator the API used (api.jobstore.datasets), so a job runs only what was accepted."""
    input_dir = store.input_dir(job_id)
    resolved = resolve_data(value, input_dir, settings.data_dir)
    if resolved is not None and Path(resolved).parent == input_dir:
        check_npz(Path(resolved), Path(resolved).name, labelled=field == "eval_data",
                  num_classes=target_kwargs.get("num_classes"), max_bytes=settings.max_data_bytes)
    return resolved


def _device_label() -> str:
    """Where the job ran: `cuda:<GPU as the node numbers it>` or `cpu` (in the pool process)."""
    import os

    import torch

    if torch.cuda.is_initialized():
        pinned = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return f"cuda:{pinned.split(',')[0] if pinned else torch.cuda.current_device()}"
    return "cpu"


def _public_error(message: str, store: ArtifactStore, settings: Settings, job_id: str) -> str:
    """A job's error as its owner sees it: part and file names, never server paths."""
    for folder, shown in ((store.input_dir(job_id), ""), (settings.data_dir, ""),
                          (store.job_dir(job_id), ""), (settings.artifact_root, "")):
        if folder is not None:
            message = message.replace(str(folder) + "/", shown).replace(str(folder), shown or "<server>")
    return message


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
