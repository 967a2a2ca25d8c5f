"""Export: the current prediction as ``.h5ad`` and CSV, and a PNG of the view.

An existing file is never replaced without asking
(:func:`napari_flag.widgets._common.confirm_overwrite`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import Container, FileEdit, LineEdit
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ._common import FlagWidget, may_write, report_errors, show_error


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


class ExportWidget(FlagWidget):
    """Save the current prediction (.h5ad, CSV) or a PNG of the side-by-side view."""

    saved = Signal(list)

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.form = Container(
            widgets=[
                FileEdit(name="folder", label="folder", mode="d", value=str(Path.home())),
                LineEdit(name="basename", label="file name", value=""),
            ],
            labels=True,
        )
        self.h5ad_btn = QPushButton("Save .h5ad")
        self.csv_btn = QPushButton("Save CSV")
        self.png_btn = QPushButton("Save PNG of view")
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
        """What the canvas shows now (e.g. the side-by-side panels), at twice screen resolution."""
        out = self._path(".png")
        if not may_write(out, self):
            return self._done([])
        self.viewer.screenshot(path=str(out), canvas_only=True, scale=2, flash=False)
        return self._done([out])
