"""Starting JupyterLab for the course: ``cnn-course lab`` (what ``make lab`` runs).

One setting matters for the lectures' widgets. JupyterLab ≥ 4.4 sends widget messages to kernel
*subshells* by default, and ipykernel ≥ 7 handles those on a thread of their own, which fires
the inline backend's ``flush_figures`` while a slider callback on the main thread is still
drawing. pyplot is not thread-safe: the figure under a slider then comes out half-drawn — no
axes, part of the data, no error (jupyterlab/jupyterlab#19719, ipython/ipykernel#1564). Turning
``commsOverSubshells`` off removes the second thread. The course installs that default into the
environment's JupyterLab app settings (``overrides.d/cnnlib.json``, the folder meant for
packages' defaults), so it applies to every lab started from this environment and a student
can still change it under Settings. ``tests/test_browser.py`` catches the half-drawn figure.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

SETTINGS = {"@jupyterlab/apputils-extension:kernels-settings": {"commsOverSubshells": "disabled"}}
OVERRIDES_FILE = "cnnlib.json"


def settings_dir() -> Path:
    """JupyterLab's app settings folder of this environment (``{app_dir}/settings``)."""
    from jupyterlab.commands import get_app_dir

    return Path(get_app_dir()) / "settings"


def install_settings(folder: Path | None = None) -> Path:
    """Write the course's JupyterLab defaults to ``folder/overrides.d/cnnlib.json`` (default:
    this environment's app settings); return the file. Rewritten only when it differs."""
    path = (folder or settings_dir()) / "overrides.d" / OVERRIDES_FILE
    text = json.dumps(SETTINGS, indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def command(root: Path, *jupyter_args: str, open_on: str | None = "lectures") -> list[str]:
    """The command line that starts JupyterLab on ``root`` (file browser on ``open_on``)."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}"]
    if open_on:
        cmd.append(f"--LabApp.default_url=/lab/tree/{open_on}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI, containers: Jupyter refuses root otherwise
        cmd.append("--allow-root")
    return cmd + list(jupyter_args)


def main(root: Path, jupyter_args: list[str]) -> NoReturn:
    """Install the settings, then replace this process by JupyterLab."""
    print(f"cnn-course: JupyterLab defaults in {install_settings()}", flush=True)
    cmd = command(root, *jupyter_args)
    os.execv(cmd[0], cmd)
