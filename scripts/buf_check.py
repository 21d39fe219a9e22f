"""`make lint`'s proto half: `buf lint`, and `buf breaking` against the main branch.

buf reads images (descriptor sets) built by the same protoc `make protos` uses, with
google/api/*.proto taken from the googleapis-common-protos package: resolving them from the
Buf Schema Registry would need the network, and this way lint and breaking work offline."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from grpc_tools import protoc

sys.path.insert(0, str(Path(__file__).parent))
from gen_protos import protoc_args

ROOT = Path(__file__).resolve().parents[1]
BUF = ROOT / "node_modules" / ".bin" / "buf"
IMAGE = ROOT / "gen" / "descriptor.binpb"


def build_image(protos: Path, out: Path) -> None:
    args = protoc_args(protos, f"--descriptor_set_out={out}")
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {protos}")


def against_ref() -> str | None:
    """The branch to compare with: BUF_AGAINST, else main, else origin/main."""
    for ref in filter(None, (os.environ.get("BUF_AGAINST"), "main", "origin/main")):
        found = subprocess.run(  # noqa: S603 - fixed git invocation
            ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
        )
        if found.returncode == 0:
            return ref
    return None


def export_protos(ref: str, folder: Path) -> bool:
    """Write `ref`'s protos/ into `folder`; False when that branch has none yet."""
    archive = subprocess.run(  # noqa: S603
        ["git", "archive", "--format=tar", ref, "--", "protos"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
    )
    if archive.returncode != 0:
        return False
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return any((folder / "protos").rglob("*.proto"))


def buf(*args: str) -> int:
    print("buf", *args, flush=True)
    return subprocess.run([str(BUF), *args], cwd=ROOT).returncode  # noqa: S603


def top_dirs(protos: Path) -> set[str]:
    return {p.relative_to(protos).parts[0] for p in protos.rglob("*.proto")}


def main() -> int:
    if not BUF.exists():
        print("buf is missing: run `make install` (npm install)", file=sys.stderr)
        return 2
    ours = top_dirs(ROOT / "protos")
    # Only our files are linted and compared; the google/ imports are not ours to change.
    paths = [arg for d in sorted(ours) for arg in ("--path", d)]
    code = buf("lint", str(IMAGE), *paths)
    ref = against_ref()
    if ref is None:
        print("no main branch to compare with; buf breaking skipped")
        return code
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not export_protos(ref, folder):
            print(f"{ref} has no protos yet; buf breaking skipped")
            return code
        build_image(folder / "protos", folder / "against.binpb")
        both = ours | top_dirs(folder / "protos")
        paths = [arg for d in sorted(both) for arg in ("--path", d)]
        code |= buf("breaking", str(IMAGE), "--against", str(folder / "against.binpb"), *paths)
    return code


if __name__ == "__main__":
    sys.exit(main())
