#!/usr/bin/env python3
"""Rewrite the generated tables of docs/bad-inputs.md from integration/bad_inputs.py (the
credential battery) and integration/bypass_cases.py (the bypass battery).

    .tools/venv/bin/python scripts/bad_inputs_doc.py          # rewrite the doc
    .tools/venv/bin/python scripts/bad_inputs_doc.py --check  # exit 1 if it is out of date

Only the text between each pair of generated-section markers changes; the rest is prose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "bad-inputs.md"
sys.path.insert(0, str(REPO / "integration"))
sys.path.insert(0, str(REPO / "pylib"))

import bad_inputs  # noqa: E402
import bypass_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the doc is up to date")
    args = parser.parse_args()
    current = DOC.read_text()
    wanted = bypass_cases.replace_generated(bad_inputs.replace_generated(current))
    if args.check:
        if wanted != current:
            print(f"{DOC.relative_to(REPO)} is out of date: run scripts/bad_inputs_doc.py", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        DOC.write_text(wanted)
        print(f"rewrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
