"""schemathesis over the OpenAPI document, against the real server: generated requests for
every operation (coverage and fuzzing phases) and stateful sequences that follow the document's
links (GET /jobs → a job → cancel / retry / delete / metrics / artifacts). Bounded for CI by
examples and time. Checks: no 5xx, responses match the schema. Prints the counts (`-s`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import TINY_SPEC, submit


# One backend is enough for the request layer (the routes are the same); it costs ~35 s.
@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
def test_openapi_fuzz_no_server_errors_and_schema_conformance(service, tmp_path):
    dep = service.deployment
    key = dep.create_key("tenant-fuzz")
    with dep.client(key) as c:  # jobs for the stateful phase to reach through GET /jobs links
        for i in range(3):
            assert submit(c, {**TINY_SPEC, "device": "cuda", "name": f"fuzz-{i}"}).status_code == 202
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert st, "schemathesis is a dev dependency (pip install -e '.[dev]')"
    r = subprocess.run(
        [st, "run", f"{dep.url}/openapi.json", "-H", f"Authorization: Bearer {key}",
         "--checks", "not_a_server_error,response_schema_conformance", "--phases", "coverage,fuzzing,stateful",
         "-n", "8", "--seed", "8", "--max-time", "35", "--report", "ndjson", "--report-dir", str(tmp_path),
         "--request-timeout", "30"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,  # its cache stays out of the tree
    )
    summary = r.stdout[r.stdout.find("SUMMARY"):]
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts, summary
    generated, passed = map(int, counts.groups())
    stateful = re.search(r"(\S+) Stateful", summary)
    print(json.dumps({"test": "schemathesis", "cases": generated, "passed": passed,
                      "stateful": stateful.group(1) if stateful else None}))
    assert generated == passed > 100 and "Stateful" in summary
