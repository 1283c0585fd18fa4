"""JupyterLab in a real browser: the course as a student meets it.

Each test starts JupyterLab on a free loopback port (private config, data, runtime, settings and
workspace folders; a token), opens a copy of a lecture in headless Chromium driven by Playwright,
runs every cell through the UI's *Run → Run All Cells* menu in the quick profile, and checks what a
student would see: no cell raised an error, every widget rendered (not "Error displaying widget",
not a plain-text fallback), and moving a control redraws the figure beneath it. Screenshots go to
``artifacts/browser/``. The server and the kernels it started are shut down, pass or fail.

Needs Debian's ``chromium`` (``/usr/bin/chromium``, or ``CNNLIB_CHROMIUM``) and the ``playwright``
package (a ``[dev]`` dependency; no browser download: Playwright drives the system Chromium).
Where Chromium is missing the fixture installs it with ``apt-get`` when it can (root on Debian, as
in CI); otherwise the tests are skipped with the command that installs it. Run them alone with
``make test-browser`` (``pytest -m browser``).
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from cnnlib.course import lab as course_lab

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = Path(os.environ.get("CNNLIB_CHROMIUM", "/usr/bin/chromium"))
WIDGET_MANAGER = "@jupyter-widgets/jupyterlab-manager"
# Chromium on a machine without internet: no background connections, no first-run chores.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
RUN_ALL_TIMEOUT = 240  # seconds for one lecture, all cells (well under 90 s in the quick profile)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


class NotebookProblem(AssertionError):
    """What a student would see go wrong in the UI: an error in a cell, a widget that did not
    render, a control that redraws nothing."""


# ------------------------------------------------------------------------------------ Chromium

def _ensure_chromium() -> Path:
    """The Chromium binary, installed from Debian's packages if missing and installable here."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.skip(f"the browser tests need Chromium at {CHROMIUM}: install it "
                    f"(Debian/Ubuntu: `sudo apt-get install chromium`) or set CNNLIB_CHROMIUM")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode:
            pytest.fail(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stdout[-2000:]}"
                        f"{done.stderr[-2000:]}", pytrace=False)
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium, but {CHROMIUM} does not exist", pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="module")  # closed with the module: Playwright's sync API keeps an
def browser():                   # event loop running, and later tests call asyncio.run()
    chromium = _ensure_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - a [dev] dependency
        pytest.fail("the browser tests need the `playwright` package: pip install -e '.[dev]'",
                    pytrace=False)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# ----------------------------------------------------------------------------------- JupyterLab

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


class Lab:
    """A running JupyterLab server on ``root`` (see ``jupyterlab``)."""

    def __init__(self, root: Path, port: int, token: str, process: subprocess.Popen, log: Path):
        self.root, self.port, self.token, self.process, self.log = root, port, token, process, log
        self.url = f"http://127.0.0.1:{port}"

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@contextmanager
def jupyterlab(root: Path, home: Path, disabled_extensions=()):
    """Start JupyterLab on ``root`` with every Jupyter folder private to ``home``; stop it, its
    kernels and anything else it started on exit, whatever happened in between."""
    import psutil

    port, token = _free_port(), uuid.uuid4().hex
    dirs = {name: home / name for name in ("config", "data", "runtime", "settings", "workspaces",
                                           "ipython")}
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]),
               JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
               JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]), IPYTHONDIR=str(dirs["ipython"]),
               CNNLIB_PROFILE="quick")
    env.pop("MPLBACKEND", None)  # kernels use the inline backend, as for a student
    settings = dirs["settings"]
    # every cell in the page (no virtual scrolling), no news or update checks over the network
    _write_json(settings / "@jupyterlab/notebook-extension/tracker.jupyterlab-settings",
                {"windowingMode": "none"})
    _write_json(settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
                {"fetchNews": "false", "checkForUpdates": False})
    if disabled_extensions:
        _write_json(dirs["config"] / "labconfig" / "page_config.json",
                    {"disabledExtensions": {name: True for name in disabled_extensions}})
    log = home / "jupyterlab.log"
    # started the way `cnn-course lab` (make lab) starts it, with the course's settings
    course_lab.install_settings()
    cmd = course_lab.command(root, "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                             f"--IdentityProvider.token={token}", "--LabApp.news_url=",
                             "--ServerApp.terminals_enabled=False", open_on=None)
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    lab = Lab(root, port, token, process, log)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{lab.log_tail()}")
            try:
                lab.api("status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer on port {port}:\n{lab.log_tail()}")
                time.sleep(0.5)
        lab.remember = lambda: seen.update(p.pid for p in _tree(psutil, process.pid))
        yield lab
    finally:
        _stop(psutil, lab, seen)


def _tree(psutil, pid: int):
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop(psutil, lab: Lab, seen: set[int]) -> None:
    """Shut the server down politely (it stops its kernels), then make sure: every process it
    started — kernels run in their own process groups — is gone afterwards."""
    seen.update(p.pid for p in _tree(psutil, lab.process.pid))
    if lab.process.poll() is None:
        try:
            lab.api("shutdown", method="POST")
            lab.process.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(lab.process.pid, signal.SIGTERM)
            try:
                lab.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(lab.process.pid, signal.SIGKILL)
                lab.process.wait()
    survivors = []
    for pid in seen:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                survivors.append(proc)
        except psutil.NoSuchProcess:
            pass
    for proc in survivors:
        proc.kill()
    psutil.wait_procs(survivors, timeout=10)
    leftover = [p.pid for p in survivors if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftover, f"processes left behind by JupyterLab: {leftover}"


# ------------------------------------------------------------------------------ in the page

def kernel_status(page) -> str:
    """The kernel's state as the status bar shows it ("Python 3 (ipykernel) | Idle" → "Idle")."""
    m = re.search(r"\|\s*(\w+)", page.locator(".jp-StatusBar-Widget").first.inner_text())
    return m.group(1) if m else ""


def wait_for_idle_kernel(page, timeout: float, shots: Path, what: str) -> None:
    deadline = time.monotonic() + timeout
    while kernel_status(page) != "Idle":
        if time.monotonic() > deadline:
            page.screenshot(path=str(shots / "no-kernel.png"))
            raise NotebookProblem(f"{what}: the kernel is {kernel_status(page) or 'missing'!r}, "
                                  f"not idle, after {timeout:.0f} s")
        time.sleep(0.5)


@contextmanager
def notebook_page(browser, lab: Lab, name: str, shots: Path):
    """A page with ``name`` open in its own JupyterLab workspace (no tabs restored from another
    test) and its kernel started and idle; on exit the page is closed and its kernel shut down."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{lab.url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={lab.token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
        wait_for_idle_kernel(page, 90, shots, name)
        page.screenshot(path=str(shots / "opened.png"))
        yield page
    finally:
        page.close()
        for session in lab.api("sessions"):
            lab.api(f"sessions/{session['id']}", method="DELETE")


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def run_all(page, lab: Lab, name: str, shots: Path) -> nbformat.NotebookNode:
    """Run every cell through the UI, wait until the kernel is done, save, and return the saved
    notebook. Raises ``NotebookProblem`` naming the first cell that failed or never ran."""
    _menu(page, "Run", "Run All Cells")
    prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt")
    deadline = time.monotonic() + RUN_ALL_TIMEOUT
    time.sleep(1)
    while any("*" in t for t in prompts.all_inner_texts()) or kernel_status(page) != "Idle":
        lab.remember()
        if time.monotonic() > deadline:
            page.screenshot(path=str(shots / "timeout.png"), full_page=True)
            raise NotebookProblem(f"{name}: cells still running after {RUN_ALL_TIMEOUT} s")
        time.sleep(1)
    page.wait_for_timeout(1000)  # let the last outputs and widget views render
    path = lab.root / name
    before = path.stat().st_mtime_ns
    page.locator(".jp-Notebook").first.click()
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while path.stat().st_mtime_ns == before and time.monotonic() < deadline:
        time.sleep(0.2)
    page.screenshot(path=str(shots / "ran.png"), full_page=True)
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for out in cell.outputs:
            if out.output_type == "error":
                raise NotebookProblem(f"{name}: code cell {i} raised {out.ename}: {out.evalue}")
        if cell.execution_count is None and cell.source.strip():
            raise NotebookProblem(f"{name}: code cell {i} never ran")
    return nb


def assert_widgets_render(page, name: str, expected: int) -> None:
    """At least ``expected`` widget views are live in the page, and none failed to render."""
    broken = page.locator("text=Error displaying widget")
    if broken.count():
        raise NotebookProblem(f"{name}: {broken.first.inner_text()!r} in the page")
    views = page.locator(".jp-OutputArea-output .jupyter-widgets")
    try:
        views.nth(expected - 1).wait_for(state="attached", timeout=20_000)
    except Exception:
        raise NotebookProblem(
            f"{name}: {views.count()} widget view(s) rendered where {expected} were expected — "
            f"widgets show as plain text when JupyterLab's widget manager ({WIDGET_MANAGER}) is "
            f"missing or disabled; check `jupyter labextension list`") from None


def image_src(scope) -> str:
    """The ``src`` of the first figure in ``scope``, once the browser has decoded it."""
    img = scope.locator("img").first
    img.wait_for(state="visible", timeout=60_000)
    deadline = time.monotonic() + 30
    while not img.evaluate("i => i.complete && i.naturalWidth > 0"):
        if time.monotonic() > deadline:
            raise NotebookProblem("a figure never finished loading in the page")
        time.sleep(0.2)
    return img.get_attribute("src")


def _save_image(src: str, path: Path) -> None:
    """Write an ``<img>``'s ``data:image/png;base64,...`` source to ``path``."""
    path.write_bytes(base64.b64decode(src.split(",", 1)[1]))


def _settle(page) -> None:
    """Let the browser finish painting (two animation frames and a moment) before a screenshot."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.wait_for_timeout(1000)


def assert_control_redraws(page, scope, change, name: str, shots: Path, label: str) -> None:
    """``change()`` a control inside ``scope``; the figure in ``scope`` must be replaced by a
    different one."""
    before = image_src(scope)
    scope.screenshot(path=str(shots / f"{label}-before.png"))
    change()
    deadline = time.monotonic() + 90
    while image_src(scope) == before:
        if time.monotonic() > deadline:
            scope.screenshot(path=str(shots / f"{label}-unchanged.png"))
            raise NotebookProblem(f"{name}: changing the {label} control did not redraw the figure")
        time.sleep(0.5)
    image_src(scope)  # the new figure is decoded, not just attached
    _settle(page)
    scope.screenshot(path=str(shots / f"{label}-after.png"))


def canvas_image(scope, timeout: float = 90) -> str:
    """The pixels (a data URL) of the first ipympl canvas in ``scope``, once it has drawn a
    figure and stopped changing."""
    canvas = scope.locator(".jupyter-matplotlib-canvas-div canvas").first
    canvas.wait_for(state="visible", timeout=timeout * 1000)
    blank = canvas.evaluate("c => { const e = document.createElement('canvas');"
                            " e.width = c.width; e.height = c.height; return e.toDataURL(); }")
    deadline, last = time.monotonic() + timeout, None
    while True:
        now = canvas.evaluate("c => c.toDataURL()")
        if now == last and now != blank:
            return now
        if time.monotonic() > deadline:
            raise NotebookProblem("the 3D view's canvas never settled on a drawn figure")
        last = now
        time.sleep(0.5)


def assert_drag_turns_the_3d_view(page, scope, name: str, shots: Path) -> None:
    """A left-button drag across the 3D view's canvas must turn the surface: the canvas shows
    a different picture afterwards."""
    before = canvas_image(scope)
    figure = scope.locator(".jupyter-matplotlib-canvas-div").first
    figure.scroll_into_view_if_needed()
    figure.screenshot(path=str(shots / "3d-before.png"))
    box = figure.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 90, y + 30, steps=10)
    page.mouse.up()
    deadline = time.monotonic() + 60
    while canvas_image(scope) == before:
        if time.monotonic() > deadline:
            figure.screenshot(path=str(shots / "3d-unchanged.png"))
            raise NotebookProblem(f"{name}: dragging the 3D view did not turn the surface")
        time.sleep(0.5)
    figure.screenshot(path=str(shots / "3d-after.png"))


# -------------------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def lectures_lab(tmp_path_factory):
    """JupyterLab on a copy of lectures/ (running them in the UI saves outputs into the copy)."""
    root = tmp_path_factory.mktemp("course")
    for path in sorted((ROOT / "lectures").glob("*.ipynb")):
        shutil.copy(path, root / path.name)
    with jupyterlab(root, tmp_path_factory.mktemp("jupyter")) as lab:
        yield lab


def _shots(name: str) -> Path:
    folder = ARTIFACTS / Path(name).stem
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@contextmanager
def lecture_ran(browser, lab: Lab, name: str, widgets: int):
    """A page where every cell of the lecture ``name`` ran without error and at least ``widgets``
    widget views rendered; yields ``(page, screenshot folder)``."""
    shots = _shots(name)
    with notebook_page(browser, lab, name, shots) as page:
        run_all(page, lab, name, shots)
        assert_widgets_render(page, name, expected=widgets)
        yield page, shots


def test_lecture_01_runs_in_jupyterlab(browser, lectures_lab):
    with lecture_ran(browser, lectures_lab, "01_evolution.ipynb", widgets=1):  # tqdm's bars are widgets
        pass


def test_lecture_05_phi_slider_redraws(browser, lectures_lab):
    name = "05_efficientnet.ipynb"
    with lecture_ran(browser, lectures_lab, name, widgets=2) as (page, shots):
        cell = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-slider")).first
        cell.scroll_into_view_if_needed()
        readout = cell.locator(".widget-readout").first

        def move_phi():
            readout.click()
            page.keyboard.press("Control+a")
            page.keyboard.type("3")
            page.keyboard.press("Enter")

        assert_control_redraws(page, cell, move_phi, name, shots, "phi")
        assert "φ = 3" in cell.inner_text()
        # The lecture draws the same view at φ = 3 in the next cell, without a widget: the
        # slider's figure must be that very picture, not a half-drawn one (see README: widgets).
        static = page.locator(".jp-CodeCell", has_text="show_compound_scaling(3.0)").first
        if image_src(cell) != image_src(static):
            for label, scope in (("phi3-widget", cell), ("phi3-static", static)):
                _save_image(image_src(scope), shots / f"{label}.png")
            raise NotebookProblem(f"{name}: at φ = 3 the slider's figure differs from the same "
                                  f"figure drawn without the widget (a figure drawn while "
                                  f"another thread used pyplot?)")


def test_lecture_09_landscape_explorer_responds(browser, lectures_lab):
    name = "09_loss_landscape.ipynb"
    with lecture_ran(browser, lectures_lab, name, widgets=2) as (page, shots):
        explorer = page.locator(".jp-OutputArea-output .widget-vbox").filter(
            has=page.locator(".widget-toggle-button", has_text="3D")).first
        explorer.scroll_into_view_if_needed()
        button = explorer.locator(".widget-toggle-button", has_text="1D").first
        assert_control_redraws(page, explorer, button.click, name, shots, "view")
        explorer.locator(".widget-toggle-button", has_text="3D").first.click()
        assert_drag_turns_the_3d_view(page, explorer, name, shots)


def test_a_missing_widget_extension_is_reported(browser, tmp_path):
    """The harness must catch the classic failure: JupyterLab without its widget manager."""
    root, name = tmp_path / "course", "widget.ipynb"
    root.mkdir()
    kernel = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import ipywidgets as w\nw.IntSlider(description='x')")], metadata={"kernelspec": kernel}),
        root / name)
    shots = _shots("missing_extension")
    with jupyterlab(root, tmp_path / "jupyter", disabled_extensions=[WIDGET_MANAGER]) as lab:
        with notebook_page(browser, lab, name, shots) as page:
            run_all(page, lab, name, shots)
            with pytest.raises(NotebookProblem, match="jupyterlab-manager"):
                assert_widgets_render(page, name, expected=1)
