"""Gene maps: pick a gene, see predicted vs measured (and uncertainty) side by side.

Switching gene only rewrites one feature column per layer and its contrast
limits (see :func:`napari_flag.widgets.painting.apply_gene`); on large slides the
panels are images of the spots, so the repaint stays under the 100 ms budget on
a 5,000-spot slide even on a software renderer (``benchmarks/gene_switch.py``).
Layout of the side-by-side view: :mod:`napari_flag.widgets._grid`.
"""
from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from .. import layers as L
from ..data.panel import SCALE_UNITS
from ..record import PredictionRecord
from ._grid import arrange_side_by_side, grid_model, leave_side_by_side
from .base import FlagWidget
from .lookup import prediction_keys, prediction_labels, prediction_layers
from .notify import report_errors
from .painting import panel_map_layer


class ColorbarCanvas(QWidget):
    """The colour legend of what the canvas shows, drawn with matplotlib.

    Up to three rows: expression (shared by predicted and measured, or the
    slide's total counts before any prediction), uncertainty, and local
    Moran's I when its maps are shown.  The figure is built once;
    :meth:`set_limits` only moves tick labels and titles, and the redraw is
    deferred a few tens of milliseconds (restarted on every call) so that
    scrolling through genes repaints the maps first and the legend once, when
    the user pauses.
    """

    DELAY_MS = 40
    ROWS = ("expr", "unc", "lisa")

    def __init__(self, parent=None):
        super().__init__(parent)
        import numpy as np
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from qtpy.QtCore import QTimer

        self.figure = Figure(figsize=(3.2, 2.0), dpi=100)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)
        grad = np.linspace(0, 1, 256)[None, :]
        self.axes = {}
        cmaps = {"expr": L.EXPRESSION_COLORMAP, "unc": L.UNCERTAINTY_COLORMAP, "lisa": L.LISA_COLORMAP}
        for row in self.ROWS:
            ax = self.figure.add_axes((0.05, 0.0, 0.9, 0.1))
            ax.imshow(grad, aspect="auto", cmap=cmaps[row], extent=(0, 1, 0, 1))
            ax.set_yticks([])
            ax.tick_params(labelsize=7, length=2, pad=1)
            self.axes[row] = ax
        self.limits: dict[str, tuple[float, float] | None] = {"expr": (0.0, 1.0), "unc": None, "lisa": None}
        self._titles = {"expr": "", "unc": "", "lisa": ""}
        #: called at redraw for the local Moran's I range (``None``: not shown)
        self.lisa_limits = lambda: None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.redraw)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.set_limits(None, (0.0, 1.0), None)
        self.redraw()

    def set_limits(self, gene, expr, unc, unit: str = "log2(1+count)", title: str | None = None,
                   measured: bool = True) -> None:
        """Ranges of the maps of ``gene``; ``title`` replaces the expression row's
        title (e.g. the slide's total counts before a prediction); ``measured``:
        whether the slide has measured expression sharing the range."""
        self.limits.update(expr=None if expr is None else tuple(expr), unc=None if unc is None else tuple(unc))
        g = gene or "gene"
        what = "predicted & measured" if measured else "predicted"
        self._titles["expr"] = title or f"{g}: {what}, {unit}"
        self._titles["unc"] = f"{g}: uncertainty (std over samples)"
        self._titles["lisa"] = f"{g}: local Moran's I (red: like its neighbours, blue: unlike)"
        self._timer.start(self.DELAY_MS)

    @staticmethod
    def _ticks(ax, lo: float, hi: float) -> None:
        from matplotlib.ticker import MaxNLocator

        vals = [v for v in MaxNLocator(5).tick_values(lo, hi) if lo <= v <= hi] or [lo, hi]
        span = (hi - lo) or 1.0
        ax.set_xticks([(v - lo) / span for v in vals])
        ax.set_xticklabels([f"{v:.3g}" for v in vals])

    def shown_rows(self) -> list[str]:
        return [r for r in self.ROWS if self.limits.get(r) is not None]

    def titles(self) -> list[str]:
        """Titles of the rows shown (what the legend says)."""
        return [self._titles[r] for r in self.shown_rows()]

    def redraw(self) -> None:
        """Apply the pending limits and draw now."""
        self._timer.stop()
        lisa = self.lisa_limits()
        self.limits["lisa"] = None if lisa is None else tuple(lisa)
        rows = self.shown_rows()
        h = 1.0 / max(len(rows), 1)
        for row, ax in self.axes.items():
            ax.set_visible(row in rows)
        for i, row in enumerate(rows):  # top to bottom, each row a bar with its title above
            ax = self.axes[row]
            ax.set_position((0.05, 1.0 - (i + 1) * h + 0.42 * h, 0.9, 0.2 * h if len(rows) > 2 else 0.25 * h))
            self._ticks(ax, *self.limits[row])
            ax.set_title(self._titles[row], fontsize=8, pad=2)
        self.canvas.draw_idle()


class GenePicker(QWidget):
    """A filter box over a list of genes; Enter picks the first match."""

    picked = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.search = QLineEdit()
        self.search.setPlaceholderText("search gene…")
        self.search.setClearButtonEnabled(True)
        self.list = QListWidget()
        self.list.setMinimumHeight(120)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.search)
        lay.addWidget(self.list)
        self.search.textChanged.connect(self.filter)
        self.search.returnPressed.connect(self._pick_first)
        self.list.currentTextChanged.connect(self._on_current)
        self._quiet = False

    def set_genes(self, genes) -> None:
        self._quiet = True
        self.list.clear()
        self.list.addItems(list(genes))
        self._quiet = False
        self.filter(self.search.text())

    def genes(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def visible_genes(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count()) if not self.list.item(i).isHidden()]

    def filter(self, text: str) -> None:
        t = (text or "").strip().lower()
        for i in range(self.list.count()):
            it = self.list.item(i)
            it.setHidden(bool(t) and t not in it.text().lower())

    def select(self, gene: str) -> None:
        items = self.list.findItems(gene, Qt.MatchExactly)
        if items and self.list.currentItem() is not items[0]:
            self._quiet = True
            self.list.setCurrentItem(items[0])
            self.list.scrollToItem(items[0])
            self._quiet = False

    def _pick_first(self) -> None:
        vis = self.visible_genes()
        if vis:
            t = self.search.text().strip().lower()
            exact = [g for g in vis if g.lower() == t]
            self.picked.emit(exact[0] if exact else vis[0])

    def _on_current(self, text: str) -> None:
        if text and not self._quiet:
            self.picked.emit(text)


class GeneMapsWidget(FlagWidget):
    """Searchable gene picker, side-by-side toggle and a shared colour legend."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)

        self.pred_combo = QComboBox()
        self.pred_combo.setToolTip("Which prediction to show")
        self.picker = GenePicker()
        # the gene list takes the spare height (napari pads a dock without such a widget)
        self.picker.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.side = QCheckBox("Side by side (predicted | measured | uncertainty)")
        self.side.setToolTip("Grid view with linked pan/zoom; each panel over its own copy of the H&E")
        self.info = QLabel("Run Predict to get gene maps.")
        self.info.setWordWrap(True)
        self.colorbar = ColorbarCanvas()

        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("Prediction"))
        row.addWidget(self.pred_combo, 1)
        lay.addLayout(row)
        lay.addWidget(self.picker, 1)
        lay.addWidget(self.side)
        lay.addWidget(self.colorbar)
        lay.addWidget(self.info)

        self.picker.picked.connect(self.set_gene)
        self.pred_combo.currentIndexChanged.connect(self._on_combo)
        self.side.toggled.connect(self.set_side_by_side)
        self.session.gene_changed.connect(self._on_gene)
        self.session.prediction_changed.connect(self._on_prediction)
        self.session.predictions_updated.connect(self._refresh_predictions)
        self.colorbar.lisa_limits = self._lisa_limits
        ev = self.viewer.layers.events
        ev.inserted.connect(self._on_layers)
        ev.removed.connect(self._on_layers)
        self._refresh_predictions()
        self._on_prediction(self.session.prediction_key)

    # -- legend
    def _lisa_limits(self):
        """Range of the local Moran's I maps of the current prediction, when there are any."""
        lyrs = prediction_layers(self.viewer, self.session.prediction_key, ("lisa_pred", "lisa_truth"))
        for lyr in lyrs.values():
            img = panel_map_layer(self.viewer, lyr)
            shown = lyr.visible or (img is not None and img.visible)
            if shown and lyr.metadata.get("clim") is not None:
                return lyr.metadata["clim"]
        return None

    def _spots_legend(self) -> None:
        """Before a prediction: the legend of the slide's spots (total counts per spot)."""
        for lyr in reversed(list(self.viewer.layers)):
            md = lyr.metadata or {}
            if md.get(L.ROLE) == "spots" and lyr.visible and "total_counts" in getattr(lyr, "features", {}):
                lo, hi = (float(x) for x in lyr.face_contrast_limits)
                self.colorbar.set_limits(None, (lo, hi), None,
                                         title=f"{md.get('sample_id', 'spots')} spots: total counts per spot")
                return
        self.colorbar.set_limits(None, None, None)

    def _on_layers(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.visible.connect(self._on_layers)  # a legend row per map shown
        if self.session.prediction is None:
            self._spots_legend()
        else:
            self.colorbar._timer.start(self.colorbar.DELAY_MS)  # local Moran's I maps come and go

    # -- predictions
    def _refresh_predictions(self) -> None:
        keys = prediction_keys(self.viewer)
        self.pred_combo.blockSignals(True)
        self.pred_combo.clear()
        for k, label in zip(keys, prediction_labels(keys, [self.session.prediction_of(k) for k in keys])):
            self.pred_combo.addItem(label, k)
        cur = self.session.prediction_key
        if cur in keys:
            self.pred_combo.setCurrentIndex(keys.index(cur))
        self.pred_combo.blockSignals(False)

    @report_errors
    def _on_combo(self, index: int) -> None:
        key = self.pred_combo.itemData(index)
        if key:
            self.session.set_prediction(key)

    def _on_prediction(self, key) -> None:
        self._refresh_predictions()
        self.picker.set_genes(self.session.genes())
        if key is None:
            self.info.setText("Run Predict to get gene maps.")
            self._spots_legend()
            return
        if self.session.gene:
            self._on_gene(self.session.gene)
        if self.side.isChecked():
            arrange_side_by_side(self.viewer, key)

    # -- genes
    @report_errors
    def set_gene(self, gene: str) -> None:
        self.session.set_gene(gene)

    def _on_gene(self, gene: str) -> None:
        self.picker.select(gene)
        lyrs = prediction_layers(self.viewer, self.session.prediction_key, ("pred", "truth", "std"))
        expr = self.session.clim or (0.0, 1.0)
        unc = lyrs["std"].metadata.get("clim") if "std" in lyrs else None
        ad = self.session.prediction
        unit = (PredictionRecord.of(ad).transform if ad is not None else "") or "log2p1"
        unit = SCALE_UNITS.get(unit, unit)
        measured = "truth" in lyrs
        self.colorbar.set_limits(gene, expr, unc, unit, measured=measured)
        basis = "measured ∪ predicted" if measured else "predicted; no measured expression here"
        self.info.setText(f"{gene}: colour range {expr[0]:.2f}–{expr[1]:.2f} (1–99th percentile of {basis})"
                          + (", same on both panels" if measured else ""))

    # -- layout
    @report_errors
    def set_side_by_side(self, on: bool) -> None:
        key = self.session.prediction_key
        if on:
            if key is None:
                self.side.blockSignals(True)
                self.side.setChecked(False)
                self.side.blockSignals(False)
                self.info.setText("Run Predict first.")
                return
            arrange_side_by_side(self.viewer, key)
        elif grid_model(self.viewer).enabled:
            leave_side_by_side(self.viewer, key)
