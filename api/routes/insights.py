"""Job views the dashboard draws from stored artifacts: importance heatmaps as PNG.

`GET /jobs/{id}/importance/{layer}.png` renders one layer's kernel-error map (filters ×
channels) from the job's importance.safetensors with `nern.plots.importance_heatmap`, once; the
image is kept beside the job's files, so later requests are a file read.
"""

from __future__ import annotations

import re
import threading

from fastapi import APIRouter, Response

from ..deps import SessionDep, StoreDep, TenantDep
from ..jobstore import crud
from ..problems import ProblemError

router = APIRouter(prefix="/jobs", tags=["jobs"])

_LAYER = re.compile(r"^[A-Za-z0-9_.]{1,200}$")
# matplotlib is not thread-safe (its text parser keeps shared state), and the page asks for
# every layer at once: draw one image at a time.
_DRAW = threading.Lock()


@router.get("/{job_id}/importance/{layer}.png", summary="A layer's importance heatmap (PNG)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def importance_png(job_id: str, layer: str, store: StoreDep, session: SessionDep, tenant_id: TenantDep) -> Response:
    if crud.get_job(session, tenant_id, job_id) is None:
        raise ProblemError(404, f"no job {job_id!r}", kind="not-found")
    art = crud.get_artifact(session, job_id, "importance.safetensors")
    if art is None:
        raise ProblemError(404, f"job {job_id} has no importance maps (yet)", kind="not-found")
    if not _LAYER.match(layer):
        raise ProblemError(404, f"job {job_id} has no layer {layer!r}", kind="not-found")
    # Keyed by the artifact's sha256: a retried job's new maps get new images.
    cached = store.job_dir(job_id) / "views" / f"importance-{art.sha256[:16]}-{layer}.png"
    if not cached.is_file():
        from safetensors import safe_open

        from nern.io import atomic_write
        from nern.plots import importance_heatmap

        with safe_open(store.artifact_path(job_id, "importance.safetensors"), "pt") as f:
            key = f"{layer}/kernel_error"
            if key not in f.keys():
                raise ProblemError(404, f"job {job_id} has no layer {layer!r}", kind="not-found")
            kernel_error = f.get_tensor(key)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with _DRAW:
            atomic_write(cached, lambda tmp: importance_heatmap(kernel_error, tmp, layer))
    return Response(cached.read_bytes(), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600", "ETag": f'"{art.sha256[:16]}-{layer}"'})
