"""Dry run of every lecture in the *full* profile on this CPU, without CIFAR-10 or a GPU.

The test suite executes the lectures in the quick profile only, so the full-profile branch of
each `P.choose(quick=..., full=...)` — CIFAR-10 through torchvision, three-channel 32×32 input,
the papers' model sizes (ResNet-56/110, DenseNet-BC-100, …) — would otherwise first run on a
student's GPU. This script runs it here:

* it writes a fake CIFAR-10 (1,000 training and 200 test images of random colour noise whose
  mean colour depends on the label) in the real on-disk format, and points torchvision's
  integrity check at it;
* it runs each lecture with ``CNNLIB_PROFILE=full`` and, right after the cell that sets ``cfg``,
  shrinks the knobs that only cost time (epochs → 1, grid resolution → 5, trials → 1, …) while
  keeping the full profile's data, models and sizes;
* it fails if a cell raises or prints a warning.

The numbers it produces mean nothing (one epoch on noise); only "every cell ran" does.

    python bench/full_profile_dry_run.py                      # all lectures, ≈ 11 min on 2 cores
    python bench/full_profile_dry_run.py 08                   # one lecture (number or name)

Executed notebooks land in ``artifacts/full-profile-dry-run/``.
"""
from __future__ import annotations

import hashlib
import pickle
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np
from cnnlib.course import run

ROOT = Path(__file__).resolve().parents[1]
LECTURES = ROOT / "lectures"
OUT = ROOT / "artifacts" / "full-profile-dry-run"

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# cfg keys that only set how long an experiment runs, and the value the dry run uses
SHRINK = dict(epochs=1, bn_epochs=1, darts_epochs=1, retrain_epochs=1, trials=1, reorder_trials=1,
              grad_samples=2, resolution=5, grid=5, points=5, line_points=5,
              curvature_directions=2, budget=3, population=2, sample=2, seeds=(0,), train=200,
              val=100, eval_images=64, eval_train=64, bn_images=64, eval_size=64, cycles=1,
              steps=3, interpolate=2)

def shrink_cell(values: dict, label: str = "dry run") -> str:
    """A code cell that, run right after the cell setting ``cfg``, replaces every key of ``cfg``
    (nested dicts too) that ``values`` names by its value."""
    return f"""# inserted by a bench script: same data and models, fewer epochs and points
def _shrink(d, values={values!r}):
    for k, v in d.items():
        if isinstance(v, dict):
            _shrink(v)
        elif k in values:
            d[k] = values[k]
_shrink(cfg)
print("{label}, shrunk cfg:", cfg)
"""


def write_fake_cifar10(root: Path) -> dict[str, str]:
    """cifar-10-batches-py under ``root`` in torchvision's format; returns the files' md5 sums."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:  # 200 images each
        n = 200
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 128, (n, 3072)) + 12 * labels[:, None]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": "fake", "labels": labels.tolist(),
                         "data": images.astype(np.uint8), "filenames": ["fake.png"] * n}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES}, f)
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def trust_cell(md5: dict[str, str]) -> str:
    """A first cell that makes torchvision's integrity check accept the fake files."""
    return f"""# inserted by bench/full_profile_dry_run.py: accept the fake CIFAR-10's checksums
import torchvision
_md5 = {md5!r}
_cifar = torchvision.datasets.CIFAR10
_cifar.train_list = [[name, _md5[name]] for name, _ in _cifar.train_list]
_cifar.test_list = [[name, _md5[name]] for name, _ in _cifar.test_list]
_cifar.meta = dict(_cifar.meta, md5=_md5["batches.meta"])
"""


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """Warnings a cell printed on stderr (progress bars aside)."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                lines = [line for line in out["text"].splitlines()
                         if "Warning" in line and "%|" not in line]
                found += [f"cell {i}: {line.strip()}" for line in lines]
    return found


def main(names: list[str]) -> int:
    try:
        paths = run.lecture_paths(LECTURES, names)
    except run.LectureError as err:
        sys.exit(str(err))
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cnnlib-dry-run-") as tmp:
        tmp = Path(tmp)
        md5 = write_fake_cifar10(tmp / "data")
        env = dict(CNNLIB_PROFILE="full", CNNLIB_DATA=str(tmp / "data"), CNNLIB_OFFLINE="1",
                   CNNLIB_CACHE=str(tmp / "cache"))
        failed = _run(paths, md5, env, tmp)
    print(f"{len(paths) - failed}/{len(paths)} lectures ran in the full profile; "
          f"executed notebooks in {OUT.relative_to(ROOT)}/")
    return 1 if failed else 0


def shrunk_copy(path: Path, knobs: dict, label: str, first_cell: str, work: Path) -> Path:
    """A copy of the lecture ``path`` in ``work``: ``shrink_cell(knobs, label)`` right after the
    cell that sets ``cfg``, and ``first_cell`` before everything (the dry run's and the GPU
    check's way of running a lecture at its full sizes, but short)."""
    nb = nbformat.read(path, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "P.choose(" in c.source)
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(shrink_cell(knobs, label)))
    nb.cells.insert(0, nbformat.v4.new_code_cell(first_cell))
    nbformat.write(nb, work / path.name)
    return work / path.name


def _run(paths: list[Path], md5: dict[str, str], env: dict[str, str], work: Path) -> int:
    """Run each lecture, shrunk, with ``env`` in its kernel (``cnnlib.course.run.execute``);
    the number that failed."""
    failed = 0
    for path in paths:
        shrunk = shrunk_copy(path, SHRINK, "dry run", trust_cell(md5), work)
        nb = nbformat.read(shrunk, as_version=4)
        start = time.perf_counter()
        try:
            nb = run.execute(shrunk, env=env, timeout=1800)
            trouble = problems(nb)
        except run.LectureError as err:  # names the cell and its exception
            nb, trouble = err.notebook or nb, [str(err)]
        nbformat.write(nb, OUT / path.name)
        verdict = "ok" if not trouble else "FAILED"
        print(f"{path.stem:28s} {time.perf_counter() - start:6.0f} s  {verdict}", flush=True)
        for line in trouble:
            print(f"    {line}")
        failed += bool(trouble)
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
