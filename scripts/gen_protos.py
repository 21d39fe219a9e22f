"""Generate Python code, type stubs and a descriptor set from protos/ into gen/."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "gen"


def _googleapis_include() -> Path:
    """The folder that holds google/api/*.proto, shipped by googleapis-common-protos."""
    import google.api

    return Path(next(iter(google.api.__path__))).parent.parent


def main() -> int:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{_googleapis_include()}",
        f"-I{wkt}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        f"--descriptor_set_out={OUT / 'descriptor.binpb'}",
        "--include_imports",
        "--include_source_info",
        *sources,
    ]
    # protoc finds the mypy plugins on PATH; they live beside this interpreter.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    code = protoc.main(args)
    if code != 0:
        return int(code)
    for folder in {OUT / Path(s).parent for s in sources}:
        while folder != OUT:
            (folder / "__init__.py").touch()
            folder = folder.parent
    print(f"generated {len(sources)} proto file(s) into {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
