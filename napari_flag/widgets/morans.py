"""Moran's I: does the prediction keep each gene's spatial pattern?

* a scatter of global Moran's I, measured vs predicted, one dot per panel gene,
  with the SSC (their Pearson r) in the title; clicking a dot picks that gene;
* a sortable table of the same numbers;
* optional local Moran's I maps (per spot, measured and predicted) of the
  chosen gene as Points layers with a diverging colormap around 0
  (red: a spot like its neighbours, hot- or cold-spot; blue: unlike them).
"""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QVBoxLayout, QWidget

from .. import layers as L
from . import _analysis
from ._grid import arrange_side_by_side, grid_model
from .base import FlagWidget
from .jobs import EvaluationJob
from .lookup import predicted_map, prediction_layers
from .metrics import fill_gene_table, gene_table, select_gene_row
from .notify import report_errors
from .painting import panel_map_layer, recolor_panel


class MoranScatter(QWidget):
    """Matplotlib scatter of Moran's I (measured vs predicted); emits the clicked gene."""

    picked = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.4, 3.0), dpi=100, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        self.ax = self.figure.add_subplot(111)
        self.genes: list[str] = []
        self._xy = np.zeros((0, 2))
        self._mark = None
        self.canvas.mpl_connect("pick_event", self._on_pick)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.clear()

    def clear(self, msg: str = "no prediction") -> None:
        self.ax.clear()
        self.ax.set_title(msg, fontsize=9)
        self.canvas.draw_idle()

    def plot(self, genes, i_true, i_pred, ssc: float) -> None:
        ok = np.isfinite(i_true) & np.isfinite(i_pred)
        self.genes = [g for g, o in zip(genes, ok) if o]
        self._xy = np.c_[np.asarray(i_true)[ok], np.asarray(i_pred)[ok]]
        ax = self.ax
        ax.clear()
        ax.scatter(self._xy[:, 0], self._xy[:, 1], s=14, alpha=0.7, color="#1f77b4", picker=5, lw=0)
        if len(self._xy):
            lo = float(min(self._xy.min(), 0.0))
            hi = float(max(self._xy.max(), 0.1))
            ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls="--", zorder=0)
        ax.set_xlabel("Moran's I, measured", fontsize=8)
        ax.set_ylabel("Moran's I, predicted", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"SSC = {ssc:.3f}  ({len(self.genes)} genes)", fontsize=9)
        (self._mark,) = ax.plot([], [], "o", ms=9, mfc="none", mec="#d62728", mew=1.6)
        self.canvas.draw_idle()

    def mark(self, gene: str | None) -> None:
        if self._mark is None:
            return
        if gene in self.genes:
            x, y = self._xy[self.genes.index(gene)]
            self._mark.set_data([x], [y])
        else:
            self._mark.set_data([], [])
        self.canvas.draw_idle()

    def _on_pick(self, event) -> None:
        ind = getattr(event, "ind", None)
        if ind is not None and len(ind):
            self.picked.emit(self.genes[int(ind[0])])

    def pick_index(self, i: int) -> None:
        """Same as clicking dot ``i`` (used by tests and keyboard users)."""
        self.picked.emit(self.genes[i])


class MoransWidget(EvaluationJob, FlagWidget):
    """Global Moran's I table + scatter, and local Moran's I layers for the chosen gene."""

    _what = "Moran's I"

    computed = Signal(str)

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._init_evaluation()
        self.scatter = MoranScatter()
        self.local = QCheckBox("Local Moran's I maps of the chosen gene")
        self.local.setToolTip("Per-spot Moran's I, measured and predicted, as layers (red: clustered, blue: outlier)")
        self.table = gene_table(["gene", "I measured", "I predicted"])
        self.table.setToolTip("Click a gene to show it; click a header to sort")

        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.scatter)
        lay.addWidget(self.local)
        lay.addWidget(self.table, 1)

        self.scatter.picked.connect(self._pick)
        self.table.itemSelectionChanged.connect(self._on_row)
        self.local.toggled.connect(self._on_local)
        self.session.prediction_changed.connect(lambda key: self.compute())
        self.session.gene_changed.connect(self._on_gene)
        self.compute()

    def compute(self) -> None:
        key = self.session.prediction_key
        if key is None:
            self.scatter.clear()
            return
        self._start_evaluation(key)

    def _show(self, key: str, ev: dict) -> None:
        if key != self.session.prediction_key:
            return
        self.scatter.setVisible(ev["moran_true"] is not None)  # nothing to scatter against without truth
        if ev["moran_true"] is None:  # a prediction alone: its own spatial structure, sortable
            self.table.setHorizontalHeaderLabels(["gene", "I predicted", "mean predicted"])
            fill_gene_table(self.table, ev["genes"], [ev["moran_pred"], ev["mean_pred"]])
            self.title.setText(f"Global Moran's I of the prediction on the {ev['grid']} spot grid. "
                               f"{ev['missing']}.")
        else:
            ssc = ev["metrics"].get("SSC", float("nan"))
            self.scatter.plot(ev["genes"], ev["moran_true"], ev["moran_pred"], ssc)
            self.table.setHorizontalHeaderLabels(["gene", "I measured", "I predicted"])
            fill_gene_table(self.table, ev["genes"], [ev["moran_true"], ev["moran_pred"]])
            self.title.setText(
                f"Global Moran's I on the {ev['grid']} spot grid; SSC = {ssc:.3f} "
                f"(Pearson r of measured vs predicted I over genes)"
            )
        if self.session.gene:
            self._on_gene(self.session.gene)
        self.computed.emit(key)

    # -- gene selection
    @report_errors
    def _pick(self, gene: str) -> None:
        self.session.set_gene(gene)

    @report_errors
    def _on_row(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            it = self.table.item(rows[0].row(), 0)
            if it is not None:
                self.session.set_gene(it.text())

    def _on_gene(self, gene: str) -> None:
        self.scatter.mark(gene)
        select_gene_row(self.table, gene)
        if self.local.isChecked():
            self.update_local_maps()

    # -- local Moran's I layers
    @report_errors
    def _on_local(self, on: bool) -> None:
        if on:
            self.update_local_maps()
        else:
            key = self.session.prediction_key
            for lyr in prediction_layers(self.viewer, key, ("lisa_truth", "lisa_pred")).values():
                img = panel_map_layer(self.viewer, lyr)
                if img is not None:
                    self.viewer.layers.remove(img)
                self.viewer.layers.remove(lyr)
            if grid_model(self.viewer).enabled and self.session.prediction_key:
                arrange_side_by_side(self.viewer, self.session.prediction_key)

    @report_errors
    def update_local_maps(self) -> None:
        """Create or recolour the local Moran's I layers of the current gene."""
        from napari.layers import Layer

        key, gene = self.session.prediction_key, self.session.gene
        if key is None or gene is None:
            return
        vals = _analysis.local_moran(self.session, key, gene)
        clim = L.symmetric_limits(np.concatenate(list(vals.values())))
        have = prediction_layers(self.viewer, key, ("lisa_truth", "lisa_pred"))
        pred = predicted_map(self.viewer, key)
        ad = self.session.prediction
        sid = pred.metadata.get("sample_id", "") if pred is not None else ""
        added = False
        for role in ("lisa_pred", "lisa_truth"):
            if role not in vals:
                continue
            name = L.panel_name(sid, role, gene)
            if role in have:
                have[role].metadata["gene"] = gene
                recolor_panel(self.viewer, have[role], vals[role], clim, name=name)
                continue
            meta = dict(pred.metadata if pred is not None else {})
            meta.update({L.ROLE: role, "gene": gene, "clim": clim})
            t = L.values_layer_data(vals[role], np.asarray(ad.obsm["spatial"]), ad.obs_names, name=name,
                                    meta=meta, clim=clim, colormap=L.LISA_COLORMAP)
            self.viewer.add_layer(Layer.create(*t))
            added = True
        if added and grid_model(self.viewer).enabled:
            arrange_side_by_side(self.viewer, key)
