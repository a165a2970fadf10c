"""A per-process cache of `GET /jobs/{id}` bodies, for a fraction of a second.

Dashboards and `--wait` clients poll the same few jobs many times a second; on a server database
each poll is a network round trip. Serving a body for `ttl` seconds turns a burst of polls into
one query. Staleness is bounded by `ttl` (workers write progress at most once a second anyway),
and this process's own writes (cancel, retry) drop the entry at once. ttl=0 disables it.
"""

from __future__ import annotations

import threading
import time


class StatusCache:
    def __init__(self, ttl: float, max_entries: int = 4096):
        self.ttl = ttl
        self.max_entries = max_entries
        self._items: dict[tuple[int, str], tuple[float, bytes]] = {}
        self._lock = threading.Lock()

    def get(self, tenant_id: int, job_id: str) -> bytes | None:
        if self.ttl <= 0:
            return None
        hit = self._items.get((tenant_id, job_id))
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, tenant_id: int, job_id: str, body: bytes) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._items) >= self.max_entries:
                now = time.monotonic()
                self._items = {k: v for k, v in self._items.items() if v[0] >= now}
                if len(self._items) >= self.max_entries:
                    self._items.clear()
            self._items[(tenant_id, job_id)] = (time.monotonic() + self.ttl, body)

    def drop(self, tenant_id: int, job_id: str) -> None:
        with self._lock:
            self._items.pop((tenant_id, job_id), None)
