"""``napari-flag demo``: a HER2ST section in napari with every widget docked,
ready to press Predict with the bundled model."""
from __future__ import annotations

__all__ = ["run_demo", "DEMO_WIDGETS"]

#: (display name in napari.yaml, tabify with the previous dock)
DEMO_WIDGETS = (
    ("Predict expression", False),
    ("Gene maps", False),
    ("Metrics", True),
    ("Moran's I", True),
    ("Export", True),
    ("Train FLAG", True),
)


def run_demo(sample: str = "her2st:C2", viewer=None, run: bool = True):
    """Open ``sample`` (dataset id or path) from the dataset cache and dock the widgets.

    Returns the viewer.  A slide that cannot be read (not cached, no network)
    is reported as a notification; the widgets are docked anyway.  ``run=False``
    returns without entering the Qt event loop (scripts, tests).
    """
    import napari
    from napari.layers import Layer

    from ._reader import read_slides
    from .widgets._common import focus_on_spots, show_scale_bar

    v = viewer if viewer is not None else napari.Viewer(title=f"napari-flag — {sample}")
    for t in read_slides(sample):
        if t[0] is not None:
            v.add_layer(Layer.create(*t))
    docks = {}
    for name, tab in DEMO_WIDGETS:
        docks[name] = v.window.add_plugin_dock_widget("napari-flag", name, tabify=tab)[0]
    docks["Gene maps"].raise_()  # the tab in front of its group
    show_scale_bar(v)
    focus_on_spots(v)
    if run:
        napari.run()
    return v
