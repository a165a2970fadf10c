"""Python client of the job API (httpx). The `nern jobs ...` commands are built on it.

    client = NernClient("http://127.0.0.1:8000", api_key="nern_...")   # or NERN_SERVER / NERN_API_KEY
    job = client.submit("resnet20.th", {"arch": "resnet20", "steps": 300})
    job = client.wait(job["id"])
    client.download(job["id"], "predictor.nern", "out/")
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    """Base of every error the client raises.

        ApiError                    status: the HTTP status, or None without an answer
        ├── TransportError          the server could not be reached, or the transfer broke
        │   └── CorruptDownload     a downloaded file's sha256 differs from its ETag
        └── HttpError               the API answered 4xx/5xx (problem+json: title, detail, body)
            ├── BadRequest              400 (and 4xx without a class of their own)
            ├── Unauthorized            401 missing, invalid or revoked API key
            ├── NotFound                404 no such job/artifact (or another tenant's)
            ├── Conflict                409 the job's state does not allow it
            ├── PayloadTooLarge         413 the upload exceeds the server's limit
            ├── UnsupportedMediaType    415
            ├── ValidationError         422 bad spec, checkpoint or data part
            ├── TooManyRequests         429 a tenant limit or key-attempt rate limit
            └── ServerError             5xx
    """

    def __init__(self, status: int | None, title: str, detail: str | None = None, body: dict | None = None) -> None:
        head = f"{status} {title}" if status is not None else title
        super().__init__(f"{head}: {detail}" if detail else head)
        self.status = status
        self.title = title
        self.detail = detail
        self.body = body or {}


class TransportError(ApiError):
    """No HTTP answer: connection refused, timeout, or a broken transfer (status is None)."""

    def __init__(self, title: str, detail: str | None = None) -> None:
        super().__init__(None, title, detail)


class CorruptDownload(TransportError):
    pass


class HttpError(ApiError):
    status: int


class BadRequest(HttpError):
    pass


class Unauthorized(HttpError):
    pass


class NotFound(HttpError):
    pass


class Conflict(HttpError):
    pass


class PayloadTooLarge(HttpError):
    pass


class UnsupportedMediaType(HttpError):
    pass


class ValidationError(HttpError):
    pass


class TooManyRequests(HttpError):
    pass


class ServerError(HttpError):
    pass


_BY_STATUS: dict[int, type[HttpError]] = {
    401: Unauthorized, 404: NotFound, 409: Conflict, 413: PayloadTooLarge, 415: UnsupportedMediaType,
    422: ValidationError, 429: TooManyRequests,
}


def error_class(status: int) -> type[HttpError]:
    """The exception class the client raises for an HTTP error status."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, BadRequest)


class NernClient:
    def __init__(
        self,
        server: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = (server or os.environ.get("NERN_SERVER") or DEFAULT_SERVER).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("NERN_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NernClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise TransportError("cannot reach the server", f"{self.server}: {e}") from None
        if r.status_code >= 400:
            _raise_for(r)
        return r

    def submit(
        self,
        checkpoint: str | os.PathLike,
        spec: dict[str, Any] | None = None,
        *,
        data_files: dict[str, str | os.PathLike] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """POST /jobs. `data_files` maps part names (as named in spec.data / eval_data) to files."""
        path = Path(checkpoint)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with open(path, "rb") as ckpt:
            files: list[tuple[str, Any]] = [
                ("spec", (None, json.dumps(spec or {}), "application/json")),
                ("checkpoint", (path.name, ckpt, "application/octet-stream")),
            ]
            opened = []
            try:
                for name, p in (data_files or {}).items():
                    f = open(p, "rb")  # noqa: SIM115 - closed below
                    opened.append(f)
                    files.append((name, (Path(p).name, f, "application/octet-stream")))
                return self._request("POST", "/jobs", files=files, headers=headers).json()
            finally:
                for f in opened:
                    f.close()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}").json()

    def jobs(
        self,
        *,
        state: str | list[str] | None = None,
        arch: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
    ) -> dict[str, Any]:
        """One page: {"items": [...], "next_cursor": ...}."""
        params: dict[str, Any] = {"limit": limit}
        for k, v in (("state", state), ("arch", arch), ("cursor", cursor),
                     ("created_after", created_after), ("created_before", created_before)):
            if v:
                params[k] = v
        return self._request("GET", "/jobs", params=params).json()

    def iter_jobs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            page = self.jobs(cursor=cursor, **filters)
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/cancel").json()

    def retry(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/retry").json()

    def metrics(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}/metrics").json()

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/jobs/{job_id}/artifacts").json()["items"]

    def download(self, job_id: str, name: str, out: str | os.PathLike) -> Path:
        """Stream an artifact to `out` (a folder, or a file path) and check its sha256 (the ETag)."""
        out = Path(out)
        target = out / name if out.is_dir() or str(out).endswith(os.sep) else out
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        h = hashlib.sha256()
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/artifacts/{name}") as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_for(r)
                etag = r.headers.get("etag", "").strip('"')
                with open(tmp, "wb") as f:
                    for chunk in r.iter_bytes(1 << 20):
                        h.update(chunk)
                        f.write(chunk)
        except httpx.TransportError as e:
            tmp.unlink(missing_ok=True)
            raise TransportError("download interrupted", str(e)) from None
        if etag and h.hexdigest() != etag:
            tmp.unlink(missing_ok=True)
            raise CorruptDownload("corrupt download", f"{name}: sha256 {h.hexdigest()} != ETag {etag}")
        os.replace(tmp, target)
        return target

    def wait(
        self,
        job_id: str,
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job finishes; returns the final job. TimeoutError past `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["state"] in TERMINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
            time.sleep(poll)


def _raise_for(r: httpx.Response) -> None:
    try:
        body = r.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    raise error_class(r.status_code)(r.status_code, body.get("title") or r.reason_phrase, body.get("detail"), body)
