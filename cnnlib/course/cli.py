"""``cnn-course``: the instructor's command line.

    cnn-course lab [JUPYTER_ARGS...]         start JupyterLab on lectures/ with the course's settings
    cnn-course clean [PATH...] [--run]       strip outputs (run first with --run to refresh checked ones)
    cnn-course exercises                     write exercises/ from solutions/
    cnn-course grade SUBMISSION... [--out grades.csv]
                                             grade notebooks (files or folders) into a CSV and a summary
    cnn-course site [LECTURE...] [--out site]   build the course website from the lectures, executed
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import exercises, grade, lab, notebooks, site

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


def _lab(args) -> int:
    lab.main(_course_root(), args.jupyter_args)


def _clean(args) -> int:
    root = _course_root() if not args.paths else None
    paths = args.paths or [root / f for f in NOTEBOOK_FOLDERS if (root / f).is_dir()]
    changed = notebooks.clean(paths, run=args.run)
    for path in changed:
        print(f"cleaned {path}")
    print(f"{len(changed)} notebook(s) changed")
    return 0


def _exercises(args) -> int:
    root = _course_root() if args.solutions is None or args.out is None else None
    solutions = args.solutions or root / "solutions"
    out = args.out or root / "exercises"
    try:
        changed = exercises.generate(solutions, out)
    except ValueError as err:
        raise SystemExit(f"cnn-course exercises: {err}")
    for path in changed:
        print(f"{'wrote' if path.exists() else 'removed'} {path}")
    print(f"{len(changed)} exercise notebook(s) changed in {out}")
    return 0


def _grade(args) -> int:
    solutions = args.solutions or _course_root() / "solutions"

    def progress(result):
        status = result.rows[0].status if result.rows else ""
        print(f"{grade._plain(result.student):>20}  {result.exercise or '(unknown)':<24} "
              f"{result.points:g} / {result.max_points:g}  ({result.seconds:.1f} s)"
              + ("  " + status if status in ("invalid", "tampered") else ""),
              flush=True)

    try:
        results = grade.grade(args.submissions, args.out, solutions_dir=solutions, student=args.student,
                              jobs=args.jobs, cell_timeout=args.cell_timeout,
                              total_timeout=args.timeout, progress=progress)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise SystemExit(f"cnn-course grade: {err}")
    except KeyboardInterrupt:
        print(f"interrupted: the finished submissions are in {args.out}; run the same command again to "
              f"grade the rest", file=sys.stderr)
        return 130
    print(f"graded {len(results)} submission(s): wrote {args.out} and {grade.summary_path(args.out)}")
    return 0


def _site(args) -> int:
    root = _course_root()
    lectures = None
    if args.lectures:
        found = {p.name[:2]: p for p in (root / "lectures").glob("[0-9][0-9]_*.ipynb")}
        unknown = [n for n in args.lectures if n.zfill(2) not in found]
        if unknown:
            raise SystemExit(f"cnn-course site: no lecture {', '.join(unknown)}; the lectures are "
                             f"{', '.join(sorted(found))}")
        lectures = [found[n.zfill(2)] for n in args.lectures]
    try:
        index = site.build(root, args.out.resolve(), lectures)
    except site.SiteError as err:
        raise SystemExit(f"cnn-course site: {err}")
    print(f"open {index} in a browser, or serve it: python -m http.server -d {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cnn-course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("lab", help="start JupyterLab on lectures/ (installs the course's JupyterLab "
                                   "defaults first; see cnnlib/course/lab.py)")
    p.set_defaults(func=_lab)  # any further arguments go to `jupyter lab`, e.g. --port=8889

    p = sub.add_parser("clean", help="strip outputs and execution counts from notebooks")
    p.add_argument("paths", nargs="*", type=Path, help="notebooks or folders (default: all)")
    p.add_argument("--run", action="store_true",
                   help="execute each notebook first (quick profile) to refresh checked outputs")
    p.set_defaults(func=_clean)

    p = sub.add_parser("exercises", help="generate exercises/ from solutions/ (idempotent)")
    p.add_argument("--solutions", type=Path, help="solution notebooks (default: solutions/)")
    p.add_argument("--out", type=Path, help="where the exercises go (default: exercises/)")
    p.set_defaults(func=_exercises)

    p = sub.add_parser("grade", help="grade submitted notebooks into a CSV and a readable summary",
                       description=grade.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("submissions", nargs="+", type=Path, help="notebooks or folders of notebooks")
    p.add_argument("--out", type=Path, default=Path("grades.csv"),
                   help="the CSV to write; the summary goes beside it as .md (default: grades.csv)")
    p.add_argument("--student", help="student id for a single submission (default: from the file name)")
    p.add_argument("--solutions", type=Path, help="solution notebooks (default: solutions/)")
    p.add_argument("--jobs", type=int, help="submissions graded at once (default: one per CPU core)")
    p.add_argument("--cell-timeout", type=float, default=grade.CELL_TIMEOUT,
                   help=f"seconds per cell (default: {grade.CELL_TIMEOUT})")
    p.add_argument("--timeout", type=float, default=grade.TOTAL_TIMEOUT,
                   help=f"seconds per submission, all cells together (default: {grade.TOTAL_TIMEOUT})")
    p.set_defaults(func=_grade)

    p = sub.add_parser("site", help="build the course website (static HTML) from the lectures executed "
                                    "in the quick profile", description=site.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lectures", nargs="*", help="lecture numbers, e.g. 08 09 (default: all ten)")
    p.add_argument("--out", type=Path, default=Path("site"), help="the site's folder (default: site/)")
    p.set_defaults(func=_site)
    args, extra = parser.parse_known_args(argv)
    if extra and args.func is not _lab:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.jupyter_args = extra
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
