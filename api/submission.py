"""The checks a job submission passes before anything is stored, and storing it.

Everything a user can get wrong is decided here, at submission, with a 422 naming the
problem: the spec (pydantic, field by field), the checkpoint (read only by
`nern.checkpoint.load_state_dict_bytes`: state_dicts and safetensors, never arbitrary
pickles), whether it fits the named (or detected) architecture, and the data parts. A rejected
submission leaves no row and no file: uploads are checked in a private staging folder that is
moved into place only together with the row's commit.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nern.checkpoint import load_state_dict_bytes
from nern.errors import CheckpointError, TargetError, UnsafeCheckpointError
from nern.targets import load_target

from .jobstore import crud
from .jobstore.artifacts import ArtifactStore
from .jobstore.datasets import BUILTIN_DATA, DataPartError, check_npz, valid_part_name
from .jobstore.models import Job
from .jobstore.settings import Settings
from .jobstore.spec import JobSpec
from .jobstore.states import JobState, Stage, queue_for_device
from .problems import ProblemError, validation_detail
from .uploads import Upload

_PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.npz$")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".bin", ".ckpt", ".safetensors")
_CHUNK = 1 << 20


@dataclass
class JobFiles:
    """A submission's parts: the checkpoint in memory (it is parsed), data parts already on disk
    in `staging` (streamed there in chunks) with their sha256."""

    checkpoint_name: str
    checkpoint: bytes
    spec_text: str
    data_parts: dict[str, str]  # part name → sha256 of the file staging/name
    staging: Path

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _invalid(detail: str, kind: str = "invalid-upload", errors: list[dict[str, Any]] | None = None) -> ProblemError:
    return ProblemError(422, detail, kind=kind, errors=errors)


def _stream_to(src: BinaryIO, path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as out:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def collect_files(upload: Upload, store: ArtifactStore) -> JobFiles:
    """Pick the `checkpoint`, `spec` and .npz parts out of a parsed upload; data parts are
    copied in chunks into a fresh staging folder (removed again if anything is wrong)."""
    ckpt = upload.files.get("checkpoint")
    if ckpt is None:
        raise _invalid("missing the 'checkpoint' file part")
    if "spec" in upload.fields:
        spec_text = upload.fields["spec"]
    elif "spec" in upload.files:
        spec_text = upload.files["spec"].file.read(2**20).decode("utf-8", errors="replace")
    else:
        spec_text = "{}"
    extra = next((n for n in upload.fields if n != "spec"), None)
    if extra is not None:
        raise _invalid(f"unexpected form field {extra!r}; send 'spec', 'checkpoint' and .npz parts")
    names = [n for n in upload.files if n not in ("checkpoint", "spec")]
    for part in names:
        if not _PART_NAME.match(part):
            raise _invalid(f"unexpected part {part!r}: data parts are named like 'train.npz' ([A-Za-z0-9._-])")
        if not valid_part_name(part):
            raise _invalid(f"part name {part!r} is reserved for the stored checkpoint; name the data part otherwise")
    staging = store.staging_dir()
    try:
        parts = {part: _stream_to(upload.files[part].file, staging / part) for part in names}
        name = Path(ckpt.filename or "checkpoint.pt").name[-200:] or "checkpoint.pt"
        return JobFiles(name, ckpt.file.read(), spec_text, parts, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def parse_spec(text: str) -> JobSpec:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise _invalid(f"spec: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", "invalid-spec") from None
    if not isinstance(raw, dict):
        raise _invalid("spec: must be a JSON object", "invalid-spec")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        errors = [
            {"loc": ["spec", *map(str, err["loc"])], "msg": err["msg"], "type": err["type"]} for err in e.errors()
        ]
        raise _invalid(validation_detail(errors), "invalid-spec", errors) from None


def request_digest(files: JobFiles) -> str:
    """Identity of a request for Idempotency-Key: checkpoint, spec (as parsed JSON), data parts."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(files.checkpoint).digest())
    try:
        spec = json.dumps(json.loads(files.spec_text), sort_keys=True, separators=(",", ":"))
    except json.JSONDecodeError:
        spec = files.spec_text
    h.update(spec.encode())
    for name in sorted(files.data_parts):
        h.update(name.encode() + b"\0" + bytes.fromhex(files.data_parts[name]))
    return h.hexdigest()


def _check_data(
    field: str, value: str | None, files: JobFiles, settings: Settings, num_classes: int | None
) -> None:
    """The spec's data name must be built in, an uploaded part (checked by the shared
    validator), or a file in NERN_DATA_DIR. The stored spec keeps the name as sent."""
    if value is None or value in BUILTIN_DATA[field]:
        return
    if value in files.data_parts:
        try:
            check_npz(files.staging / value, value, labelled=field == "eval_data", num_classes=num_classes,
                      max_bytes=settings.max_data_bytes)
        except DataPartError as e:
            raise _invalid(str(e), "invalid-data") from None
        return
    if "/" not in value and "\\" not in value and value not in ("", ".", "..") and settings.data_dir:
        if (settings.data_dir / value).is_file():
            return
    builtin = "".join(f"{b!r}, " for b in BUILTIN_DATA[field])
    raise _invalid(
        f"spec.{field}: {value!r} is not {builtin}the name of an uploaded .npz part or a file in "
        "the server's dataset folder (server paths are not accepted)",
        "invalid-spec",
    )


def _check_checkpoint(files: JobFiles, arch: str | None) -> tuple[str, dict]:
    if not files.checkpoint:
        raise _invalid("the checkpoint part is empty", "invalid-checkpoint")
    try:
        state_dict = load_state_dict_bytes(files.checkpoint)
    except UnsafeCheckpointError as e:
        raise _invalid(str(e), "unsafe-checkpoint") from None
    except CheckpointError as e:
        raise _invalid(str(e), "invalid-checkpoint") from None
    try:
        _model, name, kwargs = load_target(state_dict, arch)
    except TargetError as e:
        raise _invalid(str(e), "checkpoint-mismatch") from None
    return name, kwargs


def submit_job(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    tenant_id: int,
    files: JobFiles,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Check and store a submission. Returns (job, created); created=False for a replay.

    Consumes `files.staging`: moved into place as the job's input folder, or removed.
    """
    staging = files.staging
    try:
        digest = request_digest(files)
        if idempotency_key is not None:
            existing = crud.find_idempotent(session, tenant_id, idempotency_key)
            if existing is not None:
                files.discard()
                return _replay(existing, digest), False
        spec = parse_spec(files.spec_text)
        arch = _check_submission(session, settings, tenant_id, files, spec)
    except BaseException:
        files.discard()
        raise

    try:
        job = _staged_job(settings, tenant_id, files, spec, arch, idempotency_key, digest)
        session.add(job)
        session.flush()
        store.commit_inputs(staging, job.id)
        try:
            session.commit()
        except BaseException:
            store.remove_job(job.id)
            raise
    except IntegrityError:
        # Another request with the same Idempotency-Key won the race: answer with its job.
        session.rollback()
        shutil.rmtree(staging, ignore_errors=True)
        existing = crud.find_idempotent(session, tenant_id, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _replay(existing, digest), False
    except BaseException:
        session.rollback()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return job, True


def _check_submission(session: Session, settings: Settings, tenant_id: int, files: JobFiles, spec: JobSpec) -> str:
    """Every check of a parsed submission (parts, tenant limits, checkpoint, data); returns the
    architecture the checkpoint fits."""
    unused = sorted(set(files.data_parts) - {spec.data, spec.eval_data})
    if unused:
        raise _invalid(f"part {unused[0]!r} is not named by spec.data or spec.eval_data")
    _check_tenant_limits(session, settings, tenant_id, files)
    arch, kwargs = _check_checkpoint(files, spec.arch)
    _check_data("data", spec.data, files, settings, kwargs.get("num_classes"))
    _check_data("eval_data", spec.eval_data, files, settings, kwargs.get("num_classes"))
    return arch


def _staged_job(settings: Settings, tenant_id: int, files: JobFiles, spec: JobSpec, arch: str,
                idempotency_key: str | None, digest: str) -> Job:
    """Write the checkpoint into the staging folder beside the data parts; the job's new row."""
    staging = files.staging
    suffix = Path(files.checkpoint_name).suffix.lower()
    stored_name = "checkpoint" + (suffix if suffix in _CHECKPOINT_SUFFIXES else ".pt")
    (staging / stored_name).write_bytes(files.checkpoint)
    return Job(
        id=uuid.uuid4().hex, tenant_id=tenant_id, name=spec.name, arch=arch,
        queue=queue_for_device(spec.device, settings.auto_queue),
        spec=spec.model_dump(mode="json"),  # as sent: part names, never server paths
        state=JobState.queued.value, stage=Stage.queued.value, progress=0.0, step=0,
        total_steps=spec.steps, attempts=0, max_attempts=settings.max_attempts, cancel_requested=False,
        created_at=crud.utcnow(), checkpoint_name=files.checkpoint_name,
        checkpoint_sha256=hashlib.sha256(files.checkpoint).hexdigest(),
        checkpoint_bytes=len(files.checkpoint), idempotency_key=idempotency_key, request_sha256=digest,
        time_limit_s=spec.time_limit_s, input_bytes=sum(p.stat().st_size for p in staging.iterdir()),
    )


def _check_tenant_limits(session: Session, settings: Settings, tenant_id: int, files: JobFiles) -> None:
    if not (settings.tenant_max_active_jobs or settings.tenant_max_bytes):
        return
    active, stored = crud.tenant_usage(session, tenant_id)
    if settings.tenant_max_active_jobs and active >= settings.tenant_max_active_jobs:
        raise ProblemError(
            429, f"this tenant already has {active} queued or running jobs, its limit "
            "(NERN_TENANT_MAX_ACTIVE_JOBS); submit again when one has finished",
            kind="tenant-job-limit", headers={"Retry-After": "30"},
        )
    incoming = len(files.checkpoint) + sum(p.stat().st_size for p in files.staging.iterdir())
    if settings.tenant_max_bytes and stored + incoming > settings.tenant_max_bytes:
        raise ProblemError(
            413, f"this tenant stores {stored} bytes; {incoming} more would pass its limit of "
            f"{settings.tenant_max_bytes} (NERN_TENANT_MAX_BYTES); delete finished jobs (DELETE /jobs/{{id}})",
            kind="tenant-storage-full",
        )


def _replay(job: Job, digest: str) -> Job:
    if job.request_sha256 != digest:
        raise ProblemError(
            422, "this Idempotency-Key was already used with a different request", kind="idempotency-key-reused"
        )
    return job
