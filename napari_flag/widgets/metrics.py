"""Metrics panel: slide-level PCC, MSE, GSC, SSC, ARI/NMI, DEG overlap and a
sortable per-gene PCC table whose rows pick the displayed gene.

Numbers come from :func:`napari_flag.metrics.evaluate_adata`, as in
``napari-flag evaluate`` (run in a worker
thread: the spatial-domain clustering takes a moment on big slides).
"""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..record import PredictionRecord
from .base import FlagWidget
from .jobs import EvaluationJob
from .notify import report_errors

SUMMARY_ROWS = [
    ("PCC", "mean Pearson r over genes"),
    ("PCC-10", "mean r of the 10 best genes"),
    ("PCC-50", "mean r of the 50 best genes"),
    ("MSE", "mean squared error"),
    ("MAE", "mean absolute error"),
    ("GSC", "gene-gene correlation structure (Pearson)"),
    ("GSC-CCC", "gene-gene correlation structure (concordance)"),
    ("SSC", "spatial structure: r of Moran's I across genes"),
    ("ARI", "spatial domains agreement (adjusted Rand)"),
    ("NMI", "spatial domains agreement (mutual information)"),
    ("DEG", "overlap of top marker genes per domain"),
]


class NumItem(QTableWidgetItem):
    """A table cell that sorts by number (NaN last)."""

    def __init__(self, value: float, fmt: str = "{:.3f}"):
        super().__init__("–" if not np.isfinite(value) else fmt.format(value))
        self.value = float(value) if np.isfinite(value) else -np.inf
        self.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))

    def __lt__(self, other):
        if isinstance(other, NumItem):
            return self.value < other.value
        return super().__lt__(other)


def gene_table(columns: list[str]) -> QTableWidget:
    t = QTableWidget(0, len(columns))
    t.setHorizontalHeaderLabels(columns)
    t.setEditTriggers(QAbstractItemView.NoEditTriggers)
    t.setSelectionBehavior(QAbstractItemView.SelectRows)
    t.setSelectionMode(QAbstractItemView.SingleSelection)
    t.verticalHeader().setVisible(False)
    hdr = t.horizontalHeader()
    hdr.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)  # headers are never cut
    hdr.setStretchLastSection(True)
    t.setSortingEnabled(True)
    return t


def fill_gene_table(t: QTableWidget, genes, columns: list[np.ndarray], sort_col: int = 1) -> None:
    t.setSortingEnabled(False)
    t.setRowCount(len(genes))
    for i, g in enumerate(genes):
        it = QTableWidgetItem(g)
        it.setData(Qt.UserRole, g)
        t.setItem(i, 0, it)
        for j, col in enumerate(columns, start=1):
            t.setItem(i, j, NumItem(col[i]))
    t.setSortingEnabled(True)
    t.sortItems(sort_col, Qt.DescendingOrder)


def select_gene_row(t: QTableWidget, gene: str) -> None:
    for i in range(t.rowCount()):
        it = t.item(i, 0)
        if it is not None and it.text() == gene:
            if t.currentRow() != i:
                t.blockSignals(True)
                t.selectRow(i)
                t.blockSignals(False)
            t.scrollToItem(it)
            return


class MetricsWidget(EvaluationJob, FlagWidget):
    """Slide metrics of the current prediction and a per-gene PCC table."""

    _what = "metrics"

    computed = Signal(str)

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._init_evaluation()
        self.summary = QTableWidget(len(SUMMARY_ROWS), 2)
        self.summary.setHorizontalHeaderLabels(["metric", "value"])
        self.summary.verticalHeader().setVisible(False)
        self.summary.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.summary.horizontalHeader().setStretchLastSection(True)
        for i, (k, tip) in enumerate(SUMMARY_ROWS):
            it = QTableWidgetItem(k)
            it.setToolTip(tip)
            self.summary.setItem(i, 0, it)
            self.summary.setItem(i, 1, QTableWidgetItem("–"))
        self.summary.setMinimumHeight(200)
        self.genes = gene_table(["gene", "PCC", "mean measured", "mean predicted"])
        self.genes.setToolTip("Click a gene to show it; click a header to sort")
        self.refresh_btn = QPushButton("Recompute")

        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.summary)
        row = QHBoxLayout()
        row.addWidget(QLabel("Per-gene PCC (click to show)"))
        row.addStretch(1)
        row.addWidget(self.refresh_btn)
        lay.addLayout(row)
        lay.addWidget(self.genes, 1)

        self.genes.itemSelectionChanged.connect(self._on_row)
        self.refresh_btn.clicked.connect(lambda: self.compute(force=True))
        self.session.prediction_changed.connect(lambda key: self.compute())
        self.session.gene_changed.connect(lambda g: select_gene_row(self.genes, g))
        self.compute()

    def compute(self, force: bool = False) -> None:
        key = self.session.prediction_key
        if key is None:
            return
        if force:
            self.session.forget_evaluation(key)
            self._failed.discard(key)
        self._start_evaluation(key)

    def _show(self, key: str, ev: dict) -> None:
        if key != self.session.prediction_key:
            return
        if ev.get("missing"):  # nothing measured to score against: say exactly what is missing
            for i in range(len(SUMMARY_ROWS)):
                self.summary.setItem(i, 1, QTableWidgetItem("–"))
            self.genes.setRowCount(0)
            self.title.setText(f"No metrics: {ev['missing']}.")
            self.computed.emit(key)
            return
        m = ev["metrics"]
        for i, (k, _) in enumerate(SUMMARY_ROWS):
            v = m.get(k, float("nan"))
            self.summary.setItem(i, 1, QTableWidgetItem("–" if not np.isfinite(v) else f"{v:.3f}"))
        ad = self.session.prediction
        sid = PredictionRecord.of(ad).sample_id if ad is not None else ""
        text = f"{sid}: {len(ev['genes'])} genes, {ad.n_obs if ad is not None else '?'} spots (grid: {ev['grid']})"
        if ev.get("note"):  # an in-sample score says little about new slides
            text = f"<b>{ev['note']}</b>: these scores are not a held-out estimate.<br>{text}"
        self.title.setText(text)
        fill_gene_table(self.genes, ev["genes"], [ev["pcc"], ev["mean_true"], ev["mean_pred"]])
        if self.session.gene:
            select_gene_row(self.genes, self.session.gene)
        self.computed.emit(key)

    @report_errors
    def _on_row(self) -> None:
        rows = self.genes.selectionModel().selectedRows()
        if rows:
            it = self.genes.item(rows[0].row(), 0)
            if it is not None:
                self.session.set_gene(it.text())
