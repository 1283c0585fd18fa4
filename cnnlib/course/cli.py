"""``cnn-course``: the instructor's command line.

    cnn-course lab [JUPYTER_ARGS...]         start JupyterLab on lectures/ with the course's settings
    cnn-course clean [PATH...] [--run]       strip outputs (run first with --run to refresh checked ones)
    cnn-course exercises                     write exercises/ from solutions/
    cnn-course grade SUBMISSION... [--out grades.csv]
                                             grade notebooks (files or folders) into a CSV and a summary
    cnn-course site [LECTURE...] [--out site]   build the course website from the lectures, executed
    cnn-course run [LECTURE...] [--profile full] [--dataset NAME] [--out runs]
                                             execute lectures headlessly, filling the result cache
    cnn-course cache export [--profile full | --all] -o results.tar | import results.tar | list
                                             share the result cache of a profile with a class
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data import DATASETS
from ..profile import PROFILES
from . import exercises, grade, lab, notebooks, run, site

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


def _lectures(root: Path, numbers, command: str) -> list[Path]:
    try:
        return run.lecture_paths(root / "lectures", numbers)
    except run.LectureError as err:
        raise SystemExit(f"cnn-course {command}: {err}")


def _site(args) -> int:
    root = _course_root()
    lectures = _lectures(root, args.lectures, "site") if args.lectures else None
    try:
        index = site.build(root, args.out.resolve(), lectures)
    except site.SiteError as err:
        raise SystemExit(f"cnn-course site: {err}")
    print(f"open {index} in a browser, or serve it: python -m http.server -d {args.out}")
    return 0


def _run(args) -> int:
    root = _course_root()
    failures = run.run(_lectures(root, args.lectures, "run"), args.out, profile=args.profile,
                       dataset=args.dataset, timeout=args.cell_timeout,
                       echo=lambda line: print(line, flush=True))
    for failure in failures:
        print(f"cnn-course run: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _cache_command(args) -> int:
    from . import results  # see cnnlib/course/results.py for the archive format and its checks

    try:
        if args.action == "list":
            print("\n".join(results.describe_folder()))
        elif args.action == "export":
            out = results.export_archive(args.out, profile=None if args.all else
                                         args.profile or results.default_profile())
            skipped = ", ".join(f"{n} of {why}" for why, n in sorted(out.skipped.items()))
            print(f"wrote {out.archive}: {out.describe()}" + (f" (left out {skipped})" if skipped else ""))
            print(f"sha256 {out.sha256}  {out.archive.name}")
        else:
            out = results.import_archive(args.archive)
            print(f"imported {args.archive} into {out.folder}: {out.describe()}; "
                  f"{out.new} new, {out.replaced} replaced, {out.unchanged} already there")
            print(f"sha256 {out.sha256}  {out.archive.name}")
    except results.ResultsArchiveError as err:
        raise SystemExit(f"cnn-course cache {args.action}: {err}")
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

    p = sub.add_parser("run", help="execute lectures headlessly (e.g. the full profile on a GPU box), "
                                   "filling the result cache", description=run.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lectures", nargs="*", help="lecture numbers, e.g. 03 04 (default: all ten)")
    p.add_argument("--profile", choices=PROFILES, help="default: the automatic choice (full with CUDA)")
    p.add_argument("--dataset", choices=DATASETS, help="the dataset instead of the profile's own")
    p.add_argument("--out", type=Path, default=Path("runs"),
                   help="where the executed notebooks go (default: runs/)")
    p.add_argument("--cell-timeout", type=float, default=None,
                   help="seconds per cell (default: no limit; a full-profile cell can train for an hour)")
    p.set_defaults(func=_run)

    p = sub.add_parser("cache", help="export the result cache of a profile to a checksummed archive, "
                                     "or import one (e.g. the full profile, run once on a GPU box)",
                       description="Share trained models and results with a class: export on the "
                                   "machine that ran the lectures, import on each laptop. The cache "
                                   "folder is $CNNLIB_CACHE (default ~/.cache/cnnlib/runs).")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("export", help="write the cache entries of one profile (this code version) "
                                          "to a tar archive")
    a.add_argument("-o", "--out", type=Path, required=True, help="the archive to write, e.g. results.tar")
    which = a.add_mutually_exclusive_group()
    which.add_argument("--profile", choices=PROFILES,
                       help="the profile whose entries go in (default: this machine's automatic "
                            "choice, full with CUDA)")
    which.add_argument("--all", action="store_true", help="the entries of every profile")
    a = actions.add_parser("import", help="verify an archive completely, then add its entries to "
                                          "the cache (a damaged one is refused, nothing imported)")
    a.add_argument("archive", type=Path)
    actions.add_parser("list", help="what the cache folder holds, per profile and dataset")
    p.set_defaults(func=_cache_command)
    args, extra = parser.parse_known_args(argv)
    if extra and args.func is not _lab:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.jupyter_args = extra
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
