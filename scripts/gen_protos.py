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


def proto_sources(protos: Path) -> list[str]:
    return sorted(str(p.relative_to(protos)) for p in protos.rglob("*.proto"))


def protoc_args(protos: Path, *outputs: str) -> list[str]:
    """protoc's arguments for every proto under `protos`, with the googleapis and well-known
    includes, writing `outputs` (`--python_out=…` and the like) and source info."""
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    return [
        "protoc",
        f"-I{protos}",
        f"-I{_googleapis_include()}",
        f"-I{wkt}",
        *outputs,
        "--include_imports",
        "--include_source_info",
        *proto_sources(protos),
    ]


def main() -> int:
    sources = proto_sources(PROTOS)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    args = protoc_args(
        PROTOS,
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        f"--descriptor_set_out={OUT / 'descriptor.binpb'}",
    )
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
