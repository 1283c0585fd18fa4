"""The prepared GPU check (``make gpu-check``): what the full profile costs on one GPU, and
whether its CUDA paths work, in about 8 minutes.

Three parts, each printed as a table and all written to ``artifacts/gpu-check.md``:

1. **Training throughput.** Images per second of ``cnnlib.fit``'s training loop (on CUDA: bf16
   autocast + channels-last, its defaults) for ResNet-20 and ResNet-56 at batch 128 and 512,
   against a plain float32 PyTorch loop (same model, data and optimizer; no autocast, default
   memory layout) timed in the same process. Steady state: the first epoch (cuDNN's autotuning)
   is not counted.
2. **Surface evaluation.** One filter-normalized 2D plane of ResNet-20 on 1,000 images:
   ``landscape.surface`` with ``strategy="vmap"`` (a chunk of grid points per forward) and
   ``"loop"`` (one point at a time), and the reference-style loop of Li et al.'s code (a
   ``Dataset`` of PIL images and a ``DataLoader`` per point, ``bench/landscape.py``), with the
   largest relative difference of the loss surfaces (target: vmap ≥ 5× the loop, same values).
3. **Lectures.** Each lecture in the full profile on ``--dataset`` (Fashion-MNIST by default: real
   data at full size, where CIFAR-10 cannot be downloaded), run headlessly with its knobs that
   only cost time shrunk (epochs → 1, grids → 5 points, trials → 1; data and model sizes kept).
   Every ``fit`` is timed; the table gives the lecture's wall time, its training time per epoch
   and an extrapolation to the full profile: each training run × the full cfg's ``epochs`` (an
   estimate: some runs use their own epoch keys), plus the rest of the lecture as measured
   (a lower bound: its grids were shrunk too).

    python bench/gpu_check.py                  # on a GPU: all three parts (≈ 8 min on one H200)
    python bench/gpu_check.py --parts lectures --lectures 03 08
    python bench/gpu_check.py --tiny           # any machine, ≈ 1 min: the same code paths, tiny sizes

``--tiny`` (run by ``make test``) shrinks everything — ResNet-8, a 3×3 grid on 64 images, Lecture
01 in the quick profile — so the script cannot rot on machines without a GPU; its numbers mean
nothing. On the device machine (no internet, no nbclient), carry the wheels and Fashion-MNIST
as ``make gpu-wheels`` prepares them (see the Makefile).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it (the device machine)

import cnnlib  # noqa: E402
from cnnlib import landscape as L  # noqa: E402
from cnnlib import models  # noqa: E402
from cnnlib.course import run  # noqa: E402
from cnnlib.report import Table  # noqa: E402
from cnnlib.train import _param_groups, lr_at  # noqa: E402

OUT = ROOT / "artifacts" / "gpu-check.md"

# cfg keys that only set how long a lecture runs (data and model sizes stay as in the full profile)
TIME_KNOBS = dict(epochs=1, bn_epochs=1, darts_epochs=1, retrain_epochs=1, trials=1,
                  reorder_trials=1, resolution=5, grid=5, points=5, line_points=5,
                  curvature_directions=2, budget=3, population=2, sample=2, seeds=(0,), cycles=1,
                  steps=3, interpolate=2)

# logs every fit of the lecture (seconds of training, epochs, images) to $CNNLIB_FIT_LOG
FIT_LOG_CELL = """# inserted by bench/gpu_check.py: time every training run
import json as _json, os as _os, sys as _sys
import cnnlib.train as _train
_fit = _train.fit
def _timed_fit(model, data, **kwargs):
    history = _fit(model, data, **kwargs)
    with open(_os.environ["CNNLIB_FIT_LOG"], "a") as _f:
        _f.write(_json.dumps({"desc": kwargs.get("desc"), "epochs": len(history.epoch),
                              "seconds": history.final["time"], "images": len(data.x_train)}) + "\\n")
    return history
for _m in list(_sys.modules.values()):  # every module that imported fit by name
    if getattr(_m, "fit", None) is _fit:
        _m.fit = _timed_fit
"""


def _load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------- 1. throughput

def _random_data(n: int, side: int, channels: int, device: torch.device) -> cnnlib.ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, side, side, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return cnnlib.ImageData("random", x, y, x[:256], y[:256], tuple(map(str, range(10))),
                            (0.0,) * channels, (1.0,) * channels, True, 4).to(device)


def _plain_fp32_images_per_second(net, data, batch: int, epochs: int) -> float:
    """The textbook loop on tensors already on the device: float32, default memory layout, the
    same optimizer and schedule as ``fit``; the last epoch timed."""
    opt = torch.optim.SGD(_param_groups(net, 5e-4), lr=0.05, momentum=0.9, nesterov=True)
    steps = len(data.x_train) // batch
    total, step = epochs * steps, 0
    net.train()
    for _ in range(epochs):
        _sync(data.device)
        start = time.perf_counter()
        for i in range(steps):
            xb, yb = data.x_train[i * batch:(i + 1) * batch], data.y_train[i * batch:(i + 1) * batch]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, 0.05)
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        _sync(data.device)
        seconds = time.perf_counter() - start
    return steps * batch / seconds


def _fit_images_per_second(net, data, batch: int, epochs: int) -> float:
    """``cnnlib.fit`` with its device defaults; the last epoch's training time (no evaluation)."""
    history = cnnlib.fit(net, data, epochs=epochs, lr=0.05, batch_size=batch, progress=False,
                         cache=False, augment_data=False)
    times = [0.0] + list(history.time)
    return (len(data.x_train) // batch) * batch / (times[-1] - times[-2])


def throughput(device: torch.device, depths, batches, steps: int, side: int, width: int) -> Table:
    rows = []
    for depth in depths:
        for batch in batches:
            data = _random_data(steps * batch, side, 3, device)
            make = lambda: (torch.manual_seed(0),  # noqa: E731
                            models.create("resnet_cifar", depth=depth, width=width,
                                          in_channels=3).to(device))[1]
            ours = _fit_images_per_second(make(), data, batch, epochs=2)
            plain = _plain_fp32_images_per_second(make(), data, batch, epochs=2)
            rows.append((f"ResNet-{depth}", batch, f"{ours:,.0f}", f"{plain:,.0f}", f"{ours / plain:.2f}×"))
            print(f"  ResNet-{depth} batch {batch}: fit {ours:,.0f} img/s, plain fp32 {plain:,.0f} img/s",
                  flush=True)
    amp = "bf16 autocast + channels-last" if device.type == "cuda" else "float32 + channels-last"
    return Table(["network", "batch", f"cnnlib.fit ({amp}) images/s", "plain fp32 loop images/s",
                  "ratio"], rows, title=f"Training throughput on {_device_name(device)}, "
                                        f"{side}×{side}×3 inputs, width {width}")


# ----------------------------------------------------------------------- 2. surfaces

def surfaces(device: torch.device, images: int, grid: int, depth: int, width: int) -> Table:
    bench = _load_bench("landscape")
    g = np.random.default_rng(0)
    pixels = g.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    targets = g.integers(0, 10, images).tolist()
    dataset = bench.ImageFolderLike(pixels, targets, bench.CIFAR_MEAN, bench.CIFAR_STD)
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=False)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))]).to(device)
    y = torch.tensor(targets, device=device)
    torch.manual_seed(0)
    net = models.create("resnet_cifar", depth=depth, width=width, in_channels=3).to(device).eval()
    L.recompute_bn(net, x)  # an untrained network: statistics of its own evaluation set
    d1, d2 = L.random_direction(net, seed=1), L.random_direction(net, seed=2)
    axis = L.grid(1.0, grid)
    timed = {}
    for name, compute in (
            ("vmap", lambda: L.surface(net, (x, y), [d1, d2], axis, axis, strategy="vmap",
                                       progress=False).loss),
            ("loop", lambda: L.surface(net, (x, y), [d1, d2], axis, axis, strategy="loop",
                                       progress=False).loss),
            ("reference", lambda: bench.reference_surface(net, loader, (d1, d2), axis, axis,
                                                          device)[0])):
        compute() if name == "vmap" else None  # warm-up: vmap's first call traces the model
        _sync(device)
        start = time.perf_counter()
        loss = compute()
        _sync(device)
        timed[name] = (time.perf_counter() - start, loss)
        print(f"  {name}: {timed[name][0]:.2f} s", flush=True)
    vmap_s, vmap_loss = timed["vmap"]
    rows = [(name, f"{s:.2f}", f"{s / vmap_s:.1f}×", f"{bench.rel_diff(loss, vmap_loss):.1e}")
            for name, (s, loss) in timed.items()]
    return Table(["evaluation", "seconds", "time / vmap's", "max relative difference to vmap"], rows,
                 title=f"A {grid}×{grid} loss surface of ResNet-{depth} (width {width}) on {images} "
                       f"images, {_device_name(device)}")


# ----------------------------------------------------------------------- 3. lectures

def _epochs(nb, profile: str) -> int | None:
    """The ``epochs`` of the ``profile`` branch of the lecture's ``P.choose`` (None if none)."""
    import ast

    for cell in nb.cells:
        if cell.cell_type == "code" and "P.choose(" in cell.source:
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.keyword) and node.arg == profile and isinstance(node.value, ast.Call):
                    for kw in node.value.keywords:
                        if kw.arg == "epochs" and isinstance(kw.value, ast.Constant):
                            return kw.value.value
    return None


def lectures(numbers, profile: str, dataset: str | None, knobs: dict, timeout: float,
             work: Path) -> Table:
    import nbformat

    dry_run = _load_bench("full_profile_dry_run")
    rows = []
    for path in run.lecture_paths(ROOT / "lectures", numbers):
        epochs = _epochs(nbformat.read(path, as_version=4), profile)
        shrunk = dry_run.shrunk_copy(path, knobs, "gpu check", FIT_LOG_CELL, work)
        log = work / f"{path.stem}.fits.jsonl"
        env = {"CNNLIB_PROFILE": profile, "CNNLIB_FIT_LOG": str(log),
               **({"CNNLIB_DATASET": dataset} if dataset else {})}
        start = time.perf_counter()
        try:
            run.execute(shrunk, env=env, timeout=timeout)
            status = "ran"
        except run.LectureError as err:
            status = f"FAILED: {err}"
        wall = time.perf_counter() - start
        fits = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        train_s = sum(f["seconds"] for f in fits)
        per_epoch = sum(f["seconds"] / f["epochs"] for f in fits)
        full = (wall - train_s + per_epoch * epochs) if epochs else None
        rows.append((path.stem, status, f"{wall:.0f}", len(fits), f"{per_epoch:.1f}",
                     epochs or "—", f"{full / 60:.0f} min" if full else "—"))
        print(f"  {path.stem}: {status} in {wall:.0f} s, {len(fits)} training runs, "
              f"{per_epoch:.1f} s per epoch of all of them", flush=True)
    return Table(["lecture", "status", "shrunk run (s)", "training runs", "s per epoch (all runs)",
                  f"{profile}-profile epochs", f"{profile} profile ≈"], rows,
                 title=f"Lectures in the {profile} profile on {dataset or 'its own dataset'}, "
                       f"time knobs shrunk, {_device_name(torch.device(cnnlib.profile.default_device()))}")


def _markdown(table: Table) -> str:
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = [f"**{table.title}** ({table.note})", "", "| " + " | ".join(map(cell, table.columns)) + " |",
             "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in table.rows])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on any device (for tests)")
    parser.add_argument("--parts", nargs="*", default=["throughput", "surfaces", "lectures"],
                        choices=["throughput", "surfaces", "lectures"])
    parser.add_argument("--lectures", nargs="*", default=[], help="numbers, e.g. 03 08 (default: all)")
    parser.add_argument("--dataset", default="fashion-mnist",
                        help="the lectures' dataset in the full profile (default: fashion-mnist)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    device = cnnlib.profile.default_device()
    cnnlib.setup(profile="quick" if args.tiny else "full", device=device, verbose=False)
    if args.tiny:
        sizes = dict(throughput=dict(depths=(8,), batches=(32,), steps=4, side=16, width=4),
                     surfaces=dict(images=64, grid=3, depth=8, width=4),
                     lectures=dict(numbers=args.lectures or ["01"], profile="quick", dataset=None,
                                   knobs=dict(TIME_KNOBS, train=64, val=64), timeout=300))
    else:
        sizes = dict(throughput=dict(depths=(20, 56), batches=(128, 512), steps=40, side=32, width=16),
                     surfaces=dict(images=1000, grid=11, depth=20, width=16),
                     lectures=dict(numbers=args.lectures, profile="full", dataset=args.dataset,
                                   knobs=TIME_KNOBS, timeout=600))
    print(f"gpu check on {_device_name(device)}, torch {torch.__version__}"
          + (" (tiny: the numbers mean nothing)" if args.tiny else ""), flush=True)
    tables, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnnlib-gpu-check-") as work:
        saved = os.environ.get("CNNLIB_CACHE")
        os.environ["CNNLIB_CACHE"] = str(Path(work) / "cache")  # cold: what a first run costs
        try:
            for part in args.parts:
                print(f"\n{part}:", flush=True)
                part_start = time.perf_counter()
                if part == "throughput":
                    table = throughput(device, **sizes["throughput"])
                elif part == "surfaces":
                    table = surfaces(device, **sizes["surfaces"])
                else:
                    table = lectures(work=Path(work), **sizes["lectures"])
                table.note = f"{time.perf_counter() - part_start:.0f} s"
                tables.append(table)
        finally:
            if saved is None:
                os.environ.pop("CNNLIB_CACHE", None)
            else:
                os.environ["CNNLIB_CACHE"] = saved
    report = "\n\n".join(_markdown(t) for t in tables)
    report += f"\n\nTotal {time.perf_counter() - start:.0f} s, torch {torch.__version__}.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# GPU check\n\n{report}", encoding="utf-8")
    print("\n" + report + f"\nwritten to {args.out}")
    failed = any(str(row[1]).startswith("FAILED") for t in tables if t.columns[0] == "lecture"
                 for row in t.rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
