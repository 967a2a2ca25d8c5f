"""Side-by-side panels with napari's grid mode, each over its own copy of the H&E.

napari (0.9) groups layers for grid mode by their index in the layer list,
counted from the *bottom*: with ``grid.stride = 2`` layers 0-1 share the first
viewbox (top left), 2-3 the second, and so on; within a viewbox the lower
index is drawn first.  Hidden layers open no viewbox but still count in that
grouping.  So the panels are laid out as pairs at the bottom of the list::

    index 0  H&E · pred      ┐ viewbox 1  predicted
    index 1  pred · GENE     ┘
    index 2  H&E · truth     ┐ viewbox 2  measured
    index 3  truth · GENE    ┘
    index 4  H&E · std       ┐ viewbox 3  uncertainty
    index 5  std · GENE      ┘
    (index 6.. local Moran's I pairs when shown)
    everything else above, hidden while the grid is on

All viewboxes share one camera, so pan and zoom are linked.  The H&E copies
share the slide's array (no pixel copy), only a texture per panel.

On large slides (``RASTER_MIN_SPOTS`` spots or more) the panel in each pair is
not the Points layer but an image of the same spots
(:func:`~napari_flag.widgets.painting.sync_panel_map`): the Points stay in the
layer list, hidden, and come back when the grid is left.  On a software
renderer three panels of 5,000 point sprites cost 60-70 ms a frame, three
images a few ms.
"""
from __future__ import annotations

import math

from .. import layers as L
from .lookup import (
    flag_meta,
    focus_on_spots,
    predicted_map,
    prediction_layers,
    show_scale_bar,
)
from .painting import PANEL_MAP, find_panel_layer, sync_panel_map, wants_raster

PANEL_ORDER = ("pred", "truth", "std", "lisa_pred", "lisa_truth")
_HIDDEN_KEY = "_flag_hidden_by_grid"


def grid_model(viewer):
    """``viewer.canvas.grid`` (napari >= 0.9) or ``viewer.grid``."""
    canvas = getattr(viewer, "canvas", None)
    grid = getattr(canvas, "grid", None)
    return grid if grid is not None else viewer.grid


def show_title(layer, on: bool = True) -> None:
    """The layer's name in the top left of its panel (napari's name overlay)."""
    ov = getattr(layer, "name_overlay", None)
    if ov is None:  # napari < 0.6
        return
    if on:
        ov.font_size = 12
        ov.box = True
    ov.visible = on


def _slide_layer(viewer, meta: dict):
    """The slide image a prediction was made from (by name, then by sample key)."""
    name = meta.get("slide_layer")
    if name and name in viewer.layers:
        return viewer.layers[name]
    for lyr in viewer.layers:
        md = flag_meta(lyr)
        if md.get(L.ROLE) == "slide" and md.get("sample_key") and md.get("sample_key") == meta.get("sample_key"):
            return lyr
    return None


def _panel_image(viewer, key: str, role: str, slide):
    found = find_panel_layer(viewer, "panel_image", key, role)
    if found is not None:
        return found
    from napari.layers import Image

    md = dict(flag_meta(slide), **{L.ROLE: "panel_image", "prediction_key": key, "panel": role})
    img = Image(
        slide.data,
        rgb=True,
        multiscale=slide.multiscale,
        scale=slide.scale,
        translate=slide.translate,
        units=slide.units,
        contrast_limits=slide.contrast_limits,
        name=f"H&E · {L.PANEL_TITLES.get(role, role)}",
        metadata=md,
    )
    return viewer.add_layer(img)


def panel_layers(viewer, key: str) -> list[tuple]:
    """``[(image_or_None, panel, points), ...]`` in panel order, creating H&E copies
    and image panels as needed; ``panel`` is ``points`` or the image drawn for it."""
    pl = prediction_layers(viewer, key)
    if not pl:
        return []
    slide = _slide_layer(viewer, flag_meta(pl["pred"]) if "pred" in pl else {})
    out = []
    for role in PANEL_ORDER:
        if role in pl:
            pts = pl[role]
            img = _panel_image(viewer, key, role, slide) if slide is not None else None
            panel = sync_panel_map(viewer, pts, create=True) if wants_raster(pts) else pts
            out.append((img, panel, pts))
    return out


def grid_shape(viewer, n: int, points) -> tuple[int, int]:
    """``(rows, cols)`` for ``n`` panels that shows the tissue largest on this canvas.

    A wide section on a wide canvas is drawn bigger in 2 x 2 than in 1 x 3; a
    row wins ties, so the panels read left to right.
    """
    import numpy as np

    size = getattr(getattr(viewer, "canvas", None), "size", None)
    if n <= 1 or size is None or not points:
        return (1, max(n, 1)) if n <= 3 else (2, math.ceil(n / 2))
    ext = np.concatenate([np.asarray(p.extent.world)[:, -2:] for p in points])
    h, w = np.maximum(ext.max(axis=0) - ext.min(axis=0), 1e-9)
    ch, cw = (float(x) for x in size)
    best, shape = -1.0, (1, n)
    for rows in range(1, n + 1):
        cols = math.ceil(n / rows)
        if (rows - 1) * cols >= n:  # a whole empty row
            continue
        zoom = min(cw / cols / w, ch / rows / h)
        if zoom > best * 1.15:  # a clearly larger view, else keep fewer rows
            best, shape = zoom, (rows, cols)
    return shape


def arrange_side_by_side(viewer, key: str) -> list:
    """Turn grid mode on with one viewbox per panel of prediction ``key``; returns the panel layers."""
    triples = panel_layers(viewer, key)
    if not triples:
        return []
    ordered = []
    for img, panel, _ in triples:
        ordered.extend([img, panel] if img is not None else [panel])
    stride = 2 if all(img is not None for img, _, _ in triples) else 1
    ll = viewer.layers
    for i, lyr in enumerate(ordered):
        cur = ll.index(lyr)
        if cur != i:
            ll.move(cur, i)
    for lyr in list(ll)[len(ordered):]:
        if lyr.visible:
            lyr.visible = False
            lyr.metadata[_HIDDEN_KEY] = True
    for lyr in ordered:
        lyr.visible = True
    for _, panel, _ in triples:
        show_title(panel)
    viewer.layers.selection.active = triples[0][1]
    n = len(triples)
    grid = grid_model(viewer)
    grid.stride = stride
    grid.shape = grid_shape(viewer, n, [pts for _, _, pts in triples])
    grid.spacing = 0.02
    grid.enabled = True
    show_scale_bar(viewer)
    focus_on_spots(viewer, [pts for _, _, pts in triples], margin=0.06)  # room for the titles
    return ordered


def leave_side_by_side(viewer, key: str | None) -> None:
    """Grid off; panel copies hidden, the prediction on top, other layers as they were."""
    grid_model(viewer).enabled = False
    for lyr in viewer.layers:
        show_title(lyr, False)
        md = lyr.metadata or {}
        if md.pop(_HIDDEN_KEY, False):
            lyr.visible = True
        fm = flag_meta(lyr)
        if fm.get(L.ROLE) in ("panel_image", PANEL_MAP) or (
            fm.get("prediction_key") == key and fm.get(L.ROLE) in PANEL_ORDER and fm.get(L.ROLE) != "pred"
        ):
            lyr.visible = False
    pred = predicted_map(viewer, key)
    if pred is not None:
        pred.visible = True
        ll = viewer.layers
        ll.move(ll.index(pred), len(ll))
        ll.selection.active = pred
        focus_on_spots(viewer, [pred])  # the grid's zoom does not fit one full-size view
