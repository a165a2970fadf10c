"""Pack what issue 7's GPU checks need on a lent GPU machine and that machine lacks.

That machine has PyTorch, NumPy, SciPy, numba, safetensors, tqdm and matplotlib, but not
pydantic, and none of ../shared/data: only the working tree travels, at most 64 MiB with all
that is carried. So:

    python scripts/device_bundle.py                  # here: writes .device/ (git-ignored)
    python3 scripts/device_bundle.py --unpack DIR    # there: restores the data files into DIR

.device/ holds
- wheels/cpXY/: pydantic and what it needs, for CPython X.Y (default 3.12, the device's),
  manylinux x86-64, at the versions installed here;
- data/: the ResNet-20 and ResNet-56 checkpoints, and the two CIFAR-10 files with their images
  stored channel-planar as row differences and xz-compressed (lossless, 56 → ~44 MB), with the
  sha256 of each file's images so that the unpacked arrays are checked bit for bit.

`scripts/device_run.sh` installs the wheels, unpacks the data and runs a check there.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".device"
SHARED = ROOT.parent / "shared" / "data"
CHECKPOINTS = ("resnet20-12fca82f.th", "resnet56-4bfd9763.th")
IMAGE_FILES = ("cifar10_test.npz", "cifar10_train_subset.npz")
# The library's dependencies that the device image lacks (pydantic and its own needs).
WHEELS = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")


def encode_images(images: np.ndarray) -> bytes:
    """uint8 [N, H, W, C] → xz of the channel-planar rows' differences (mod 256)."""
    planar = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    delta = np.diff(planar, axis=-1, prepend=np.zeros(planar.shape[:-1] + (1,), np.uint8))
    return lzma.compress(delta.tobytes(), preset=9)


def decode_images(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    n, h, w, c = shape
    delta = np.frombuffer(lzma.decompress(blob), np.uint8).reshape(n, c, h, w)
    return np.ascontiguousarray(np.cumsum(delta, axis=-1, dtype=np.uint8).transpose(0, 2, 3, 1))


def pack_data(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    manifest = {"checkpoints": list(CHECKPOINTS), "images": {}}
    for name in CHECKPOINTS:
        shutil.copyfile(src / name, dst / name)
    for name in IMAGE_FILES:
        with np.load(src / name) as z:
            arrays = {k: z[k] for k in z.files}
        images = arrays.pop("images")
        (dst / f"{name}.images.xz").write_bytes(encode_images(images))
        np.savez(dst / f"{name}.rest.npz", **arrays)
        manifest["images"][name] = {"shape": list(images.shape),
                                    "sha256": hashlib.sha256(images.tobytes()).hexdigest()}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))


def unpack_data(src: Path, dst: Path) -> None:
    manifest = json.loads((src / "manifest.json").read_text())
    dst.mkdir(parents=True, exist_ok=True)
    for name in manifest["checkpoints"]:
        shutil.copyfile(src / name, dst / name)
    for name, meta in manifest["images"].items():
        images = decode_images((src / f"{name}.images.xz").read_bytes(), tuple(meta["shape"]))
        if hashlib.sha256(images.tobytes()).hexdigest() != meta["sha256"]:
            raise SystemExit(f"device_bundle: {name}: unpacked images differ from the packed ones")
        with np.load(src / f"{name}.rest.npz") as z:
            rest = {k: z[k] for k in z.files}
        np.savez(dst / name, images=images, **rest)
    print(f"device_bundle: data restored in {dst}", flush=True)


def download_wheels(dst: Path, python: str) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                 "manylinux2014_x86_64", "manylinux1_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "-d", str(dst)]
    for p in platforms:
        cmd += ["--platform", p]
    subprocess.run(cmd + pins, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unpack", metavar="DIR", help="restore the bundled data files into DIR (on the device)")
    ap.add_argument("--bundle", default=str(BUNDLE), help="the bundle folder (default .device/)")
    ap.add_argument("--data", default=str(SHARED), help="the shared data folder to pack")
    ap.add_argument("--python", default="3.12", help="the device's CPython version for the wheels")
    args = ap.parse_args()
    bundle = Path(args.bundle)
    if args.unpack:
        unpack_data(bundle / "data", Path(args.unpack))
        return 0
    if not (Path(args.data) / IMAGE_FILES[0]).is_file():
        print(f"device_bundle: no shared data in {args.data} (--data DIR)", file=sys.stderr)
        return 2
    tag = "cp" + args.python.replace(".", "")
    download_wheels(bundle / "wheels" / tag, args.python)
    pack_data(Path(args.data), bundle / "data")
    total = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    print(f"device_bundle: {bundle} holds {total / 2**20:.1f} MiB (the working tree travels too; 64 MiB in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
