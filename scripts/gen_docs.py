"""Write README's configuration table from `common.config.ENVIRONMENT`: `make docs`.

`--check` writes nothing and exits 1 when README's table differs from the generated one."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.config import environment_markdown  # noqa: E402 - after the path is set

README = ROOT / "README.md"
START = "<!-- environment table: generated from common/config.py by `make docs` -->\n"
END = "<!-- end of environment table -->\n"


def with_table(text: str) -> str:
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not (start and end):
        raise SystemExit(f"README.md lacks the markers {START.strip()} … {END.strip()}")
    return head + START + environment_markdown() + END + tail


def main(argv: list[str]) -> int:
    current = README.read_text()
    wanted = with_table(current)
    if "--check" in argv:
        if current != wanted:
            print("README.md's configuration table is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        README.write_text(wanted)
        print("README.md: configuration table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
