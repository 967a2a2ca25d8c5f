"""Export: the current prediction as ``.h5ad`` and CSV, and a PNG figure of the maps in view.

An existing file is never replaced without asking
(:func:`napari_flag.widgets.notify.confirm_overwrite`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import Container, FileEdit, LineEdit, SpinBox
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from .base import FlagWidget
from .lookup import flag_meta, prediction_layers
from .notify import may_write, report_errors, show_error
from .painting import panel_map_layer


def write_csv(adata, path: Path, layer: str | None = None) -> Path:
    """Spots x genes table with the spot id and full-res ``x``, ``y`` first."""
    import pandas as pd

    M = adata.X if layer is None else adata.layers[layer]
    M = M.toarray() if hasattr(M, "toarray") else np.asarray(M)
    xy = np.asarray(adata.obsm["spatial"])
    df = pd.DataFrame(M, index=pd.Index(adata.obs_names, name="spot"), columns=list(adata.var_names))
    df.insert(0, "y", xy[:, 1])
    df.insert(0, "x", xy[:, 0])
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, float_format="%.5g")
    tmp.replace(path)
    return path


#: what each kind of map's colour means, under its colorbar
_UNITS = {"std": "std over samples", "lisa_pred": "local Moran's I", "lisa_truth": "local Moran's I"}


def figure_panels(viewer, key: str | None) -> list:
    """The Points layers a figure of the view shows: every panel in side-by-side
    mode, else the visible maps of prediction ``key`` (the predicted map when
    none is visible)."""
    from ._grid import PANEL_ORDER, grid_model

    pl = prediction_layers(viewer, key, PANEL_ORDER)
    if not pl:
        return []
    ordered = [pl[r] for r in PANEL_ORDER if r in pl]
    if grid_model(viewer).enabled:
        return ordered

    def shown(lyr) -> bool:
        img = panel_map_layer(viewer, lyr)
        return lyr.visible or (img is not None and img.visible)

    return [lyr for lyr in ordered if shown(lyr)] or ordered[:1]


def _slide_crop(slide, lo, hi, um_per_px: float):
    """RGB pixels of ``slide`` over world box ``lo``-``hi`` (µm, ``(row, col)``) at
    about ``um_per_px``, and their world extent ``(left, right, bottom, top)``."""
    levels = list(slide.data) if slide.multiscale else [slide.data]
    scale = np.asarray(slide.scale, dtype=float)[-2:]
    trans = np.asarray(slide.translate, dtype=float)[-2:]
    factors = np.asarray(getattr(slide, "downsample_factors", None) if slide.multiscale else [[1.0, 1.0]])
    k = 0  # the coarsest level still at least as fine as the output
    for i in range(len(levels)):
        if float(scale[0] * factors[i][-2]) <= um_per_px * 1.01:
            k = i
    s = scale * np.asarray(factors[k][-2:], dtype=float)
    arr = levels[k]
    r0, c0 = np.floor((np.asarray(lo) - trans) / s).astype(int)
    r1, c1 = np.ceil((np.asarray(hi) - trans) / s).astype(int)
    r0, c0 = max(r0, 0), max(c0, 0)
    r1, c1 = min(r1, arr.shape[0]), min(c1, arr.shape[1])
    if r1 <= r0 or c1 <= c0:
        return None, None
    crop = np.asarray(arr[r0:r1, c0:c1])
    top, left = trans + np.array([r0, c0]) * s
    bottom, right = trans + np.array([r1, c1]) * s
    return crop, (left, right, bottom, top)


def _scale_bar(ax, span_um: float, units: str) -> None:
    """A bar of a round length in the bottom right corner of ``ax``."""
    if units != "um":
        return
    nice = [v for v in (50, 100, 200, 500, 1000, 2000, 5000) if v <= span_um / 4] or [span_um / 4]
    length = nice[-1]
    x0, x1 = ax.get_xlim()
    y0, _ = ax.get_ylim()  # y grows downwards: y0 is the bottom
    pad = 0.04 * (x1 - x0)
    xe, yb = x1 - pad, y0 - pad
    ax.plot([xe - length, xe], [yb, yb], color="black", lw=3, solid_capstyle="butt")
    label = f"{length / 1000:g} mm" if length >= 1000 else f"{length:g} µm"
    ax.text(xe - length / 2, yb - 0.015 * (x1 - x0), label, ha="center", va="bottom", fontsize=8)


def write_figure(viewer, key: str | None, path: Path, scale: float = 2.0) -> Path:
    """A PNG of the maps in view, each framed on the tissue over its H&E, with
    its title and colorbar; ``scale`` times 400 pixels per panel.

    Drawn from the layers' own values, ranges and colormaps (not a grab of
    the canvas), so the file looks the same whatever the window size.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import EllipseCollection
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure

    from .. import layers as L
    from ..errors import FlagInputError
    from ._grid import _slide_layer

    panels = figure_panels(viewer, key)
    if not panels:
        raise FlagInputError("Nothing to draw yet: run Predict first")
    pts_world = []
    for lyr in panels:
        pts_world.append(np.asarray(lyr.data)[:, -2:] * np.asarray(lyr.scale)[-2:] + np.asarray(lyr.translate)[-2:])
    allw = np.concatenate(pts_world)
    diam = float(np.mean(panels[0].size)) * float(panels[0].scale[-1])
    lo = allw.min(axis=0) - diam
    hi = allw.max(axis=0) + diam
    pad = 0.04 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    h_um, w_um = hi - lo
    n = len(panels)
    cols = n if n <= 3 else int(np.ceil(n / 2))
    rows = int(np.ceil(n / cols))
    panel_in = 4.0
    map_h = panel_in * h_um / w_um
    fig = Figure(figsize=(panel_in * cols, (map_h + 1.0) * rows), dpi=100 * float(scale))
    FigureCanvasAgg(fig)
    slide = _slide_layer(viewer, flag_meta(panels[0]))
    um_per_px = w_um / (panel_in * 100 * float(scale))
    crop, ext = _slide_crop(slide, lo, hi, um_per_px) if slide is not None else (None, None)
    units = str(panels[0].units[-1]) if getattr(panels[0], "units", None) is not None else "um"
    units = "um" if units in ("micrometer", "um", "µm") else units
    for i, (lyr, xy) in enumerate(zip(panels, pts_world)):
        r, c = divmod(i, cols)
        left, width = c / cols + 0.01 / cols, 0.98 / cols
        cell_h = 1.0 / rows
        inch = cell_h / (map_h + 1.0)  # figure fraction per inch of this cell's height
        base = 1 - (r + 1) * cell_h
        ax = fig.add_axes((left, base + 0.8 * inch, width, 0.88 * map_h * inch))
        if crop is not None:
            ax.imshow(crop, extent=ext, interpolation="bilinear")
        values = np.asarray(lyr.features["value"], dtype=np.float32)
        clim = tuple(lyr.metadata.get("clim") or L.percentile_limits(values))
        t = np.clip((np.nan_to_num(values, nan=clim[0]) - clim[0]) / ((clim[1] - clim[0]) or 1.0), 0, 1)
        rgba = np.asarray(lyr.face_colormap.map(t), dtype=float)
        rgba[~np.isfinite(values), 3] = 0.0
        rgba[:, 3] *= float(lyr.opacity)
        d = float(np.mean(lyr.size)) * float(lyr.scale[-1])
        spots = EllipseCollection(np.full(len(xy), d), np.full(len(xy), d), np.zeros(len(xy)), units="xy",
                                  offsets=xy[:, ::-1], offset_transform=ax.transData, facecolors=rgba,
                                  edgecolors=(1, 1, 1, 0.8), linewidths=0.3)
        ax.add_collection(spots)
        ax.set_xlim(lo[1], hi[1])
        ax.set_ylim(hi[0], lo[0])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(lyr.name, fontsize=11)
        _scale_bar(ax, w_um, units)
        cmap = ListedColormap(np.asarray(lyr.face_colormap.map(np.linspace(0, 1, 256)))[:, :3])
        cax = fig.add_axes((left + width * 0.15, base + 0.45 * inch, width * 0.7, 0.12 * inch))
        sm = matplotlib.cm.ScalarMappable(norm=Normalize(*clim), cmap=cmap)
        cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
        role = flag_meta(lyr).get(L.ROLE)
        cb.set_label(_UNITS.get(role, str(lyr.metadata.get("values") or "log2(1+count)")), fontsize=8)
        cb.ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=100 * float(scale), facecolor="white")
    return path


class ExportWidget(FlagWidget):
    """Save the current prediction (.h5ad, CSV) or a PNG of the side-by-side view."""

    saved = Signal(list)

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.form = Container(
            widgets=[
                FileEdit(name="folder", label="folder", mode="d", value=str(Path.home())),
                LineEdit(name="basename", label="file name", value=""),
                SpinBox(name="png_scale", label="PNG scale", min=1, max=8, value=2,
                        tooltip="PNG size: this many times 400 pixels per panel"),
            ],
            labels=True,
        )
        self.h5ad_btn = QPushButton("Save .h5ad")
        self.csv_btn = QPushButton("Save CSV")
        self.png_btn = QPushButton("Save PNG of view")
        self.png_btn.setToolTip("The maps in view, framed on the tissue, with titles and colorbars")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addWidget(self.form.native)
        row = QHBoxLayout()
        for b in (self.h5ad_btn, self.csv_btn, self.png_btn):
            row.addWidget(b)
        lay.addLayout(row)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.h5ad_btn.clicked.connect(lambda *_: self.save_h5ad())
        self.csv_btn.clicked.connect(lambda *_: self.save_csv())
        self.png_btn.clicked.connect(lambda *_: self.save_png())
        self.session.prediction_changed.connect(self._on_prediction)
        self._on_prediction(self.session.prediction_key)

    def _on_prediction(self, key) -> None:
        ad = self.session.prediction
        if ad is not None:
            self.form.basename.value = f"{ad.uns.get('flag', {}).get('sample_id', 'slide')}_flag"

    def _path(self, suffix: str) -> Path:
        folder = Path(str(self.form.folder.value)).expanduser()
        if not folder.is_dir():
            from ..errors import FlagInputError

            raise FlagInputError(f"{folder}: output folder does not exist")
        base = (self.form.basename.value or "flag_prediction").strip()
        return folder / f"{base}{suffix}"

    def _prediction(self):
        ad = self.session.prediction
        if ad is None:
            show_error("Nothing to export yet: run Predict first")
        return ad

    def _done(self, paths: list[Path]) -> list[Path]:
        if paths:
            self.status.setText("saved " + ", ".join(p.name for p in paths))
            self.saved.emit([str(p) for p in paths])
        else:
            self.status.setText("not saved")
        return paths

    @report_errors
    def save_h5ad(self) -> list[Path]:
        from ..inference import write_prediction

        ad = self._prediction()
        if ad is None:
            return []
        out = self._path(".h5ad")
        if not may_write(out, self):
            return self._done([])
        ad = ad.copy()
        ad.uns.pop("napari_flag", None)  # session-only registry key
        return self._done([write_prediction(ad, out, overwrite=True)])

    @report_errors
    def save_csv(self) -> list[Path]:
        """``<name>_pred.csv`` (mean), ``<name>_std.csv`` and, when measured, ``<name>_truth.csv``."""
        ad = self._prediction()
        if ad is None:
            return []
        parts = [(None, "_pred.csv")] + [(k, f"_{k}.csv") for k in ("std", "truth") if k in ad.layers]
        targets = [(layer, self._path(sfx)) for layer, sfx in parts]
        existing = [p for _, p in targets if p.exists()]
        if existing and not may_write(existing[0], self):
            return self._done([])
        return self._done([write_csv(ad, p, layer) for layer, p in targets])

    @report_errors
    def save_png(self) -> list[Path]:
        """The maps in view (all panels in side-by-side mode) as a figure: see :func:`write_figure`."""
        if self._prediction() is None:
            return []
        out = self._path(".png")
        if not may_write(out, self):
            return self._done([])
        tmp = out.with_name(f".{out.stem}.tmp.png")
        write_figure(self.viewer, self.session.prediction_key, tmp, scale=float(self.form.png_scale.value))
        tmp.replace(out)
        return self._done([out])
