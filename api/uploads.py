"""Reading `POST /jobs` multipart bodies with the size limit enforced while streaming.

The limit covers the whole body and is checked on the bytes as they arrive (a declared
Content-Length over the limit is refused before reading), so an oversized upload is never
parsed or stored: it answers 413.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .problems import ProblemError

# After a 413, keep reading (and discarding) this much more so the client gets the answer
# instead of a reset connection; beyond it the connection is dropped.
_DRAIN_LIMIT = 64 * 2**20


class UploadTooLarge(Exception):
    pass


@dataclass
class Upload:
    """The parts of a job submission: text fields and files (spooled to disk past 1 MiB)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadFile] = field(default_factory=dict)

    async def close(self) -> None:
        for f in self.files.values():
            await f.close()


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413, f"the upload exceeds the limit of {limit} bytes (NERN_MAX_UPLOAD_BYTES)", kind="upload-too-large"
    )


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise UploadTooLarge
        yield chunk


async def _drain(request: Request) -> None:
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > _DRAIN_LIMIT:
                return
    except Exception:  # the client gave up: nothing left to answer politely
        return


async def read_upload(request: Request, limit: int, max_parts: int) -> Upload:
    """Parse a multipart/form-data body of at most `limit` bytes into fields and files."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ProblemError(
            415, "send multipart/form-data with a 'checkpoint' file part and a 'spec' JSON part",
            kind="unsupported-media-type",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await _drain(request)
        raise _too_large(limit)
    parser = MultiPartParser(
        request.headers, _limited(request, limit), max_files=max_parts, max_fields=max_parts,
        max_part_size=1 * 2**20,
    )
    try:
        form = await parser.parse()
    except UploadTooLarge:
        await _drain(request)
        raise _too_large(limit) from None
    except MultiPartException as e:
        raise ProblemError(422, f"malformed multipart body: {e.message}", kind="invalid-upload") from None
    upload = Upload()
    for name, value in form.multi_items():
        if name in upload.fields or name in upload.files:
            await upload.close()
            raise ProblemError(422, f"part {name!r} appears more than once", kind="invalid-upload")
        if isinstance(value, UploadFile):
            upload.files[name] = value
        else:
            upload.fields[name] = value
    return upload
