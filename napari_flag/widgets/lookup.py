"""Finding things in a viewer: napari-flag's metadata of a layer, the slide
layers a prediction can run on and the Sample each one carries, the layers,
AnnData and labels of each prediction, what a new prediction shows first, and
the scale bar and view fitting every widget shares.  The objects live in the
layers' metadata (:data:`napari_flag.layers.SAMPLE`,
:data:`napari_flag.layers.PREDICTION`) and every lookup reads them from the
layers still in the viewer, so a deleted layer takes its object with it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from .. import layers as L
from ..errors import FlagInputError
from ..record import PredictionRecord

PRED_ROLES = ("pred", "truth", "std")


# ---------------------------------------------------------------------------
# the view


def scale_bar_model(viewer):
    """``viewer.canvas.overlays.scale_bar`` (napari >= 0.9) or ``viewer.scale_bar``."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    bar = getattr(overlays, "scale_bar", None)
    return bar if bar is not None else viewer.scale_bar


def show_scale_bar(viewer) -> None:
    """Scale bar on, in the layers' physical units (µm when the pixel size is known)."""
    bar = scale_bar_model(viewer)
    bar.visible = True
    with contextlib.suppress(Exception):  # older napari has no gridded bar
        bar.gridded = True  # one bar per panel in side-by-side mode


def focus_on_spots(viewer, layers=None, margin: float = 0.03) -> None:
    """Fit the view to the spots (the tissue), not to the whole slide image."""
    from napari.layers import Points

    if layers is None:
        layers = [lyr for lyr in viewer.layers if isinstance(lyr, Points) and lyr.visible and len(lyr.data)]
    layers = [lyr for lyr in layers if len(lyr.data)]
    try:
        viewer.reset_view(layers=layers or None, margin=margin)
    except TypeError:  # napari without the layers argument
        viewer.reset_view()


# ---------------------------------------------------------------------------
# slides


def flag_meta(layer) -> dict:
    """The layer's metadata when napari-flag made the layer, else ``{}``."""
    md = getattr(layer, "metadata", None) or {}
    return md if L.ROLE in md else {}


def slide_layers(viewer) -> list:
    """Image layers a prediction can run on: slides opened by napari-flag, or any
    RGB image that napari read from a file (the path is handed to ``load_sample``)."""
    from napari.layers import Image

    out = []
    for lyr in viewer.layers:
        if not isinstance(lyr, Image):
            continue
        md = flag_meta(lyr)
        if md.get(L.ROLE) == "slide" or not md and getattr(lyr, "rgb", False) and getattr(lyr.source, "path", None):
            out.append(lyr)
    return out


def layer_source(layer) -> str | None:
    """What ``load_sample`` needs to re-open the slide of ``layer``."""
    md = flag_meta(layer)
    return md.get("source") or getattr(layer.source, "path", None)


def layer_sample(layer):
    """The :class:`Sample` the layer carries, or ``None``."""
    return flag_meta(layer).get(L.SAMPLE)


def sample_for_layer(layer):
    """The :class:`Sample` behind a slide layer: the one it carries, else re-read from its source."""
    s = layer_sample(layer)
    if s is not None:
        return s
    src = layer_source(layer)
    if not src:
        raise FlagInputError(f"{layer.name}: layer has no source file or dataset id to read spots from")
    from ..data import load_sample

    return load_sample(src)


# ---------------------------------------------------------------------------
# predictions


def prediction_layers(viewer, key: str | None, roles=PRED_ROLES + ("lisa_truth", "lisa_pred")) -> dict:
    """``{role: layer}`` of one prediction."""
    out = {}
    for lyr in viewer.layers:
        md = flag_meta(lyr)
        if md and md.get("prediction_key") == key and md.get(L.ROLE) in roles:
            out.setdefault(md[L.ROLE], lyr)
    return out


def predicted_map(viewer, key: str | None):
    """The predicted map (the ``pred`` Points layer) of prediction ``key``, or ``None``."""
    return prediction_layers(viewer, key, ("pred",)).get("pred") if key else None


def prediction_for(viewer, key: str | None):
    """The AnnData of prediction ``key``, carried by its predicted map; ``None``
    once that layer is gone (a prediction lives as long as its map)."""
    return flag_meta(predicted_map(viewer, key)).get(L.PREDICTION)


def prediction_keys(viewer) -> list[str]:
    """Predictions that still have their predicted map in the viewer, in layer order."""
    keys = []
    for lyr in viewer.layers:
        md = flag_meta(lyr)
        k = md.get("prediction_key")
        if k and md.get(L.ROLE) == "pred" and k not in keys and md.get(L.PREDICTION) is not None:
            keys.append(k)
    return keys


def prediction_label(adata) -> str:
    """``"C2 · best.pt"``: slide and model file."""
    info = PredictionRecord.of(adata)
    ck = Path(info.checkpoint).name if info.checkpoint else ""
    return f"{info.sample_id or '?'}{' · ' + ck if ck else ''}"


def prediction_labels(keys, adatas) -> list[str]:
    """Labels of the predictions ``adatas`` named ``keys``; repeated runs of one
    slide and model get ``(run 2)``, ``(run 3)``… in the order they were made,
    so the first is never numbered."""
    base = [prediction_label(a) for a in adatas]

    def made(k: str) -> int:
        tail = k.rsplit("#", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    out = list(base)
    for label in set(base):
        same = sorted((i for i, b in enumerate(base) if b == label), key=lambda i: made(keys[i]))
        for n, i in enumerate(same[1:], start=2):
            out[i] = f"{label} (run {n})"
    return out


def present_prediction(viewer, key: str) -> None:
    """What a new prediction shows first: the predicted map on top and selected.

    Truth and uncertainty stay in the layer list, hidden (one click on their
    eye), and so do the slide's plain spots: drawn under the prediction they
    would tint its colours.
    """
    lyrs = prediction_layers(viewer, key, PRED_ROLES)
    pred = lyrs.get("pred")
    if pred is None:
        return
    for role in ("truth", "std"):
        if role in lyrs:
            lyrs[role].visible = False
    skey = pred.metadata.get("sample_key")
    for lyr in viewer.layers:
        md = flag_meta(lyr)
        if skey and md.get(L.ROLE) == "spots" and md.get("sample_key") == skey:
            lyr.visible = False
    ll = viewer.layers
    ll.move(ll.index(pred), len(ll))
    ll.selection.active = pred
