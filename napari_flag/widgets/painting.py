"""Colouring the maps: a Points layer repainted from one value per spot (a
hidden layer gets its colours when shown again), the image panels that stand
in for Points on large slides (:class:`~napari_flag.layers.SpotRaster`), and
the recolouring of a prediction's layers by one gene with a shared range.
The caches here are weak: a layer that is deleted drops out of them.
"""
from __future__ import annotations

import weakref

import numpy as np

from .. import layers as L
from ..errors import FlagInputError
from .lookup import PRED_ROLES, flag_meta, prediction_for, prediction_layers

#: slides with at least this many spots show their side-by-side panels as
#: images (:class:`~napari_flag.layers.SpotRaster`) instead of Points
RASTER_MIN_SPOTS = 1000
PANEL_MAP = "panel_map"

#: hidden Points layers whose colours are still the previous gene's
_STALE_COLOURS: weakref.WeakSet = weakref.WeakSet()
#: the spot raster each image panel was drawn with
_RASTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------
# Points


def recolor_points(layer, values: np.ndarray, clim: tuple[float, float], name: str | None = None) -> None:
    """Put ``values`` into the layer's ``value`` column and repaint with ``clim``.

    Colours are mapped here and set directly: one visual update per layer,
    where napari's colormap mode would rebuild the markers three to four times.
    A hidden layer (e.g. while its panel is drawn as an image, see
    :func:`sync_panel_map`) gets its values, range and name now and its
    colours when it is shown again: rebuilding thousands of markers nobody
    sees would cost most of a gene switch.
    """
    v = np.asarray(values, dtype=np.float32)
    lo, hi = float(clim[0]), float(clim[1])
    layer.features["value"] = v
    layer.metadata["clim"] = (lo, hi)
    if name is not None and layer.name != name:
        layer.name = name
    if layer.visible:
        _paint_points(layer)
        _STALE_COLOURS.discard(layer)
    else:
        _STALE_COLOURS.add(layer)
        layer.events.visible.connect(_repaint_when_shown)  # napari ignores a repeated connect


def _paint_points(layer) -> None:
    v = np.asarray(layer.features["value"], dtype=np.float32)
    lo, hi = layer.metadata["clim"]
    t = np.clip((np.nan_to_num(v, nan=lo) - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    rgba = np.asarray(layer.face_colormap.map(t), dtype=np.float32)
    rgba[~np.isfinite(v), 3] = 0.0  # genes missing from the truth: transparent
    # the colour manager already tells the canvas; the layer-level event would
    # make it rebuild the same markers a second time
    with layer.events.face_color.blocker():
        layer.face_color = rgba


def _repaint_when_shown(event) -> None:
    layer = event.source
    if layer.visible and layer in _STALE_COLOURS:
        _STALE_COLOURS.discard(layer)
        _paint_points(layer)


def points_colours_stale(layer) -> bool:
    """Whether a hidden Points layer still shows the previous gene's colours."""
    return layer in _STALE_COLOURS


# ---------------------------------------------------------------------------
# image panels


def wants_raster(points) -> bool:
    """Whether the panel of ``points`` is drawn as an image (a large slide)."""
    return len(points.data) >= RASTER_MIN_SPOTS


def find_panel_layer(viewer, kind: str, key: str | None, panel: str | None):
    """The ``kind`` layer (``"panel_image"``: H&E copy, ``PANEL_MAP``: image of
    the spots) made for panel ``panel`` of prediction ``key``, or ``None``."""
    for lyr in viewer.layers:
        md = flag_meta(lyr)
        if md.get(L.ROLE) == kind and md.get("prediction_key") == key and md.get("panel") == panel:
            return lyr
    return None


def panel_map_layer(viewer, points):
    """The image that stands in for the Points panel ``points``, if there is one."""
    md = flag_meta(points)
    return find_panel_layer(viewer, PANEL_MAP, md.get("prediction_key"), md.get(L.ROLE))


def _map_name(points) -> str:
    return f"{points.name} (image)"


def sync_panel_map(viewer, points, create: bool = False):
    """Paint the image panel of ``points`` from its current values and range.

    The image shares the Points' colormap and contrast limits (now napari's
    own ``contrast_limits``, editable in the layer controls) and shows the
    hovered spot's value in the status bar.  ``create`` adds it when missing.
    Returns the image layer or ``None``.
    """
    img = panel_map_layer(viewer, points)
    if img is None and not create:
        return None
    return _paint_map(viewer, img, points)


def _new_map(viewer, points, raster, values, clim):
    """Add the image panel of ``points``."""
    from napari.layers import Image

    md = {k: v for k, v in flag_meta(points).items() if k != "clim"}
    md.update({L.ROLE: PANEL_MAP, "panel": md.get(L.ROLE)})
    img = Image(
        raster.render(values), name=_map_name(points), colormap=points.face_colormap,
        contrast_limits=clim, opacity=points.opacity, units=points.units, metadata=md,
        **raster.layer_geometry(points.scale, points.translate),
    )
    return viewer.add_layer(img)


def _paint_map(viewer, img, points):
    """Paint image panel ``img`` (created when ``None``) from ``points``."""
    values = np.asarray(points.features["value"], dtype=np.float32)
    clim = tuple(points.metadata.get("clim") or L.percentile_limits(values))
    raster = _RASTERS.get(img) if img is not None else None
    if raster is None or raster.n_spots > len(values):
        raster = L.spot_raster(np.asarray(points.data)[:, -2:], float(np.mean(points.size)))
    if img is None:
        img = _new_map(viewer, points, raster, values, clim)
    else:
        # in place + refresh: a new ``data`` would make napari re-measure the
        # whole viewer's extent, which costs as much as drawing the frame
        buf = img.data
        if isinstance(buf, np.ndarray) and buf.dtype == np.float32 and buf.shape == raster.shape:
            raster.render(values, out=buf)
            img.refresh()
        else:  # the user replaced the image's data
            img.data = raster.render(values)
        if tuple(img.contrast_limits) != clim:
            img.contrast_limits = clim
        if img.name != _map_name(points):
            img.name = _map_name(points)
    img.metadata["gene"] = points.metadata.get("gene")
    _RASTERS[img] = raster
    return img


# ---------------------------------------------------------------------------
# genes


def recolor_panel(viewer, points, values, clim, name: str | None = None) -> None:
    """:func:`recolor_points`, and its image panel when that is what is shown."""
    recolor_points(points, values, clim, name=name)
    if not points.visible:
        img = panel_map_layer(viewer, points)
        if img is not None and img.visible:
            _paint_map(viewer, img, points)


def apply_gene(viewer, key: str, gene: str) -> tuple[float, float] | None:
    """Colour prediction, truth and uncertainty layers of ``key`` by ``gene``.

    Prediction and truth share one range (1-99th percentile of their union), so
    a colour means the same value on both panels; uncertainty has its own.
    Returns the shared range.
    """
    adata = prediction_for(viewer, key)
    lyrs = prediction_layers(viewer, key, PRED_ROLES)
    if adata is None or not lyrs:
        return None
    if gene not in adata.var_names:
        raise FlagInputError(f"{gene}: not in the gene panel of this prediction")
    vals = {r: L.gene_values(adata, gene, r) for r in lyrs}
    shared = L.percentile_limits(*(v for r, v in vals.items() if r != "std"))
    for r, lyr in lyrs.items():
        clim = L.percentile_limits(vals[r]) if r == "std" else shared
        sid = lyr.metadata.get("sample_id", "")
        lyr.metadata["gene"] = gene
        recolor_panel(viewer, lyr, vals[r], clim, name=L.panel_name(sid, r, gene))
    return shared
