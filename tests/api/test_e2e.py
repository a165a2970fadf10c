"""End to end on real processes: submit → poll → metrics → download (ETag, 304, Range) →
reconstruct from the downloaded package → strict-load into ResNet-20 → the accuracy and
agreement we compute ourselves equal the ones the job reported. A second job compresses its
predictor (prune + int8 + a little fine-tuning): the same holds for the compressed package
it serves, and its importance maps are those of that package."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch
from harness import RESNET20, SHARED_DATA, TINY_SPEC, submit, wait_done
from safetensors.torch import load as load_safetensors

from nern.checkpoint import load_state_dict
from nern.importance import ImportanceMaps, importance_maps
from nern.package import load_package_bytes, reconstruct
from nern.targets import create_target

# Evaluation data of our own choosing, uploaded as an npz part: 200 random test images.
SPEC = {**TINY_SPEC, "steps": 4, "name": "e2e", "eval_data": "eval.npz", "eval_limit": None}
COMPRESS = {"prune": 0.5, "quantize": "int8", "finetune_steps": 2}
IMPORTANCE = {"importance.safetensors", "importance.json"}
RESNET20_CONVS = 19


def _eval_set() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SHARED_DATA / "cifar10_test.npz") as d:
        keep = np.sort(np.random.default_rng(7).choice(len(d["labels"]), 200, replace=False))
        return d["images"][keep], d["labels"][keep]


def _eval_npz() -> bytes:
    images, labels = _eval_set()
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    return buf.getvalue()


def _top1(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels on our evaluation images, preprocessed as the checkpoints were
    trained (shared/data/README.md): [0, 1] then ImageNet mean/std, no resize."""
    images, labels = _eval_set()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = model.eval()((x - mean) / std).argmax(1).numpy()
    return pred, labels


def _run_job(service, spec: dict) -> dict:
    with service.client() as c:
        r = submit(c, spec, extra_files={"eval.npz": ("eval.npz", _eval_npz())})
        assert r.status_code == 202, r.text
        job = wait_done(c, r.json()["id"])
    assert job["state"] == "succeeded", (job, service.deployment.log("worker.log"))
    return job


def _download_all(service, jid: str) -> tuple[dict[str, dict], dict[str, bytes]]:
    with service.client() as c:
        listed = {a["name"]: a for a in c.get(f"/jobs/{jid}/artifacts").json()["items"]}
        blobs = {}
        for name, a in listed.items():
            r = c.get(f"/jobs/{jid}/artifacts/{name}")
            assert r.status_code == 200 and r.headers["etag"] == f'"{a["sha256"]}"'
            assert r.headers["content-type"].startswith(a["media_type"])
            assert len(r.content) == a["size"] and hashlib.sha256(r.content).hexdigest() == a["sha256"]
            blobs[name] = r.content
    return listed, blobs


@pytest.fixture(scope="module")
def finished(service):
    return _run_job(service, SPEC)


@pytest.fixture(scope="module")
def compressed(service):
    return _run_job(service, {**SPEC, "name": "e2e-compressed", "compress": COMPRESS})


def test_job_reports_progress_timings_and_results(service, finished):
    job = finished
    assert (job["stage"], job["progress"], job["step"], job["total_steps"]) == ("done", 1.0, 4, 4)
    assert job["attempts"] == 1 and job["started_at"] and job["finished_at"] >= job["started_at"]
    s = job["summary"]
    assert s["steps"] == 4 and s["eval_images"] == 200 and s["resumed_from_step"] == 0
    for k in ("original_top1", "reconstructed_top1", "agreement"):
        assert 0.0 <= s[k] <= 100.0
    with service.client() as c:
        points = c.get(f"/jobs/{job['id']}/metrics").json()["points"]
    steps = [p["step"] for p in points if p["stage"] == "training"]
    assert steps == [1, 2, 3, 4] and all(p["attempt"] == 1 for p in points)
    assert all({"rec", "kd", "fmd"} <= set(p["losses"]) for p in points if p["stage"] == "training")


def test_artifacts_download_and_reconstruct_to_the_reported_accuracy(service, finished):
    listed, blobs = _download_all(service, finished["id"])
    assert set(listed) == {"predictor.nern", "reconstructed.safetensors", "report.json", *IMPORTANCE}

    report = json.loads(blobs["report.json"])
    assert report == finished["summary"] and report["compression"] is None
    assert report["reconstructed_top1"] == finished["summary"]["reconstructed_top1"]
    assert report["package_bytes"] == listed["predictor.nern"]["size"] < RESNET20.stat().st_size

    original = load_state_dict(RESNET20)
    rebuilt = reconstruct(load_package_bytes(blobs["predictor.nern"]), original)
    model = create_target("resnet20")
    model.load_state_dict(rebuilt, strict=True)
    served = load_safetensors(blobs["reconstructed.safetensors"])
    assert served.keys() == rebuilt.keys()
    assert all(torch.equal(served[k], rebuilt[k]) for k in rebuilt)
    # The predictor really replaced the convolutions (they are not the original weights).
    assert not torch.equal(rebuilt["layer1.0.conv1.weight"], original["layer1.0.conv1.weight"])

    assert finished["summary"]["eval_images"] == 200
    pred_r, labels = _top1(model)
    reference = create_target("resnet20")
    reference.load_state_dict(original, strict=True)
    pred_o, _ = _top1(reference)
    s = finished["summary"]
    assert round(100.0 * float((pred_r == labels).mean()), 2) == s["reconstructed_top1"]
    assert round(100.0 * float((pred_o == labels).mean()), 2) == s["original_top1"]
    assert round(100.0 * float((pred_r == pred_o).mean()), 2) == s["agreement"]


def test_compressed_job_serves_the_compressed_package_and_reports_its_accuracy(service, compressed):
    job = compressed
    assert (job["stage"], job["progress"], job["step"], job["total_steps"]) == ("done", 1.0, 4, 4)
    assert job["spec"]["compress"] == COMPRESS
    listed, blobs = _download_all(service, job["id"])
    assert set(listed) == {"predictor.nern", "predictor-fp32.nern", "reconstructed.safetensors", "report.json",
                           *IMPORTANCE}
    assert listed["predictor.nern"]["size"] < listed["predictor-fp32.nern"]["size"]

    s = job["summary"]
    assert json.loads(blobs["report.json"]) == s
    c = s["compression"]
    assert (c["prune"], c["quantize"], c["finetune_steps"]) == (0.5, "int8", 2)
    assert c["matrix_weights_kept"] == c["matrix_weights"] - round(0.5 * c["matrix_weights"])
    assert s["package_bytes"] == listed["predictor.nern"]["size"]
    assert c["source_package_bytes"] == listed["predictor-fp32.nern"]["size"]
    assert {"reconstructed_top1", "agreement", "relative_weight_error"} <= set(c["uncompressed"])
    with service.client() as cl:
        points = cl.get(f"/jobs/{job['id']}/metrics").json()["points"]
    assert [p["step"] for p in points if p["stage"] == "compressing"] == [1, 2]

    package = load_package_bytes(blobs["predictor.nern"])
    assert package.meta["compression"]["quantize"] == "int8"
    fp32 = load_package_bytes(blobs["predictor-fp32.nern"])
    assert fp32.meta.get("compression") is None
    original = load_state_dict(RESNET20)
    rebuilt = reconstruct(package, original)
    assert not torch.equal(rebuilt["layer1.0.conv1.weight"], reconstruct(fp32, original)["layer1.0.conv1.weight"])
    model = create_target("resnet20")
    model.load_state_dict(rebuilt, strict=True)
    served = load_safetensors(blobs["reconstructed.safetensors"])
    assert served.keys() == rebuilt.keys() and all(torch.equal(served[k], rebuilt[k]) for k in rebuilt)

    # The reported accuracy is the served (compressed) package's, on our evaluation images.
    pred_r, labels = _top1(model)
    reference = create_target("resnet20")
    reference.load_state_dict(original, strict=True)
    pred_o, _ = _top1(reference)
    assert s["eval_images"] == 200
    assert round(100.0 * float((pred_r == labels).mean()), 2) == s["reconstructed_top1"]
    assert round(100.0 * float((pred_o == labels).mean()), 2) == s["original_top1"]
    assert round(100.0 * float((pred_r == pred_o).mean()), 2) == s["agreement"]


def test_importance_maps_are_those_of_the_served_package(service, compressed, tmp_path):
    _, blobs = _download_all(service, compressed["id"])
    for name in ("importance.safetensors", "importance.json"):
        (tmp_path / name).write_bytes(blobs[name])
    maps = ImportanceMaps.load(tmp_path)
    assert len(maps.layers) == RESNET20_CONVS
    expected = importance_maps(load_package_bytes(blobs["predictor.nern"]), load_state_dict(RESNET20))
    assert maps.layers == expected.layers
    assert all(torch.allclose(maps.weight_error[n], expected.weight_error[n], rtol=1e-5, atol=1e-6)
               for n in maps.layers)
    means = compressed["summary"]["importance"]["mean_relative_error"]
    assert list(means) == maps.layers
    assert all(abs(means[n] - float(maps.weight_error[n].double().mean())) < 1e-5 for n in maps.layers)


def test_etag_304_and_range_206(service, finished):
    jid = finished["id"]
    with service.client() as c:
        full = c.get(f"/jobs/{jid}/artifacts/predictor.nern")
        etag, size = full.headers["etag"], len(full.content)
        r = c.get(f"/jobs/{jid}/artifacts/predictor.nern", headers={"If-None-Match": etag})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
        r = c.get(f"/jobs/{jid}/artifacts/predictor.nern", headers={"If-None-Match": '"other"'})
        assert r.status_code == 200 and r.content == full.content
        r = c.get(f"/jobs/{jid}/artifacts/predictor.nern", headers={"Range": "bytes=10-109"})
        assert r.status_code == 206 and r.content == full.content[10:110]
        assert r.headers["content-range"] == f"bytes 10-109/{size}" and r.headers["content-length"] == "100"
        r = c.get(f"/jobs/{jid}/artifacts/predictor.nern", headers={"Range": "bytes=-16"})
        assert r.status_code == 206 and r.content == full.content[-16:]
        r = c.get(f"/jobs/{jid}/artifacts/predictor.nern", headers={"Range": f"bytes={size - 5}-"})
        assert r.status_code == 206 and r.content == full.content[-5:]
        r = c.get(f"/jobs/{jid}/artifacts/predictor.nern", headers={"Range": f"bytes={size}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
        # A Range with a stale If-Range gets the whole (changed) file.
        r = c.get(f"/jobs/{jid}/artifacts/predictor.nern", headers={"Range": "bytes=0-9", "If-Range": '"old"'})
        assert r.status_code == 200 and len(r.content) == size
        assert c.get(f"/jobs/{jid}/artifacts/nothing.bin").status_code == 404


def test_finished_job_cannot_be_cancelled_or_retried(service, finished):
    with service.client() as c:
        assert c.post(f"/jobs/{finished['id']}/cancel").status_code == 409
        assert c.post(f"/jobs/{finished['id']}/retry").status_code == 409


def test_other_tenant_cannot_reach_the_finished_jobs_artifacts(service, finished):
    jid = finished["id"]
    with service.client("b") as b:
        for path in (f"/jobs/{jid}", f"/jobs/{jid}/metrics", f"/jobs/{jid}/artifacts",
                     f"/jobs/{jid}/artifacts/predictor.nern", f"/jobs/{jid}/artifacts/report.json"):
            assert b.get(path).status_code == 404, path
        assert b.post(f"/jobs/{jid}/retry").status_code == 404


def test_cli_submit_wait_status_list_download(service, tmp_path):
    dep = service.deployment
    env = {"NERN_SERVER": dep.url, "NERN_API_KEY": service.key_a}
    r = dep.cli("jobs", "submit", str(RESNET20), "--arch", "resnet20", "--steps", "2", "--batch-size", "8",
                "--hidden", "16", "--emb-levels", "4", "--eval-data", "cifar10-test", "--eval-limit", "100",
                "--threads", "1", "--permute", "none", "--no-augment", "--name", "from-cli", "--quantize", "fp16",
                "--prune", "0.25", "--wait", env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    jid = r.stdout.splitlines()[0].strip()
    assert "state      succeeded" in r.stdout and "top-1      original" in r.stdout
    status = json.loads(dep.cli("jobs", "status", jid, "--json", env=env).stdout)
    assert status["spec"]["augment"] is False and status["spec"]["steps"] == 2 and status["name"] == "from-cli"
    assert status["spec"]["compress"] == {"prune": 0.25, "quantize": "fp16", "finetune_steps": 0}
    listed = dep.cli("jobs", "list", "--state", "succeeded", env=env)
    assert listed.returncode == 0 and jid in listed.stdout
    out = tmp_path / "dl"
    r = dep.cli("jobs", "download", jid, "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["predictor.nern", "predictor-fp32.nern", "reconstructed.safetensors", "report.json", *IMPORTANCE])
    pkg = load_package_bytes((out / "predictor.nern").read_bytes())
    create_target("resnet20").load_state_dict(reconstruct(pkg, load_state_dict(RESNET20)), strict=True)
    # Errors: one line on stderr, non-zero exit.
    for args in (("jobs", "status", "0" * 32), ("jobs", "submit", str(tmp_path / "missing.th"))):
        r = dep.cli(*args, env=env)
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and r.stderr.startswith("nern: error:")
    r = dep.cli("jobs", "list", env={"NERN_SERVER": dep.url, "NERN_API_KEY": "nern_bad"})
    assert r.returncode != 0 and "401" in r.stderr
    bad = tmp_path / "model.pt"
    torch.save(create_target("resnet20"), bad)
    r = dep.cli("jobs", "submit", str(bad), env=env)
    assert r.returncode != 0 and "state_dict" in r.stderr and r.stderr.count("\n") == 1
