"""`cnn-course lab`: the course's JupyterLab defaults and the command that starts JupyterLab."""
import json
import os
from pathlib import Path

import pytest

from cnnlib.course import cli, lab


def test_settings_are_installed_once_as_valid_overrides(tmp_path):
    path = lab.install_settings(tmp_path)
    assert path == tmp_path / "overrides.d" / "cnnlib.json"
    assert json.loads(path.read_text()) == lab.SETTINGS
    mtime = path.stat().st_mtime_ns
    assert lab.install_settings(tmp_path) == path and path.stat().st_mtime_ns == mtime
    path.write_text("{}")  # a stale or edited copy is put right
    lab.install_settings(tmp_path)
    assert json.loads(path.read_text()) == lab.SETTINGS


def test_the_setting_exists_in_this_jupyterlab():
    """A renamed plugin or setting would silently stop protecting the widgets."""
    from jupyterlab.commands import get_app_dir

    schemas = Path(get_app_dir()) / "schemas"
    for plugin, values in lab.SETTINGS.items():
        package, name = plugin.split(":")
        schema = json.loads((schemas / package / f"{name}.json").read_text())
        for key, value in values.items():
            allowed = [c["const"] for c in schema["properties"][key]["oneOf"]]
            assert value in allowed, f"{plugin}: {key}={value!r} is not one of {allowed}"


def test_command_opens_the_lectures_and_passes_arguments_on(tmp_path):
    cmd = lab.command(tmp_path, "--port=9999")
    assert cmd[1:3] == ["-m", "jupyterlab"] and f"--ServerApp.root_dir={tmp_path}" in cmd
    assert "--LabApp.default_url=/lab/tree/lectures" in cmd and cmd[-1] == "--port=9999"
    assert ("--allow-root" in cmd) == (os.geteuid() == 0)


def test_cnn_course_lab_installs_the_settings_then_starts_jupyterlab(monkeypatch, tmp_path):
    started = {}
    monkeypatch.setattr(lab, "settings_dir", lambda: tmp_path / "settings")
    monkeypatch.setattr(os, "execv", lambda exe, argv: started.update(exe=exe, argv=argv))
    cli.main(["lab", "--no-browser"])
    assert (tmp_path / "settings" / "overrides.d" / "cnnlib.json").exists()
    assert started["argv"][-1] == "--no-browser" and started["exe"] == started["argv"][0]
    assert any(a.startswith("--ServerApp.root_dir=") for a in started["argv"])
