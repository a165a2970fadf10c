"""Every database read and write of the service (API, worker and CLI use these functions).

State changes are conditional UPDATEs (`... WHERE state = ... AND lease_owner = ...`) so that
concurrent API processes and workers never both win a transition.

    clock        utcnow, and the database server's clock (lease decisions)
    keys         tenants and API keys
    queries      the API's reads: jobs, the status row, pages, artifacts, metric points, usage
    actions      the API's state changes on request: cancel, retry, delete
    sweeper      publishing, lapsed leases and time limits, retention, live workers per queue
    transitions  a worker's changes of its job: claim, heartbeat, progress, finish, end, release

Callers use `from api.jobstore import crud` and `crud.<name>`; every name is re-exported here.
"""

from .actions import delete_job, request_cancel, retry_job
from .clock import db_now, utcnow
from .keys import (
    KEY_PREFIX,
    count_active_keys,
    create_key,
    get_or_create_tenant,
    hash_key,
    list_keys,
    revoke_key,
    tenant_for_key,
)
from .queries import (
    Cursor,
    find_idempotent,
    get_artifact,
    get_job,
    job_row,
    list_artifacts,
    list_jobs,
    metric_points,
    tenant_usage,
)
from .sweeper import (
    count_by_state,
    expire_leases,
    finished_before,
    mark_published,
    mark_waiting,
    queue_workers,
    queued_by_queue,
    unpublished_jobs,
)
from .transitions import (
    cancel_requested,
    claim_job,
    end_job,
    finish_job,
    record_eval_point,
    record_progress,
    release_job,
    renew_lease,
)

__all__ = [
    "KEY_PREFIX",
    "Cursor",
    "cancel_requested",
    "claim_job",
    "count_active_keys",
    "count_by_state",
    "create_key",
    "db_now",
    "delete_job",
    "end_job",
    "expire_leases",
    "find_idempotent",
    "finish_job",
    "finished_before",
    "get_artifact",
    "get_job",
    "get_or_create_tenant",
    "hash_key",
    "job_row",
    "list_artifacts",
    "list_jobs",
    "list_keys",
    "mark_published",
    "mark_waiting",
    "metric_points",
    "queue_workers",
    "queued_by_queue",
    "record_eval_point",
    "record_progress",
    "release_job",
    "renew_lease",
    "request_cancel",
    "retry_job",
    "revoke_key",
    "tenant_for_key",
    "tenant_usage",
    "unpublished_jobs",
    "utcnow",
]
