"""Prepare ``.gpu/`` for the device machine, which has PyTorch but no internet and no Jupyter:
the wheels ``bench/gpu_check.py`` needs there (nbclient, ipykernel, ipywidgets and what they
pull in, for its Python 3.12, without the packages its image already holds) and Fashion-MNIST
in torchvision's layout. ``.gpu/`` is git-ignored; it travels with ``carry: [".gpu"]``.

    python bench/gpu_wheels.py        # once, here (needs PyPI and Debian's dataset-fashion-mnist)

then, on the device machine, from the repository root:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl \\
      && PYTHONPATH=/tmp/site:$PWD CNNLIB_DATA=$PWD/.gpu/data python3 bench/gpu_check.py
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / ".gpu"
WANTED = ["nbclient", "nbformat", "ipykernel", "ipywidgets", "ipympl"]
# In the device image already (the device README's package list): never carry a second copy.
PRESENT = {"numpy", "scipy", "matplotlib", "pillow", "torch", "torchvision", "tqdm", "jinja2",
           "markupsafe", "pyyaml", "packaging", "attrs", "pygments", "psutil", "six",
           "python-dateutil", "typing-extensions", "contourpy", "cycler", "fonttools",
           "kiwisolver", "pyparsing", "scikit-learn", "scikit-image", "joblib", "threadpoolctl",
           "filelock", "fsspec", "networkx", "sympy", "mpmath", "setuptools", "pip", "wheel",
           "idna", "certifi", "urllib3", "requests", "charset-normalizer", "imageio", "tifffile",
           "lazy-loader", "triton"}
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)] + \
    ["manylinux2014_x86_64", "manylinux1_x86_64"]


def _name(wheel: Path) -> str:
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def main() -> int:
    whl = GPU / "whl"
    shutil.rmtree(whl, ignore_errors=True)
    whl.mkdir(parents=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms,
                    "--platform", "any", "-d", str(whl), *WANTED], check=True)
    for wheel in sorted(whl.glob("*.whl")):
        if _name(wheel) in PRESENT:
            wheel.unlink()
    raw = GPU / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    from cnnlib.data import DEBIAN_FASHION_MNIST

    for f in DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"):
        shutil.copy(f, raw / f.name)
    exclude = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=ROOT,
                                  capture_output=True, text=True, check=True).stdout.strip())
    exclude = exclude if exclude.is_absolute() else ROOT / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.gpu/" not in (exclude.read_text() if exclude.exists() else ""):
        with open(exclude, "a") as f:  # untracked but not ignored: it must travel to the device
            f.write("/.gpu/\n")
    size = sum(p.stat().st_size for p in GPU.rglob("*") if p.is_file()) / 2 ** 20
    print(f"{len(list(whl.glob('*.whl')))} wheels and {len(list(raw.glob('*.gz')))} Fashion-MNIST "
          f"files in {GPU} ({size:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
