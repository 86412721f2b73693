"""The one place the figures get matplotlib from: a new Agg figure, and matplotlib loaded ahead.

A run that will plot calls :func:`preload` before its physics: matplotlib's import and its
default font (about a second of a small run) then load in a background thread while the
physics runs, and :func:`new_figure` waits for that thread, so matplotlib is never used from
two threads at once. Nothing here imports matplotlib at import time.
"""

from __future__ import annotations

import importlib
import threading

__all__ = ["new_figure", "preload"]

#: What the figures import from matplotlib (:func:`preload` imports them ahead).
_MATPLOTLIB = ("matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.cm",
               "matplotlib.collections", "matplotlib.colors", "matplotlib.lines",
               "matplotlib.patches")
_preloading: list[threading.Thread] = []


def _load_matplotlib() -> None:
    try:
        for name in _MATPLOTLIB:
            importlib.import_module(name)
        from matplotlib import font_manager

        font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))
    except Exception:  # noqa: BLE001 -- the figures import it again and report what fails
        pass


def preload() -> None:
    """Start importing matplotlib (and loading its default font) in a background thread,
    so that figures drawn later in this process do not wait for it; the first figure waits
    for the thread, so matplotlib is never used from two threads at once."""
    if not _preloading:
        thread = threading.Thread(target=_load_matplotlib, name="plots-preload", daemon=True)
        _preloading.append(thread)
        thread.start()


def new_figure(size: tuple[float, float], dpi: float):
    for thread in _preloading:
        thread.join()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure
