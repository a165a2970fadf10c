"""The artifact store: a folder (local, or a shared volume in the distributed deployment).

    {root}/jobs/{id}/input/      the uploaded checkpoint and data parts (written before the row)
    {root}/jobs/{id}/work/       resumable training state (nern.train.fit's work_dir)
    {root}/jobs/{id}/artifacts/  the results served by GET /jobs/{id}/artifacts/{name}

Files are written under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from nern.io import atomic_write, sha256_and_size

MEDIA_TYPES = {
    ".nern": "application/vnd.nern.package",
    ".safetensors": "application/octet-stream",
    ".json": "application/json",
    ".npz": "application/octet-stream",
    ".png": "image/png",
}


def media_type_for(name: str) -> str:
    return MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def input_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "input"

    def work_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "work"

    def checkpoint_path(self, job_id: str) -> Path:
        """The stored upload of a job (the one file in its input folder named checkpoint.*,
        with a checkpoint suffix: data parts cannot take that name, older ones were not checked)."""
        found = [p for p in self.input_dir(job_id).glob("checkpoint.*") if p.suffix.lower() != ".npz"]
        if not found:
            raise FileNotFoundError(f"job {job_id} has no stored checkpoint")
        return found[0]

    def artifact_path(self, job_id: str, name: str) -> Path:
        return self.job_dir(job_id) / "artifacts" / name

    def staging_dir(self) -> Path:
        """A fresh private folder for an upload still being checked."""
        path = self.root / "staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def commit_inputs(self, staging: Path, job_id: str) -> Path:
        """Move a checked upload's folder into place as the job's input folder."""
        target = self.input_dir(job_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return target

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def write_artifact(self, job_id: str, name: str, write: Callable[[Path], None]) -> tuple[str, int, str, str]:
        """Run `write(tmp_path)`, then publish the file; returns (name, size, sha256, media type)."""
        final = self.artifact_path(job_id, name)
        final.parent.mkdir(parents=True, exist_ok=True)

        def write_and_hash(tmp: Path) -> tuple[str, int]:
            write(tmp)
            return sha256_and_size(tmp)

        sha, size = atomic_write(final, write_and_hash)
        return name, size, sha, media_type_for(name)
