"""The fidelity scoreboard: does the course reproduce what the papers found?

Runs lectures top to bottom in one profile and collects every row of their "paper vs. this run"
tables (each goes through ``cnnlib.report.scored``, which appends it to ``$CNNLIB_SCOREBOARD``).
Prints one table of all verdicts, the count per lecture (agrees / within noise / contradicts /
no result), each lecture's headline claim and wall time, and writes the same as
``artifacts/fidelity-<profile>.md`` (executed notebooks beside it).

    python bench/fidelity.py --profile medium                  # all ten lectures
    python bench/fidelity.py --profile quick --lectures 01 08  # two of them
    python bench/fidelity.py --profile medium --fresh-cache    # cold: time what a new machine sees

By default the lectures use the normal result cache (a rerun replays in seconds); with
``--fresh-cache`` they train everything again in an empty one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from cnnlib.course import run

ROOT = Path(__file__).resolve().parents[1]
LECTURES = ROOT / "lectures"
ARTIFACTS = ROOT / "artifacts"
OUTCOMES = ("agrees", "within noise", "contradicts", "no result")
BUDGET_S = {"quick": 90, "medium": 360}  # DESIGN.md: per lecture on 2 cores; full: one GPU


def lecture_paths(numbers: list[str]) -> list[Path]:
    """Lecture notebooks by number ("01") or stem ("01_evolution"); all of them if none given."""
    try:
        return run.lecture_paths(LECTURES, numbers)
    except run.LectureError as err:
        sys.exit(str(err))


def run_lecture(path: Path, board: Path, out: Path) -> tuple[float, str | None]:
    """Execute one lecture with its scoreboard file; (wall seconds, error or None)."""
    start = time.perf_counter()
    error = None
    try:
        nb = run.execute(path, env={"CNNLIB_SCOREBOARD": str(board)}, timeout=3600)
    except run.LectureError as err:
        nb, error = err.notebook, str(err)
    seconds = time.perf_counter() - start
    if nb is not None:
        nbformat.write(nb, out / path.name)
    return seconds, error


def markdown(profile: str, results: dict[str, dict]) -> str:
    """The report: all verdicts, then one line per lecture with its counts, headline and time."""
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = [f"# Fidelity scoreboard — profile `{profile}`", "",
             "| lecture | claim | paper | this run | verdict |", "|---|---|---|---|---|"]
    for lecture, r in results.items():
        for row in r["rows"]:
            claim = f"**{cell(row['claim'])}** (headline)" if row["headline"] else cell(row["claim"])
            lines.append(f"| {lecture} | {claim} | {cell(row['paper'])} | {cell(row['measured'])} | "
                         f"{cell(row['verdict'])} |")
    budget = BUDGET_S.get(profile)
    lines += ["", f"| lecture | time (s{f', budget {budget}' if budget else ''}) | "
              + " | ".join(OUTCOMES) + " | headline |", "|---|---|" + "---|" * len(OUTCOMES) + "---|"]
    for lecture, r in results.items():
        counts = [sum(row["outcome"] == o for row in r["rows"]) for o in OUTCOMES]
        head = [row for row in r["rows"] if row["headline"]]
        headline = "FAILED: " + r["error"] if r["error"] else (head[-1]["outcome"] if head else "none scored")
        over = " (over)" if budget and r["seconds"] > budget else ""
        lines.append(f"| {lecture} | {r['seconds']:.0f}{over} | " + " | ".join(map(str, counts))
                     + f" | {cell(headline)} |")
    agree = sum(any(row["headline"] and row["outcome"] == "agrees" for row in r["rows"])
                for r in results.values())
    lines += ["", f"Headline claims that agree with the paper beyond two standard errors: "
              f"**{agree} of {len(results)}** lectures."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=("quick", "medium", "full"),
                        default=os.environ.get("CNNLIB_PROFILE") or "medium")
    parser.add_argument("--lectures", nargs="*", default=[], help="numbers such as 01 03 (default: all)")
    parser.add_argument("--fresh-cache", action="store_true", help="train everything again in an empty cache")
    parser.add_argument("--out", type=Path, default=ARTIFACTS)
    args = parser.parse_args(argv)
    paths = lecture_paths(args.lectures)
    out = args.out / f"fidelity-{args.profile}"
    out.mkdir(parents=True, exist_ok=True)
    saved = os.environ.copy()  # kernels inherit the environment; give it back afterwards
    results = {}
    with tempfile.TemporaryDirectory(prefix="cnnlib-fidelity-") as tmp:
        os.environ["CNNLIB_PROFILE"] = args.profile
        if args.fresh_cache:
            os.environ["CNNLIB_CACHE"] = str(Path(tmp) / "cache")
        try:
            for path in paths:
                board = Path(tmp) / f"{path.stem}.jsonl"
                seconds, error = run_lecture(path, board, out)
                rows = [json.loads(line) for line in board.read_text(encoding="utf-8").splitlines()] \
                    if board.exists() else []
                results[path.stem] = dict(rows=rows, seconds=seconds, error=error)
                print(f"{path.stem:28s} {seconds:6.0f} s  {len(rows)} verdicts"
                      + (f"  FAILED: {error}" if error else ""), flush=True)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    report = markdown(args.profile, results)
    target = args.out / f"fidelity-{args.profile}.md"
    target.write_text(report, encoding="utf-8")
    print("\n" + report + f"\nwritten to {target} (executed notebooks in {out}/)")
    return 1 if any(r["error"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
