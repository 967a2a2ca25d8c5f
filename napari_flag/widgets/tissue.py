"""The tissue mask in napari: detect it as a Labels layer the user paints or erases, then read it back.

Polygons drawn in Shapes layers named ``tissue include`` / ``tissue exclude``
add tissue to, or take it out of, every slide's mask.
"""
from __future__ import annotations

import numpy as np

from .. import layers as L
from .lookup import flag_meta, sample_for_layer


def tissue_layer(viewer, slide_name: str):
    """The ``tissue`` Labels layer made for ``slide_name``, if the user has one."""
    from napari.layers import Labels

    for lyr in viewer.layers:
        if isinstance(lyr, Labels) and flag_meta(lyr).get(L.ROLE) == "tissue" and lyr.metadata.get("slide") == slide_name:
            return lyr
    return None


def detect_into_layer(viewer, slide_layer):
    """Detect the tissue of a slide without spots and add (or refresh) its editable ``tissue`` layer."""
    from napari.layers import Layer

    from ..data.tissue import detect_tissue
    from ..errors import FlagInputError

    sample = sample_for_layer(slide_layer)
    if sample.n_spots:
        raise FlagInputError(f"{slide_layer.name}: the slide has measured spots; predictions use them, not a mask")
    mask = detect_tissue(sample.image, sample.pixel_size_um, source=str(sample.source or sample.sample_id))
    old = tissue_layer(viewer, slide_layer.name)
    if old is not None:
        viewer.layers.remove(old)
    name = "tissue" if len(_slides_with_masks(viewer)) == 0 else f"{slide_layer.name} tissue"
    data, kwargs, kind = L.tissue_layer_data(mask, sample.pixel_size_um, slide_layer.name, name=name)
    lyr = viewer.add_layer(Layer.create(data, kwargs, kind))
    lyr.brush_size = 10
    return lyr, mask


def _slides_with_masks(viewer) -> list:
    return [lyr for lyr in viewer.layers if flag_meta(lyr).get(L.ROLE) == "tissue"]


def _polygons(viewer, name: str, pixel_size_um: float | None) -> list[np.ndarray]:
    """Polygons of the Shapes layer ``name`` in full-res ``(y, x)`` (its world coordinates are microns)."""
    from napari.layers import Shapes

    ps = L.world_scale(pixel_size_um)[0]
    out = []
    for lyr in viewer.layers:
        if isinstance(lyr, Shapes) and lyr.name == name:
            for verts, kind in zip(lyr.data, lyr.shape_type):
                if kind in ("polygon", "rectangle", "ellipse") and len(verts) >= 3:
                    world = np.asarray(verts)[:, -2:] * np.asarray(lyr.scale)[-2:] + np.asarray(lyr.translate)[-2:]
                    out.append(world / ps)
    return out


def edited_mask(viewer, slide_layer):
    """The user's mask of a slide (painted labels plus include/exclude polygons), or ``None`` if never detected."""
    lyr = tissue_layer(viewer, slide_layer.name)
    if lyr is None:
        return None
    ps = lyr.metadata.get("pixel_size_um")
    return L.tissue_from_layer_data(lyr.data, lyr.metadata, _polygons(viewer, L.TISSUE_INCLUDE, ps),
                                    _polygons(viewer, L.TISSUE_EXCLUDE, ps))
