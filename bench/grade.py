"""Benchmark: grading a class, ``cnn-course grade`` on N honest copies of a solution notebook,
against the grader of an earlier revision, in the same process.

The baseline is the grader (and the solutions with their hidden tests) of ``--against`` (default:
the last commit before the sandbox, the negative canaries and the journal of issue 15), exported
with ``git archive`` and imported under another package name; the copies are the same notebook.
Both must give every copy full marks, otherwise the timing means nothing and the script says so.
Printed: seconds for each and their ratio (issue 15's budget: at most 1.5×).

    python bench/grade.py                                   # 20 copies of 01_evolution, 2 runs each
    python bench/grade.py --copies 40 --jobs 4 --exercise 05_efficientnet --against HEAD~3
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

from cnnlib.course import grade

ROOT = Path(__file__).resolve().parents[1]
BEFORE_ISSUE_15 = "39a5501"


def _export(rev: str, folder: Path) -> Path:
    """``cnnlib/`` and ``solutions/`` of ``rev`` under ``folder``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "cnnlib", "solutions"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def _import_as(package_dir: Path, name: str):
    """The package in ``package_dir`` imported as ``name`` (its relative imports follow)."""
    spec = importlib.util.spec_from_file_location(name, package_dir / "__init__.py",
                                                  submodule_search_locations=[str(package_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.course.grade")


def grade_copies(grader, solutions: Path, exercise: str, copies: int, jobs: int, folder: Path) -> float:
    subs = folder / "in"
    shutil.rmtree(folder, ignore_errors=True)
    subs.mkdir(parents=True)
    for k in range(copies):
        shutil.copy(solutions / f"{exercise}.ipynb", subs / f"student{k:02d}_{exercise}.ipynb")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = grader.grade([subs], folder / "grades.csv", solutions_dir=solutions, jobs=jobs)
    seconds = time.perf_counter() - start
    short = [r.student for r in results if r.points != r.max_points]
    if short:
        raise SystemExit(f"{len(short)} copies did not score full marks ({short[:3]}...): see {folder}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exercise", default="01_evolution")
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--against", default=BEFORE_ISSUE_15, help="the baseline's git revision")
    ap.add_argument("--runs", type=int, default=2, help="alternating runs of each (the fastest counts)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-grade-") as tmp:
        tmp = Path(tmp)
        old = _export(args.against, tmp / "baseline")
        graders = {f"baseline ({args.against})": (_import_as(old / "cnnlib", "cnnlib_baseline"), old / "solutions"),
                   "this grader": (grade, ROOT / "solutions")}
        times = {name: [] for name in graders}
        for _ in range(args.runs):
            for name, (grader, solutions) in graders.items():
                times[name].append(grade_copies(grader, solutions, args.exercise, args.copies, args.jobs, tmp / "run"))
                print(f"  {name}: {times[name][-1]:.1f} s", flush=True)
    base, now = (min(t) for t in times.values())
    print(f"{args.exercise}, {args.copies} honest copies, {args.jobs} jobs (fastest of {args.runs}):")
    print(f"  baseline {base:.1f} s   this grader {now:.1f} s   ratio {now / base:.2f}×  (budget: ≤ 1.5×)")
    print(f"  per submission: baseline {base / args.copies:.2f} s, this grader {now / args.copies:.2f} s "
          f"(this grader's fixed cost per batch: the reference solution run once with the canaries)")


if __name__ == "__main__":
    main()
