"""cnnlib — the library behind the live CNN-architectures course.

The short public API a notebook needs::

    import cnnlib
    P = cnnlib.setup()                       # profile, device, seed — printed
    cfg = P.choose(quick=dict(epochs=5), medium=dict(epochs=10), full=dict(epochs=40))
    data = cnnlib.load()                     # digits (quick) or CIFAR-10 (full), on the device
    net = cnnlib.models.create("vgg11", num_classes=data.num_classes, in_channels=data.in_channels, small=True)
    hist = cnnlib.fit(net, data.resize(32), epochs=cfg["epochs"])
    hist.plot()
"""
from . import models, plots, report
from .data import ImageData, load, photo
from .measure import count_params, flops, macs, receptive_field
from .profile import choose, setup
from .train import History, evaluate, fit

__version__ = "0.1.0"

__all__ = ["setup", "choose", "load", "photo", "ImageData", "fit", "evaluate", "History",
           "count_params", "flops", "macs", "receptive_field", "models", "plots", "report"]
