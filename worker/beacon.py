"""The heartbeat of a worker process: a daemon thread that upserts its `workers` row.

Started in every Celery pool process (`worker_process_init`), since jobs — and their GPU
memory — live in those processes. The name, host:pid, is the prefix of `jobs.lease_owner`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading

from api.jobstore import workers
from api.jobstore.db import session_scope
from api.jobstore.settings import Settings

log = logging.getLogger("nern.worker")


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def gpu_memory_bytes() -> int | None:
    """Bytes the CUDA caching allocator holds in this process; None when CUDA was never used."""
    torch = sys.modules.get("torch")  # never import torch (or initialise CUDA) just to say "none"
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(sum(torch.cuda.memory_reserved(i) for i in range(torch.cuda.device_count())))


class Beacon:
    def __init__(self, settings: Settings, queues: str) -> None:
        self.settings = settings
        self.queues = queues
        self.name = process_name()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nern-beacon", daemon=True)

    def start(self) -> Beacon:
        try:  # the first beat before any task runs, so the row exists when the first job is counted
            self.beat()
        except Exception as e:
            log.warning("worker heartbeat failed: %s", e)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        with session_scope(self.settings.database_url) as session:
            workers.beat(session, self.name, socket.gethostname(), self.queues, gpu_memory_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                self.beat()
            except Exception as e:  # the database is away: jobs' own leases handle that
                log.warning("worker heartbeat failed: %s", e)
