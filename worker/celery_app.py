"""The Celery application: broker from `NERN_BROKER_URL`, settings for long, repeatable jobs.

    celery -A worker.celery_app worker -Q cpu,gpu      (or: nern worker --queues cpu,gpu)

- acks_late + reject_on_worker_lost + prefetch 1: a message is acknowledged only when its task
  ends, so a worker killed mid-job gives the job back instead of losing it. Redelivery has no
  counter of its own: attempts are counted in the jobs table (`api.jobstore.crud.claim_job`).
- Redis visibility_timeout must exceed the longest job, or Redis hands a second copy to another
  worker while the first still runs; the DB lease makes such a copy a no-op anyway.
- No result backend: the jobs table holds every result.
"""

from __future__ import annotations

import os
import signal
import threading

from celery import Celery, signals
from celery.signals import worker_process_init, worker_shutting_down
from kombu import Queue

from api.jobstore.settings import Settings, get_settings

TASK_RUN_JOB = "nern.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("nern", broker=settings.broker_url, include=["worker.tasks"])
    # visibility_timeout only means something to Redis/SQS; other transports refuse the option.
    redis_like = settings.broker_url.startswith(("redis", "rediss", "sqs"))
    transport = {"visibility_timeout": settings.visibility_timeout} if redis_like else {}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="cpu",
        task_queues=(Queue("cpu"), Queue("gpu")),
        task_create_missing_queues=True,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
        # A job holds a worker for minutes or hours: no soft time limits, one job per process.
        worker_max_tasks_per_child=50,
    )
    return app


app = make_celery(get_settings())

# Set in a pool process when its worker is told to stop (SIGTERM): the running job is handed
# back at its next step without using up an attempt (worker.tasks, worker.lease).
draining = threading.Event()


@worker_process_init.connect
def _init_pool_process(**_kw) -> None:
    """In each freshly forked pool process: own database connections, own GPU, drain on SIGTERM."""
    from api.jobstore.db import forget_engines

    from .devices import gpu_for_process, visible_gpus

    forget_engines()  # never share the parent's pooled connections across the fork
    gpus = visible_gpus()
    if gpus:
        from billiard.process import current_process

        index = getattr(current_process(), "index", 0) or 0
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_for_process(index, gpus, get_settings().jobs_per_gpu)
    # Jobs run in the pool processes: each reports its own heartbeat and GPU memory (after the
    # GPU is pinned above, so the beacon sees only this process's device).
    from .beacon import Beacon

    Beacon(get_settings(), os.environ.get("NERN_WORKER_QUEUES", "")).start()


def drain_on_sigterm() -> None:
    """While a job runs in this pool process, SIGTERM means "hand the job back", not "die".

    Called at the start of each task: billiard installs its own SIGTERM handler after
    worker_process_init, so an earlier one would be overwritten."""
    try:
        signal.signal(signal.SIGTERM, lambda *_: draining.set())
    except ValueError:  # not the main thread (a threads pool): the lease still guards the job
        pass


@worker_shutting_down.connect
def _drain_pool(**_kw) -> None:
    """In the worker's main process, when it begins to stop: tell the pool processes that run a
    job to hand it back (Celery's warm shutdown would otherwise wait for whole jobs to finish).

    Only those: an idle pool process still has billiard's own SIGTERM handler, which exits at
    once, and a process killed while it holds one of the pool's shared queue locks leaves the
    pool's shutdown waiting on that lock forever (the worker would then outlive its server)."""
    for pid in _busy_pool_processes():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _busy_pool_processes() -> set[int]:
    """Pool processes that have accepted a task (Celery records the pid in the main process)."""
    from celery.worker import state

    me = os.getpid()
    return {r.worker_pid for r in list(state.active_requests) if r.worker_pid and r.worker_pid != me}


@signals.setup_logging.connect
def _json_logs(loglevel: int | str = "INFO", **_: object) -> None:
    # Connected, so Celery leaves logging to us: JSON lines with the job id (api/logs.py).
    from api.logs import configure

    configure(loglevel or "INFO")
