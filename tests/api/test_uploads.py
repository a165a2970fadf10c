"""Untrusted uploads: every bad checkpoint is refused at submission with 422 (413 when too
large), and a refused upload leaves no job row and no file behind."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import httpx
import pytest
import torch
from harness import RESNET20, TINY_SPEC, submit
from safetensors.torch import save as save_safetensors

from nern.checkpoint import load_state_dict
from nern.targets import create_target

QUEUED_SPEC = {**TINY_SPEC, "device": "cuda"}  # gpu queue: no test worker runs these


@pytest.fixture(scope="module")
def uploader(service):
    key = service.deployment.create_key("tenant-uploads")
    with service.deployment.client(key) as c:
        yield c


def _footprint(service, client) -> tuple[int, list[str]]:
    """(jobs of the uploads tenant, files in the artifact store): what a rejection must not change."""
    n = len(client.get("/jobs", params={"limit": 100}).json()["items"])
    root = service.deployment.home / "artifacts"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return n, files


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _resnet20_sd() -> dict[str, torch.Tensor]:
    return load_state_dict(RESNET20)


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\0" * (200 * 2**20))
    return buf.getvalue()


def _bad_uploads(tmp_path) -> list[tuple[str, bytes, dict, str, str]]:
    """(case, checkpoint bytes, spec, problem type suffix, text the detail must contain)."""
    sd = _resnet20_sd()
    nan = dict(sd)
    nan["layer2.0.conv1.weight"] = sd["layer2.0.conv1.weight"].clone()
    nan["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    extra = {**sd, "mystery.weight": torch.zeros(3)}
    return [
        ("whole pickled model", _torch_bytes(create_target("resnet20")), QUEUED_SPEC, "unsafe-checkpoint",
         "state_dict()"),
        ("malicious pickle", pickle.dumps({"w": _Exploit(str(tmp_path / "pwned"))}), QUEUED_SPEC,
         "unsafe-checkpoint", "never unpickled"),
        ("named arch does not match", RESNET20.read_bytes(), {**QUEUED_SPEC, "arch": "resnet32"},
         "checkpoint-mismatch", "layer1.3.conv1.weight"),
        ("NaN weight", _torch_bytes(nan), QUEUED_SPEC, "invalid-checkpoint", "layer2.0.conv1.weight"),
        ("unknown key", _torch_bytes(extra), QUEUED_SPEC, "checkpoint-mismatch", "mystery.weight"),
        # The library reports non-zip garbage through torch's unpickler (as unsafe): either kind is fine.
        ("garbage bytes", b"not a checkpoint at all" * 10, QUEUED_SPEC, "checkpoint", "checkpoint"),
        ("empty file", b"", QUEUED_SPEC, "invalid-checkpoint", "empty"),
        ("zip bomb", _zip_bomb(), QUEUED_SPEC, "invalid-checkpoint", "expansion"),
        ("undetectable arch", _torch_bytes({"fc.weight": torch.zeros(2, 2)}), {**QUEUED_SPEC, "arch": None},
         "checkpoint-mismatch", "detect"),
        ("unknown arch", RESNET20.read_bytes(), {**QUEUED_SPEC, "arch": "resnet9000"}, "checkpoint-mismatch",
         "unknown architecture"),
        ("unknown spec field", RESNET20.read_bytes(), {**QUEUED_SPEC, "stepz": 3}, "invalid-spec", "spec.stepz"),
        ("bad spec value", RESNET20.read_bytes(), {**QUEUED_SPEC, "steps": 0}, "invalid-spec", "spec.steps"),
        ("server path as data", RESNET20.read_bytes(), {**QUEUED_SPEC, "data": "/etc/passwd"}, "invalid-spec",
         "server paths are not accepted"),
        ("parent path as eval data", RESNET20.read_bytes(), {**QUEUED_SPEC, "eval_data": "../nern.db"},
         "invalid-spec", "spec.eval_data"),
        ("prune fraction above 0.99", RESNET20.read_bytes(), {**QUEUED_SPEC, "compress": {"prune": 1.5}},
         "invalid-spec", "spec.compress.prune: Input should be less than or equal to 0.99"),
        ("unknown quantisation", RESNET20.read_bytes(), {**QUEUED_SPEC, "compress": {"quantize": "int4"}},
         "invalid-spec", "spec.compress.quantize: Input should be 'none', 'fp16' or 'int8'"),
        ("unknown compress key", RESNET20.read_bytes(), {**QUEUED_SPEC, "compress": {"prune": 0.5, "bits": 4}},
         "invalid-spec", "spec.compress.bits: Extra inputs are not permitted"),
        ("negative fine-tuning steps", RESNET20.read_bytes(), {**QUEUED_SPEC, "compress": {"finetune_steps": -1}},
         "invalid-spec", "spec.compress.finetune_steps"),
        ("compress not an object", RESNET20.read_bytes(), {**QUEUED_SPEC, "compress": "int8"}, "invalid-spec",
         "spec.compress"),
        ("zero time limit", RESNET20.read_bytes(), {**QUEUED_SPEC, "time_limit_s": 0}, "invalid-spec",
         "spec.time_limit_s: Input should be greater than 0"),
        ("negative time limit", RESNET20.read_bytes(), {**QUEUED_SPEC, "time_limit_s": -3}, "invalid-spec",
         "spec.time_limit_s: Input should be greater than 0"),
        ("time limit not a number", RESNET20.read_bytes(), {**QUEUED_SPEC, "time_limit_s": "three"},
         "invalid-spec", "spec.time_limit_s: Input should be a valid number"),
        ("time limit a list", RESNET20.read_bytes(), {**QUEUED_SPEC, "time_limit_s": [3]}, "invalid-spec",
         "spec.time_limit_s: Input should be a valid number"),
    ]


def test_bad_checkpoints_are_422_and_leave_nothing(service, uploader, tmp_path):
    before = _footprint(service, uploader)
    for case, data, spec, kind, needle in _bad_uploads(tmp_path):
        r = submit(uploader, spec, data)
        assert r.status_code == 422, (case, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json", case
        body = r.json()
        assert body["type"].endswith(kind), (case, body)
        assert needle in body["detail"], (case, body["detail"])
        assert "\n" not in body["detail"] and "Traceback" not in r.text, case
        assert _footprint(service, uploader) == before, f"{case} left a row or a file"
    assert not (tmp_path / "pwned").exists(), "the malicious pickle ran code"


def test_spec_that_is_not_json_is_422(uploader):
    r = uploader.post("/jobs", files={"checkpoint": ("a.th", RESNET20.read_bytes())}, data={"spec": "{steps: 3"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    r = uploader.post("/jobs", data={"spec": "{}"}, files={"other.npz": ("x.npz", b"x")})
    assert r.status_code == 422 and "checkpoint" in r.json()["detail"]


def test_upload_over_the_limit_is_413_declared_or_streamed(service, uploader):
    before = _footprint(service, uploader)
    big = b"\0" * (5 * 2**20)  # the test service's limit is 4 MiB
    r = submit(uploader, QUEUED_SPEC, big)
    assert r.status_code == 413 and r.json()["type"].endswith("/upload-too-large")

    # Chunked transfer (no Content-Length): the limit must hold while streaming.
    boundary = "nernboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n{json.dumps(QUEUED_SPEC)}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"checkpoint\"; filename=\"big.th\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(10):
            yield b"\1" * 2**20
        yield f"\r\n--{boundary}--\r\n".encode()

    r = uploader.post("/jobs", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413, r.text
    assert _footprint(service, uploader) == before


def test_safetensors_and_dataparallel_wrapped_checkpoints_are_accepted(uploader):
    sd = _resnet20_sd()
    r = submit(uploader, {**QUEUED_SPEC, "arch": None}, save_safetensors({k: v.contiguous() for k, v in sd.items()}),
               filename="r20.safetensors")
    assert r.status_code == 202, r.text
    assert r.json()["arch"] == "resnet20" and r.json()["queue"] == "gpu"
    wrapped = _torch_bytes({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_prec1": 91.7})
    r = submit(uploader, QUEUED_SPEC, wrapped)
    assert r.status_code == 202, r.text


def test_uploaded_npz_part_becomes_the_jobs_data(service, uploader):
    import numpy as np

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, images=rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8), labels=np.arange(16) % 10)
    r = submit(uploader, {**QUEUED_SPEC, "data": "mine.npz"}, extra_files={"mine.npz": ("mine.npz", buf.getvalue())})
    assert r.status_code == 202, r.text
    job = r.json()
    stored = service.deployment.home / "artifacts" / "jobs" / job["id"] / "input" / "mine.npz"
    assert stored.read_bytes() == buf.getvalue()
    # The spec comes back as sent: the part's name, no server path (also when read again).
    assert job["spec"]["data"] == "mine.npz"
    assert uploader.get(f"/jobs/{job['id']}").json()["spec"]["data"] == "mine.npz"
    assert str(service.deployment.home) not in uploader.get(f"/jobs/{job['id']}").text

    # An npz without images, and a part no spec field names, are refused.
    r = submit(uploader, {**QUEUED_SPEC, "data": "bad.npz"}, extra_files={"bad.npz": ("bad.npz", _npz(x=np.ones(3)))})
    assert r.status_code == 422 and "images" in r.json()["detail"]
    r = submit(uploader, QUEUED_SPEC, extra_files={"stray.npz": ("stray.npz", buf.getvalue())})
    assert r.status_code == 422 and "stray.npz" in r.json()["detail"]


def _npz(**arrays) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_unauthenticated_upload_is_401_before_reading(service):
    with service.client(None) as c:
        r = submit(c, QUEUED_SPEC)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    with httpx.Client(base_url=service.deployment.url) as c:
        r = submit(c, QUEUED_SPEC, headers={"Authorization": "Bearer nern_wrong"})
    assert r.status_code == 401


def _staging_and_rows_unchanged(service, uploader):
    # Which rows and staging folders exist (not the jobs' contents: other tests' jobs move on).
    staging = service.deployment.home / "artifacts" / "staging"

    def state():
        rows = [j["id"] for j in uploader.get("/jobs", params={"limit": 100}).json()["items"]]
        return sorted(staging.iterdir()) if staging.exists() else [], rows

    before = state()
    return lambda: state() == before


def test_data_part_named_like_the_checkpoint_is_refused(service, uploader):
    import numpy as np

    unchanged = _staging_and_rows_unchanged(service, uploader)
    part = _npz(images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.arange(4))
    for name in ("checkpoint.npz", "Checkpoint.NPZ.npz"):
        r = submit(uploader, {**QUEUED_SPEC, "data": name}, extra_files={name: (name, part)})
        assert r.status_code == 422 and "reserved for the stored checkpoint" in r.json()["detail"], r.text
    assert unchanged()


def test_npz_declaring_more_than_the_absolute_limit_is_refused_unread(service, uploader):
    import numpy as np

    # 120 MiB of zeros compress to ~120 KiB: a ratio rule alone would accept it.
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.zeros((41_000, 32, 32, 3), np.uint8), labels=np.zeros(41_000, np.int64))
    assert len(buf.getvalue()) < 3 * 2**20
    unchanged = _staging_and_rows_unchanged(service, uploader)
    r = submit(uploader, {**QUEUED_SPEC, "data": "big.npz"}, extra_files={"big.npz": ("big.npz", buf.getvalue())})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["type"].endswith("invalid-data") and "'big.npz' expands to" in body["detail"]
    assert "NERN_MAX_DATA_BYTES" in body["detail"] and unchanged()


@pytest.mark.parametrize("images, labels, words", [
    ("float", "ok", "must be uint8 [N, H, W, 3]"),
    ("gray", "ok", "must be uint8 [N, H, W, 3]"),
    ("ok", "eleven", "labels must lie in [0, 10)"),
    ("ok", "negative", "labels must lie in [0, 10)"),
    ("ok", "float", "'labels' must be integers"),
    ("ok", "short", "'labels' must be integers [N] matching"),
    ("object", "ok", "must be uint8 [N, H, W, 3]"),
])
def test_eval_npz_that_would_fail_or_score_garbage_in_the_worker_is_422(service, uploader, images, labels, words):
    import numpy as np

    imgs = {"ok": np.zeros((6, 32, 32, 3), np.uint8), "float": np.zeros((6, 32, 32, 3), np.float32),
            "gray": np.zeros((6, 32, 32, 1), np.uint8), "object": np.array([None] * 6, dtype=object)}[images]
    labs = {"ok": np.arange(6), "eleven": np.array([0, 1, 2, 3, 4, 11]), "negative": np.array([0, -1, 2, 3, 4, 5]),
            "float": np.arange(6, dtype=np.float32), "short": np.arange(5)}[labels]
    buf = io.BytesIO()
    np.savez(buf, images=imgs, labels=labs)  # object arrays are pickled: the check must not unpickle
    r = submit(uploader, {**QUEUED_SPEC, "eval_data": "ev.npz"}, extra_files={"ev.npz": ("ev.npz", buf.getvalue())})
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert "'ev.npz'" in r.json()["detail"] and str(service.deployment.home) not in r.text


def test_worker_errors_name_the_file_not_the_server_path(service, uploader):
    from harness import SHARED_DATA, wait_done

    # A file of the server's dataset folder that is no dataset: accepted by name, fails in the worker.
    r = submit(uploader, {**TINY_SPEC, "data": "README.md"})
    assert r.status_code == 202, r.text
    job = wait_done(uploader, r.json()["id"], timeout=120)
    assert job["state"] == "failed" and "README.md" in job["error"], job
    assert str(SHARED_DATA) not in job["error"] and str(service.deployment.home) not in job["error"]
    assert job["spec"]["data"] == "README.md"
