"""Interactive explorers for the lectures (ipywidgets). Thin by design: every number comes from
a tested function in ``cnnlib``; a widget only wires controls to it with
``ipywidgets.interactive_output`` and draws the result with matplotlib into an ``Output``.

``LandscapeExplorer`` — the loss surface around trained networks (Lecture 09, Li et al. 2018):
pick the model, the range and resolution of the grid, the normalization of the random
directions and a 1D, 2D or 3D view; the 3D view turns as you drag it. Surfaces come from
``landscape.random_surface`` with the disk cache on, so a setting the lecture already computed —
or that you visited before — is drawn at once; a new one is computed, and its cost (points, FLOPs, estimated seconds, from
``landscape.estimate``) is printed into the explorer's output first.

The 3D view is an ipympl canvas (``rotatable``), not a Plotly figure: the same
``Surface.plot("surface")`` the lecture's static figures use draws it, so what turns is exactly
the tested picture; the kernel renders each new angle with matplotlib's Agg while you drag, which
needs no WebGL in the browser (headless Chromium, old laptops) and no second plotting library.
"""
from __future__ import annotations

import warnings
from typing import Mapping

import matplotlib.pyplot as plt
import torch.nn as nn
from matplotlib.figure import Figure

from . import landscape

VIEWS = ("1D", "2D", "3D")
ROTATE_HINT = "3D: drag the surface to turn it."


def rotatable(figure: Figure):
    """``figure`` on an ipympl canvas widget: in JupyterLab a drag turns a 3D axes (the kernel
    redraws each angle); nbconvert and static pages show its PNG. The figure must not belong to
    pyplot (build it with ``matplotlib.figure.Figure``), or ``plt.show()`` would draw it twice."""
    import matplotlib

    backend = matplotlib.get_backend()
    from ipympl.backend_nbagg import Canvas, FigureManager
    if matplotlib.get_backend() != backend:  # importing ipympl switches pyplot to it: undo that,
        matplotlib.use(backend)              # so the lecture's other figures stay inline images

    with warnings.catch_warnings():  # ipympl's Toolbar passes matplotlib's arguments on to traitlets
        warnings.filterwarnings("ignore", r"Passing unrecognized arguments to super\(Toolbar\)",
                                DeprecationWarning)
        canvas = Canvas(figure)
        FigureManager(canvas, 0)  # routes the browser's mouse events to matplotlib
    canvas.header_visible = False
    canvas.toolbar_visible = False
    return canvas


class LandscapeExplorer:
    """Loss-surface explorer: ``display(LandscapeExplorer(models, data))`` in a notebook.

    ``models`` maps names to trained networks; ``data`` is the evaluation set (``(x, y)`` or an
    ``ImageData`` — the training split, as in the paper). ``span``/``resolution``/``norm``/
    ``view``/``log`` are the initial control values; ``seed`` fixes the random directions, so
    every model is cut along directions drawn the same way.

    ``max_resolution`` caps the resolution slider: by default 41 points per axis on a GPU and
    21 on a CPU, where a 41×41 grid of a small ResNet took minutes per update (a 21×21 grid is
    about four times cheaper).

    ``controls`` holds the widgets by name, ``output`` the ``Output`` the figure is drawn into,
    ``surface`` and ``figure`` the last result (handy to inspect, and what the tests check);
    in the 3D view ``canvas`` is the rotatable canvas the figure is on (else ``None``).
    """

    def __init__(self, models: Mapping[str, nn.Module], data, *, span: float = 1.0,
                 resolution: int = 15, norm: str = "filter", view: str = "2D", log: bool = True,
                 seed: int = 0, max_resolution: int | None = None, **options):
        import ipywidgets as w

        if not models:
            raise ValueError("the explorer needs at least one model")
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        if norm not in landscape.NORMS:
            raise ValueError(f"norm must be one of {landscape.NORMS}, got {norm!r}")
        self.models, self.data, self.seed = dict(models), data, seed
        if max_resolution is None:
            x = data[0] if isinstance(data, (tuple, list)) else data.x_train
            max_resolution = 41 if x.device.type == "cuda" else 21
        if resolution > max_resolution:
            raise ValueError(f"resolution {resolution} is above max_resolution={max_resolution}")
        self.options = {"cache": True, "progress": False, "announce": True, **options}
        self.surface, self.figure, self.canvas, self.draws = None, None, None, 0
        style = {"description_width": "initial"}
        self.controls = {
            "model": w.Dropdown(options=list(self.models), description="model", style=style),
            "span": w.FloatSlider(value=span, min=0.1, max=2.0, step=0.1, description="range ±",
                                  continuous_update=False, style=style),
            "resolution": w.IntSlider(value=resolution, min=5, max=max_resolution, step=2,
                                      description="points per axis", continuous_update=False,
                                      style=style),
            "norm": w.Dropdown(options=list(landscape.NORMS), value=norm,
                               description="normalization", style=style),
            "view": w.ToggleButtons(options=list(VIEWS), value=view, description="view",
                                    style=style),
            "log": w.Checkbox(value=log, description="log scale"),
        }
        c = self.controls
        self._rows = (w.HBox([c["model"], c["norm"], c["log"]]),
                      w.HBox([c["span"], c["resolution"]]), c["view"])
        self.widget, self.output = w.VBox(self._rows), None
        self.output = w.interactive_output(self.draw, c)  # draws the first view at once
        self._arrange()

    def compute(self, model: str, span: float, resolution: int, norm: str,
                view: str) -> landscape.Surface:
        """The surface for one setting of the controls: from the cache when it was seen, else
        computed after its estimated cost is printed."""
        return landscape.random_surface(self.models[model], self.data, span=span,
                                        resolution=resolution, norm=norm,
                                        dims=1 if view == "1D" else 2, seed=self.seed,
                                        label=model, **self.options)

    def draw(self, model: str, span: float, resolution: int, norm: str, view: str,
             log: bool) -> None:
        """Compute (or fetch) the surface and draw it; called on every change of a control."""
        surf = self.compute(model, span, resolution, norm, view)
        if self.figure is not None:
            plt.close(self.figure)
        if self.canvas is not None:
            self.canvas.close()
            self.canvas = None
        directions = "unnormalized" if norm == "none" else f"{norm}-normalized"
        points = f"{resolution} points" if view == "1D" else f"{resolution}×{resolution} grid"
        title = f"{model}\n{directions} directions, {points}"
        if view == "3D":
            figure = Figure(figsize=(5.5, 4.5), constrained_layout=True)
            ax = surf.plot("surface", log=log, title=title,
                           ax=figure.add_subplot(projection="3d"))
            self.canvas = rotatable(figure)
        else:
            ax = surf.plot("curve" if view == "1D" else "filled", log=log, title=title)
        self.surface, self.figure = surf, ax.figure
        self.draws += 1
        self._arrange()
        if self.canvas is None:
            plt.show()

    def _arrange(self) -> None:
        """The controls, the output (the cost of a new setting; the 1D and 2D figures) and, in
        the 3D view, the rotatable canvas under it: a live widget beside the output, not in it."""
        import ipywidgets as w

        if self.output is None:  # the first draw, from inside interactive_output
            return
        stage = () if self.canvas is None else (w.VBox([w.Label(ROTATE_HINT), self.canvas]),)
        self.widget.children = self._rows + (self.output,) + stage

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
