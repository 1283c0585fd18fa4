"""``cnn-course``: the instructor's command line.

    cnn-course clean [PATH...] [--run]     strip outputs (run first with --run to refresh checked ones)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import notebooks

NOTEBOOK_FOLDERS = ("lectures", "solutions", "exercises")


def _course_root() -> Path:
    """The course folder: the current directory if it has lectures/, else the repository."""
    here = Path.cwd()
    if (here / "lectures").is_dir():
        return here
    repo = Path(__file__).resolve().parents[2]
    if (repo / "lectures").is_dir():
        return repo
    raise SystemExit("cnn-course: run this inside the course folder (the one with lectures/)")


def _clean(args) -> int:
    root = _course_root() if not args.paths else None
    paths = args.paths or [root / f for f in NOTEBOOK_FOLDERS if (root / f).is_dir()]
    changed = notebooks.clean(paths, run=args.run)
    for path in changed:
        print(f"cleaned {path}")
    print(f"{len(changed)} notebook(s) changed")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cnn-course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("clean", help="strip outputs and execution counts from notebooks")
    p.add_argument("paths", nargs="*", type=Path, help="notebooks or folders (default: all)")
    p.add_argument("--run", action="store_true",
                   help="execute each notebook first (quick profile) to refresh checked outputs")
    p.set_defaults(func=_clean)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
