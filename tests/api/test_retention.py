"""Retention: the sweeper deletes finished jobs older than NERN_RETENTION_DAYS, rows and files,
and keeps newer and unfinished ones."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from api.dispatch import Dispatcher
from api.jobstore import crud
from api.jobstore.artifacts import ArtifactStore
from api.jobstore.db import migrate, session_scope
from api.jobstore.models import Artifact, Job
from api.jobstore.settings import Settings


def _job(job_id: str, tenant_id: int, state: str, finished_ago_days: float | None) -> Job:
    now = crud.utcnow()
    return Job(
        id=job_id, tenant_id=tenant_id, arch="resnet20", queue="cpu", spec={}, state=state, stage="queued",
        progress=0.0, step=0, total_steps=1, attempts=0, max_attempts=1, cancel_requested=False,
        created_at=now - timedelta(days=10), checkpoint_name="c.th", checkpoint_sha256="0" * 64,
        checkpoint_bytes=1, finished_at=None if finished_ago_days is None else now - timedelta(days=finished_ago_days),
    )


def test_finished_jobs_past_retention_are_removed_with_their_files(tmp_path):
    settings = Settings(home=tmp_path, retention_days=1)
    settings.ensure_dirs()
    migrate(settings.database_url)
    store = ArtifactStore(settings.artifact_root)
    with session_scope(settings.database_url) as session:
        tenant = crud.get_or_create_tenant(session, "t").id
        for job_id, state, ago in (("old", "succeeded", 2.0), ("oldfail", "failed", 1.5), ("new", "succeeded", 0.5),
                                   ("queued", "queued", None)):
            session.add(_job(job_id, tenant, state, ago))
            session.flush()
            store.artifact_path(job_id, "report.json").parent.mkdir(parents=True)
            store.artifact_path(job_id, "report.json").write_text("{}")
            session.add(Artifact(job_id=job_id, name="report.json", size=2, sha256="0" * 64,
                                 media_type="application/json", created_at=crud.utcnow()))
    assert Dispatcher(settings).remove_expired() == 2
    with session_scope(settings.database_url) as session:
        left = sorted(session.scalars(select(Job.id)))
        arts = sorted(session.scalars(select(Artifact.job_id)))
    assert left == arts == ["new", "queued"]
    assert sorted(p.name for p in (settings.artifact_root / "jobs").iterdir()) == ["new", "queued"]
