"""The landscape explorer: its controls are wired to the tested functions (kernel side)."""
import re

import ipywidgets
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from cnnlib import landscape, models
from cnnlib.widgets import LandscapeExplorer


@pytest.fixture(scope="module")
def explorer():
    torch.manual_seed(0)
    nets = {"short": models.create("resnet_cifar", depth=8, width=4, in_channels=1).eval(),
            "no-short": models.create("resnet_cifar", depth=8, width=4, in_channels=1,
                                      plain=True).eval()}
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(24, 1, 8, 8, generator=g), torch.randint(0, 10, (24,), generator=g))
    ex = LandscapeExplorer(nets, data, resolution=5)
    yield ex
    plt.close("all")


def test_explorer_is_controls_above_an_output_and_draws_at_once(explorer):
    assert isinstance(explorer.widget, ipywidgets.VBox)
    assert isinstance(explorer.output, ipywidgets.Output)
    assert explorer.widget.children[-1] is explorer.output
    assert set(explorer.controls) == {"model", "span", "resolution", "norm", "view", "log"}
    assert explorer.draws == 1 and explorer.surface.loss.shape == (5, 5)
    assert explorer.figure is not None


def test_changing_a_control_recomputes_and_redraws(explorer):
    c = explorer.controls
    before, figure = explorer.draws, explorer.figure
    c["resolution"].value = 7
    assert explorer.draws == before + 1 and explorer.figure is not figure
    assert explorer.surface.loss.shape == (7, 7)
    c["view"].value = "1D"
    assert explorer.surface.ndim == 1 and len(explorer.surface.alphas) == 7
    assert explorer.figure.axes[0].get_xlabel() == "α"
    c["view"].value = "3D"
    assert explorer.figure.axes[0].name == "3d"
    c["span"].value = 0.5
    assert explorer.surface.alphas.max() == pytest.approx(0.5)
    c["model"].value = "no-short"
    assert explorer.surface.meta["label"] == "no-short"
    c["norm"].value = "none"
    assert explorer.surface.meta["norm"] == "none"
    assert explorer.draws == before + 6


def test_explorer_shows_the_same_surface_as_the_library(explorer):
    c = explorer.controls
    c["model"].value, c["norm"].value, c["span"].value = "short", "filter", 1.0
    c["view"].value, c["resolution"].value = "2D", 5
    direct = landscape.random_surface(explorer.models["short"], explorer.data, span=1.0,
                                      resolution=5, norm="filter", seed=explorer.seed)
    np.testing.assert_allclose(explorer.surface.loss, direct.loss, rtol=1e-6)


def test_revisiting_a_setting_reads_the_cache(explorer, monkeypatch):
    c = explorer.controls
    c["resolution"].value = 9
    first = explorer.surface
    c["resolution"].value = 5

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a surface that was in the cache")

    monkeypatch.setattr(landscape, "evaluate_points", fail)
    c["resolution"].value = 9
    np.testing.assert_array_equal(explorer.surface.loss, first.loss)


def test_a_new_setting_prints_its_cost_first_and_a_cached_one_prints_nothing(
        explorer, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLIB_CACHE", str(tmp_path))  # an empty cache: nothing seen yet

    def printed():  # outside a kernel, clear_output writes a terminal "erase line" code
        return capsys.readouterr().out.replace("\x1b[2K\r", "")

    c = explorer.controls
    c["view"].value, c["resolution"].value = "2D", 5
    capsys.readouterr()
    c["resolution"].value = 7
    out = printed()
    assert "49 points × 24 images" in out and "GFLOP" in out
    assert re.search(r"≈ \d+\.\d s", out), out
    c["resolution"].value = 5
    capsys.readouterr()
    c["resolution"].value = 7  # seen: drawn from the cache, without a word
    assert printed() == ""
    assert explorer.surface.loss.shape == (7, 7)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="view"):
        LandscapeExplorer({"m": torch.nn.Linear(2, 2)}, (torch.zeros(2, 2), torch.zeros(2).long()),
                          view="4D")
    with pytest.raises(ValueError, match="at least one model"):
        LandscapeExplorer({}, None)


def test_in_a_real_kernel_a_control_change_replaces_the_image_in_the_output():
    """Run the explorer in an IPython kernel (as JupyterLab does) and check what its Output
    widget holds before and after a control changes: one PNG each time, a different one, and
    above it the cost of the new setting, printed before it was computed."""
    import nbformat
    from nbclient import NotebookClient

    setup = (
        "import os, tempfile, torch\n%matplotlib inline\n"
        "os.environ['CNNLIB_CACHE'] = tempfile.mkdtemp()  # nothing seen before\n"
        "from cnnlib import models\nfrom cnnlib.widgets import LandscapeExplorer\n"
        "torch.manual_seed(0)\n"
        "nets = {'r8': models.create('resnet_cifar', depth=8, width=4, in_channels=1).eval()}\n"
        "data = (torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))\n"
        "ex = LandscapeExplorer(nets, data, resolution=5)\nex")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup),
                                         nbformat.v4.new_code_cell("ex.controls['resolution'].value = 7")])
    client = NotebookClient(nb, kernel_name="python3", timeout=120, store_widget_state=True)

    def images(points):
        client.set_widgets_metadata()
        state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        outputs = [m["state"].get("outputs", []) for m in state.values()
                   if m["model_name"] == "OutputModel"]
        assert len(outputs) == 1
        kinds = ["image" if "image/png" in o.get("data", {}) else o.get("output_type")
                 for o in outputs[0]]
        assert kinds == ["stream", "image"], kinds  # the cost first, then the figure
        assert f"{points} points ×" in outputs[0][0]["text"]
        return [o["data"]["image/png"] for o in outputs[0] if "image/png" in o.get("data", {})]

    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        first = images(5 * 5)
        client.execute_cell(nb.cells[1], 1)
        second = images(7 * 7)
    assert len(first) == len(second) == 1 and first != second


def test_resolution_is_capped_on_the_cpu(explorer):
    assert explorer.controls["resolution"].max == 21           # a CPU: 41×41 took minutes per update
    x = (torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    assert LandscapeExplorer(explorer.models, x, resolution=5, max_resolution=41).controls["resolution"].max == 41
    with pytest.raises(ValueError, match="resolution 25 is above max_resolution=21"):
        LandscapeExplorer(explorer.models, x, resolution=25)


def _drag(canvas, start, end, steps: int = 5) -> None:
    """Send ``canvas`` the messages JupyterLab's ipympl view sends for a left-button drag
    (pixel positions from the top left, as the browser measures them)."""
    def message(kind, x, y, buttons):
        canvas._handle_message(canvas, {"type": kind, "x": x, "y": y, "button": 0,
                                        "buttons": buttons, "modifiers": [], "guiEvent": {}}, [])

    message("button_press", *start, 1)
    for k in range(1, steps + 1):
        message("motion_notify", start[0] + (end[0] - start[0]) * k / steps,
                start[1] + (end[1] - start[1]) * k / steps, 1)
    message("button_release", *end, 0)


def _png(figure) -> bytes:
    import io

    buf = io.BytesIO()
    figure.savefig(buf, format="png")
    return buf.getvalue()


def test_the_3d_view_is_a_canvas_that_a_drag_turns(explorer):
    from ipympl.backend_nbagg import Canvas

    c = explorer.controls
    backend = plt.get_backend()
    c["view"].value, c["resolution"].value = "3D", 5
    canvas = explorer.canvas
    assert isinstance(canvas, Canvas) and canvas.figure is explorer.figure
    assert plt.get_backend() == backend  # importing ipympl must not move pyplot off its backend
    assert explorer.widget.children[-2] is explorer.output
    assert canvas in explorer.widget.children[-1].children  # under the output, not inside it
    ax = explorer.figure.axes[0]
    assert ax.name == "3d"
    before, angles = _png(explorer.figure), (ax.azim, ax.elev)
    w, h = explorer.figure.bbox.width, explorer.figure.bbox.height
    _drag(canvas, (w / 2, h / 2), (w / 2 + 60, h / 2 + 25))
    assert (ax.azim, ax.elev) != angles
    assert _png(explorer.figure) != before
    c["view"].value = "2D"  # back to a picture: the canvas is closed and leaves the layout
    assert explorer.canvas is None and canvas.comm is None
    assert explorer.widget.children[-1] is explorer.output
