"""A volcano plot of a region comparison: each gene's difference against the posterior's confidence.

x: difference of the region averages (A - B); y: how sure the posterior is
of its sign, ``-log10 P(the other sign)`` (capped, as with too few samples to
see smaller tails).  Clicking a point picks its gene.
"""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

#: -log10 of the smallest tail probability shown (a normal's tail this far is already certain)
MAX_CONFIDENCE = 6.0


def confidence(prob_greater: np.ndarray) -> np.ndarray:
    """``-log10`` of the posterior probability of the sign opposite to the favoured one."""
    p = np.asarray(prob_greater, dtype=float)
    tail = np.clip(np.minimum(p, 1.0 - p), 10.0 ** -MAX_CONFIDENCE, 0.5)
    return -np.log10(tail)


class VolcanoPlot(QWidget):
    """The comparison's genes as points; ``gene_clicked`` says which one was picked."""

    gene_clicked = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.canvas.setMinimumHeight(220)
        self.ax = self.figure.add_subplot(111)
        self._genes: list[str] = []
        self._xy = np.zeros((0, 2))
        self.canvas.mpl_connect("button_press_event", self._on_click)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.show_comparison(None)

    def show_comparison(self, de, a: str = "A", b: str = "B", highlight: str | None = None) -> None:
        """Draw a :meth:`~napari_flag.roi.RegionResult.compare` table (``None`` clears the plot)."""
        ax = self.ax
        ax.clear()
        ax.set_xlabel(f"difference of averages ({a} − {b})")
        ax.set_ylabel("confidence in the sign (−log10 P)")
        if de is None or len(de) == 0:
            self._genes, self._xy = [], np.zeros((0, 2))
            ax.text(0.5, 0.5, "choose two regions", ha="center", va="center", transform=ax.transAxes, color="0.5")
            self.canvas.draw_idle()
            return
        x = de["difference"].to_numpy(float)
        y = confidence(de["prob_greater"].to_numpy(float))
        self._genes, self._xy = [str(g) for g in de["gene"]], np.c_[x, y]
        colours = np.where(y >= 2, np.where(x > 0, "#c0392b", "#2471a3"), "#9e9e9e")
        ax.scatter(x, y, s=12, c=colours, linewidths=0)
        ax.axhline(2.0, color="0.7", lw=0.7, ls="--")  # P = 0.01
        ax.axvline(0.0, color="0.8", lw=0.7)
        for k in np.argsort(-np.abs(x))[:8]:
            ax.annotate(self._genes[k], (x[k], y[k]), fontsize=7, xytext=(3, 2), textcoords="offset points")
        if highlight in self._genes:
            k = self._genes.index(highlight)
            ax.scatter([x[k]], [y[k]], s=60, facecolors="none", edgecolors="k", linewidths=1.2)
        self.canvas.draw_idle()

    def _on_click(self, event) -> None:
        if event.inaxes is not self.ax or not len(self._genes) or event.xdata is None:
            return
        span = np.ptp(self._xy, axis=0)
        span[span == 0] = 1.0
        d = np.hypot(*((self._xy - [event.xdata, event.ydata]) / span).T)
        self.gene_clicked.emit(self._genes[int(np.argmin(d))])
