"""Benchmark: grading a class, ``cnn-course grade`` on N copies of a solution notebook.

The baseline is the same grader on one copy, in the same process; N copies one after another
would take about N times as long, so the printed ratio is the speed-up from grading several
submissions at once (at most the number of jobs). Every copy must score full marks, otherwise
the timing means nothing and the script says so.

    python bench/grade.py                         # 20 copies of solutions/01_evolution.ipynb
    python bench/grade.py --copies 40 --jobs 4 --exercise 01_evolution
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from cnnlib.course import grade

ROOT = Path(__file__).resolve().parents[1]


def grade_copies(solution: Path, copies: int, jobs: int, folder: Path) -> float:
    subs = folder / f"{copies}-copies"
    subs.mkdir()
    for k in range(copies):
        shutil.copy(solution, subs / f"student{k:02d}_{solution.name}")
    start = time.perf_counter()
    results = grade.grade([subs], folder / f"grades-{copies}.csv", solutions_dir=solution.parent, jobs=jobs)
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
    args = ap.parse_args()
    solution = ROOT / "solutions" / f"{args.exercise}.ipynb"
    with tempfile.TemporaryDirectory(prefix="bench-grade-") as tmp:
        one = grade_copies(solution, 1, 1, Path(tmp))
        many = grade_copies(solution, args.copies, args.jobs, Path(tmp))
    print(f"{args.exercise}: 1 copy {one:.1f} s; {args.copies} copies with {args.jobs} jobs {many:.1f} s "
          f"({many / args.copies:.1f} s per submission)")
    print(f"speed-up over one at a time (≈ {args.copies} × 1 copy = {args.copies * one:.0f} s): "
          f"{args.copies * one / many:.2f}×  (at most {args.jobs}×)")


if __name__ == "__main__":
    main()
