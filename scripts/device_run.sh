#!/usr/bin/env bash
# Issue 7's GPU checks on a lent GPU machine (the `device` tool). Here, once per session:
#   python scripts/device_bundle.py        # .device/: pydantic wheels + the shared data, packed
# then, as the device command (run from the repository root, ".device" in carry):
#   bash scripts/device_run.sh check                 # scripts/gpu_check.sh, about 7-10 minutes
#   bash scripts/device_run.sh fidelity resnet20     # scripts/gpu_fidelity.sh, about 11 minutes
#   bash scripts/device_run.sh smoke                 # the plumbing alone, on the CPU (a test)
# It installs the bundled wheels into /tmp/site, restores the data into /tmp/nern_data, refuses
# to go on unless the full CIFAR-10 files are what the library reads (without them it would fall
# back to the 1,000-image demo sample and report figures that mean something else), then runs
# the check with its JSON lines written to $OUT (the folder the device tool returns).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=${DEVICE_WORK:-/tmp}
BUNDLE=${DEVICE_BUNDLE:-.device}
tag=cp$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
if ! "$PY" -c 'import pydantic' 2>/dev/null; then
  [ -d "$BUNDLE/wheels/$tag" ] || { echo "device_run: no wheels for $tag in $BUNDLE/wheels (python scripts/device_bundle.py --python X.Y)" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" "$BUNDLE/wheels/$tag"/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" scripts/device_bundle.py --bundle "$BUNDLE" --unpack "$WORK/nern_data"
export NERN_DATA_DIR="$WORK/nern_data"
"$PY" - <<'EOF'
import sys
import numpy as np
from nern.data import resolve_dataset
for name, n in (("cifar10-test", 10000), ("cifar10", 10000)):
    with np.load(resolve_dataset(name)) as z:
        if len(z["labels"]) != n:
            sys.exit(f"device_run: {name} resolves to {resolve_dataset(name)} ({len(z['labels'])} images), not the full file")
print("device_run: data ok; torch", __import__("torch").__version__, flush=True)
EOF
export OUT=${OUT:-docs/results}
case "${1:-}" in
  check) bash scripts/gpu_check.sh ;;
  fidelity) bash scripts/gpu_fidelity.sh "${2:?usage: device_run.sh fidelity resnet20|resnet56}" ;;
  smoke) DEVICE=cpu MINUTES=${MINUTES:-0.05} bash scripts/gpu_fidelity.sh resnet20 ;;
  *) echo "usage: device_run.sh check | fidelity resnet20|resnet56 | smoke" >&2; exit 2 ;;
esac
