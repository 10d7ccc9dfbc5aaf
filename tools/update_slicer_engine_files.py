"""Rewrite the explicit list of the engine's .py files in UnleashCommon/CMakeLists.txt.

The Slicer extension vendors the `unleash` package by listing every one of its files (Slicer's
convention: no globs for scripts). Run this after adding, moving or removing an engine module:

    python tools/update_slicer_engine_files.py          # rewrite the list
    python tools/update_slicer_engine_files.py --check  # exit 1 if the list is out of date

Testing/test_slicer_extension.py fails, naming the files, when the list and unleash/ disagree.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CMAKE = ROOT / "UnleashCommon" / "CMakeLists.txt"
BEGIN = "  # BEGIN engine files (tools/update_slicer_engine_files.py)\n"
END = "  # END engine files\n"


def engine_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "unleash").rglob("*.py") if "__pycache__" not in p.parts)


def rewritten(text: str) -> str:
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "".join(f"  {name}\n" for name in engine_files()) + text[stop:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the list is up to date")
    args = parser.parse_args()
    text = CMAKE.read_text()
    new = rewritten(text)
    if args.check:
        if new != text:
            print(f"{CMAKE.relative_to(ROOT)}: the engine file list is out of date", file=sys.stderr)
            return 1
        return 0
    if new != text:
        CMAKE.write_text(new)
        print(f"updated {CMAKE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
