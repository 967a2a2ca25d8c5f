"""Regions dock: draw or load regions, learn what each expresses and how two differ, with the model's
uncertainty.

Regions are the polygons (rectangles, ellipses) of a Shapes layer, named by
the layer's ``name`` feature (shown as text; edit the selected shape's name
here), or a QuPath GeoJSON loaded into a new Shapes layer.  **Compute** runs
:func:`napari_flag.roi.region_stats` on the current prediction in a worker
(the same function as ``napari-flag regions`` and ``napari_flag.regions``):
joint posterior samples of the regions' spots, drawn again with the
prediction's model.  The *Regions* tab lists each region's spots and top
genes and, per gene, its average with a 95% interval; the *Compare* tab puts
two regions side by side (difference, interval, P(A > B), the measured
difference when the slide has one) as a sortable table and a volcano plot.
Clicking a gene shows its map.
"""
from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .. import layers as L
from ..inference import Progress
from ..record import PredictionRecord
from ..roi import DEFAULT_DRAWS, read_regions, region_stats, shape_names, write_geojson, write_table
from .base import FlagWidget
from .jobs import Cancelled, Done, Failed, run_worker
from .metrics import fill_gene_table, gene_table
from .notify import error_message, may_write, report_errors, show_error
from .volcano import VolcanoPlot

REGION_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]


def _regions_job(adata, regions, draws: int, seed: int):
    """Worker body: the posterior region statistics, with the sampler's progress."""
    from ..inference import callback_events

    def run(emit):
        return region_stats(adata, regions, n_draws=draws, seed=seed, source="regions",
                            progress=lambda d, t: emit(Progress("sampling", d, t)))

    result = yield from callback_events(run)
    yield Done("regions", result)


def regions_layer_kwargs(pixel_size_um: float | None, name: str = "regions", extent_px: float = 2000.0) -> dict:
    """How a regions Shapes layer looks: named shapes, their names as text, outlines only (as wide as
    0.3% of the slide's ``extent_px``: napari draws edges in data units)."""
    return dict(name=name, scale=L.world_scale(pixel_size_um), units=L.world_units(pixel_size_um),
                shape_type="polygon", edge_width=max(2.0, extent_px * 0.003),
                edge_color="#ffd400", face_color="transparent", features={"name": np.array([], dtype=object)},
                text={"string": "{name}", "size": 11, "color": "#ffd400", "anchor": "upper_left"})


class RegionsWidget(FlagWidget):
    """Region averages and two-region comparisons of the current prediction."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.result = None
        self._cancel = threading.Event()
        self._watched: weakref.WeakSet = weakref.WeakSet()
        self._build_controls()
        self._build_tabs()
        self._place()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.session.prediction_changed.connect(self._on_prediction)
        self.session.gene_changed.connect(self._on_gene)
        self._refresh_layers()
        self._on_prediction(self.session.prediction_key)

    # -- construction ------------------------------------------------------
    def _build_controls(self) -> None:
        self.layer_box = QComboBox()
        self.layer_box.setToolTip("The Shapes layer whose polygons are the regions")
        self.new_btn = QPushButton("New regions layer")
        self.load_btn = QPushButton("Load QuPath GeoJSON…")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("select a shape, type its name")
        self.draws = QSpinBox()
        self.draws.setRange(8, 1024)
        self.draws.setValue(DEFAULT_DRAWS)
        self.draws.setToolTip("Joint posterior samples behind the intervals (more: steadier, slower)")
        self._job_controls("Compute", "Cancel")
        self.prediction_label = QLabel("Run Predict on a slide first.")
        self.prediction_label.setWordWrap(True)
        self.new_btn.clicked.connect(self._new_layer)
        self.load_btn.clicked.connect(self._load_geojson)
        self.name_edit.editingFinished.connect(self._rename_selected)
        self.go_btn.clicked.connect(self.compute)
        self.halt_btn.clicked.connect(lambda: self._halt(self._cancel, "cancelling…"))

    def _build_tabs(self) -> None:
        self.regions_table = gene_table(["region", "spots", "top genes"])
        self.region_box = QComboBox()
        self.region_genes = gene_table(["gene", "mean", "lower", "upper", "measured"])
        self.a_box, self.b_box = QComboBox(), QComboBox()
        self.de_table = gene_table(["gene", "difference", "lower", "upper", "P(A>B)", "measured"])
        self.de_table.setToolTip("difference = average(A) − average(B); click a gene to show its map")
        self.volcano = VolcanoPlot()
        self.export_geojson_btn = QPushButton("Export GeoJSON…")
        self.export_csv_btn = QPushButton("Export CSV…")
        for b in (self.export_geojson_btn, self.export_csv_btn):
            b.setEnabled(False)
        self.region_box.currentTextChanged.connect(self._show_region)
        self.a_box.currentTextChanged.connect(self._show_comparison)
        self.b_box.currentTextChanged.connect(self._show_comparison)
        for t in (self.region_genes, self.de_table):
            t.itemSelectionChanged.connect(lambda t=t: self._gene_from_table(t))
        self.regions_table.itemSelectionChanged.connect(self._region_from_table)
        self.volcano.gene_clicked.connect(self._pick_gene)
        self.export_geojson_btn.clicked.connect(self._export_geojson)
        self.export_csv_btn.clicked.connect(self._export_csv)

    def _place(self) -> None:
        lay = QVBoxLayout(self)
        form = QFormLayout()
        form.addRow("regions layer", self.layer_box)
        row = QHBoxLayout()
        row.addWidget(self.new_btn)
        row.addWidget(self.load_btn)
        form.addRow(row)
        form.addRow("shape name", self.name_edit)
        form.addRow("posterior samples", self.draws)
        lay.addWidget(self.prediction_label)
        lay.addLayout(form)
        self._place_job_controls(lay)
        self.tabs = QTabWidget()
        one = QWidget()
        v = QVBoxLayout(one)
        v.addWidget(self.regions_table, 1)
        v.addWidget(self.region_box)
        v.addWidget(self.region_genes, 2)
        two = QWidget()
        v = QVBoxLayout(two)
        ab = QHBoxLayout()
        ab.addWidget(QLabel("A"))
        ab.addWidget(self.a_box, 1)
        ab.addWidget(QLabel("vs B"))
        ab.addWidget(self.b_box, 1)
        v.addLayout(ab)
        v.addWidget(self.de_table, 1)
        v.addWidget(self.volcano, 1)
        self.tabs.addTab(one, "Regions")
        self.tabs.addTab(two, "Compare")
        lay.addWidget(self.tabs, 1)
        row = QHBoxLayout()
        row.addWidget(self.export_geojson_btn)
        row.addWidget(self.export_csv_btn)
        lay.addLayout(row)

    # -- the regions layer -------------------------------------------------
    def _shapes_layers(self) -> list:
        from napari.layers import Shapes

        return [lyr for lyr in self.viewer.layers if isinstance(lyr, Shapes)]

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_box.currentText()
        names = [lyr.name for lyr in self._shapes_layers()]
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)
        elif names:
            self.layer_box.setCurrentIndex(len(names) - 1)
        self.layer_box.blockSignals(False)
        for lyr in self._shapes_layers():
            if lyr not in self._watched:  # follow the selection to show its name
                lyr.selected_data.events.items_changed.connect(self._on_selection)
                self._watched.add(lyr)

    @property
    def regions_layer(self):
        name = self.layer_box.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _pixel_size(self) -> float | None:
        ad = self.session.prediction
        return PredictionRecord.from_uns(ad.uns.get("flag")).pixel_size_um if ad is not None else None

    def _layer_kwargs(self, name: str) -> dict:
        ad = self.session.prediction
        extent = float(np.ptp(np.asarray(ad.obsm["spatial"]), axis=0).max()) if ad is not None and ad.n_obs else 2000.0
        return regions_layer_kwargs(self._pixel_size(), name, extent)

    @report_errors
    def _new_layer(self, *_) -> None:
        lyr = self.viewer.add_shapes(**self._layer_kwargs("regions"))
        lyr.feature_defaults = {"name": ""}
        lyr.mode = "add_polygon"
        self._refresh_layers()
        self.layer_box.setCurrentText(lyr.name)

    @report_errors
    def _load_geojson(self, *_, path: str | None = None) -> None:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "QuPath annotations", "", "GeoJSON (*.geojson *.json)")
        if path:
            self.add_regions_layer(read_regions(path), name=Path(path).stem)

    def add_regions_layer(self, regions, name: str = "regions"):
        """A Shapes layer with the exterior of every polygon of ``regions`` (full-res pixels), named."""
        data, names = [], []
        for r in regions:
            geoms = getattr(r.geometry, "geoms", [r.geometry])
            for g in geoms:
                if g.geom_type == "Polygon":
                    xy = np.asarray(g.exterior.coords)[:-1]
                    data.append(xy[:, ::-1])  # (x, y) -> napari (row, col)
                    names.append(r.name)
        kw = self._layer_kwargs(name)
        kw["features"] = {"name": np.asarray(names, dtype=object)}
        lyr = self.viewer.add_shapes(data, **kw)
        lyr.feature_defaults = {"name": ""}
        self._refresh_layers()
        self.layer_box.setCurrentText(lyr.name)
        return lyr

    def _on_selection(self, event=None) -> None:
        lyr = self.regions_layer
        sel = sorted(lyr.selected_data) if lyr is not None else []
        self.name_edit.setText(shape_names(lyr)[sel[0]] if len(sel) == 1 else "")

    @report_errors
    def _rename_selected(self) -> None:
        lyr = self.regions_layer
        if lyr is None or len(lyr.selected_data) == 0:
            return
        text = self.name_edit.text().strip()
        feats = lyr.features.copy()
        if "name" not in feats.columns:
            feats["name"] = [""] * len(lyr.data)
        feats["name"] = feats["name"].astype(object)
        for i in lyr.selected_data:
            feats.loc[feats.index[i], "name"] = text
        lyr.features = feats
        lyr.refresh_text()

    # -- computing ---------------------------------------------------------
    def _on_prediction(self, key) -> None:
        ad = self.session.prediction
        if ad is None:
            self.prediction_label.setText("Run Predict on a slide first.")
        else:
            rec = PredictionRecord.from_uns(ad.uns.get("flag"))
            self.prediction_label.setText(f"Prediction: {rec.sample_id or key} ({ad.n_obs} spots)")
        self.go_btn.setEnabled(ad is not None and not self.running)

    @report_errors
    def compute(self, *_) -> None:
        """Region statistics of the current prediction for the regions layer's shapes (in a worker)."""
        from ..errors import FlagInputError
        from ..roi import as_regions

        ad, lyr = self.session.prediction, self.regions_layer
        if ad is None:
            raise FlagInputError("no prediction: run Predict on a slide first")
        if lyr is None or len(lyr.data) == 0:
            raise FlagInputError("no regions: draw polygons in a Shapes layer or load a QuPath GeoJSON")
        regions = as_regions(lyr, self._pixel_size())
        self._cancel.clear()
        self._outcome = "finished"
        self._run_job(run_worker(_regions_job, ad, regions, int(self.draws.value()), 0, cancel=self._cancel),
                      f"drawing {self.draws.value()} joint samples of the regions' spots…")

    def _on_event(self, ev) -> None:
        if isinstance(ev, Progress):
            self.bar.setRange(0, max(ev.total, 1))
            self.bar.setValue(ev.done)
        elif isinstance(ev, Done):
            self.show_result(ev.value)
        elif isinstance(ev, Failed):
            self._outcome = "error"
            self.status.setText(f"Failed: {error_message(ev.error)}")
            show_error(ev.error)
        elif isinstance(ev, Cancelled):
            self._outcome = "cancelled"

    def _finished_text(self) -> str | None:
        if self._outcome == "cancelled":
            return "Cancelled."
        if self._outcome == "finished" and self.result is not None:
            i = self.result.info
            return (f"{len(self.result.names)} regions: {i['n_draws']} joint samples of {i['sampled_spots']} "
                    f"spots in {i['seconds']:.1f} s; intervals: 95% credible")
        return None

    # -- showing -----------------------------------------------------------
    def show_result(self, result) -> None:
        """Fill the tables (and the plot) from a :class:`~napari_flag.roi.RegionResult`."""
        self.result = result
        self.regions_table.setSortingEnabled(False)
        fill_gene_table(self.regions_table, result.names, [result.n_spots.astype(float)], sort_col=1)
        self.regions_table.setSortingEnabled(False)
        from qtpy.QtWidgets import QTableWidgetItem

        for i in range(self.regions_table.rowCount()):
            name = self.regions_table.item(i, 0).text()
            self.regions_table.setItem(i, 2, QTableWidgetItem(", ".join(result.top_genes(name, 5))))
        self.regions_table.setSortingEnabled(True)
        for box in (self.region_box, self.a_box, self.b_box):
            box.blockSignals(True)
            box.clear()
            box.addItems(result.names)
            box.blockSignals(False)
        if len(result.names) > 1:
            self.b_box.setCurrentIndex(1)
        self._show_region(self.region_box.currentText())
        self._show_comparison()
        for b in (self.export_geojson_btn, self.export_csv_btn):
            b.setEnabled(True)

    def _show_region(self, name: str) -> None:
        if self.result is None or name not in self.result.names:
            return
        s = self.result.summary()
        s = s[s["region"] == name]
        meas = s["measured"].to_numpy() if "measured" in s else np.full(len(s), np.nan)
        fill_gene_table(self.region_genes, s["gene"].tolist(),
                        [s["mean"].to_numpy(), s["lower"].to_numpy(), s["upper"].to_numpy(), meas])

    def comparison(self):
        """The comparison shown (A, B, table), or ``None``."""
        a, b = self.a_box.currentText(), self.b_box.currentText()
        if self.result is None or not a or not b or a == b:
            return None
        return a, b, self.result.compare(a, b)

    def _show_comparison(self, *_) -> None:
        comp = self.comparison()
        if comp is None:
            self.de_table.setRowCount(0)
            self.volcano.show_comparison(None)
            return
        a, b, de = comp
        meas = de["measured_difference"].to_numpy() if "measured_difference" in de else np.full(len(de), np.nan)
        fill_gene_table(self.de_table, de["gene"].tolist(),
                        [de["difference"].to_numpy(), de["lower"].to_numpy(), de["upper"].to_numpy(),
                         de["prob_greater"].to_numpy(), meas], sort_col=1)
        self.de_table.sortItems(1, Qt.DescendingOrder)
        self.volcano.show_comparison(de, a, b, highlight=self.session.gene)

    def _region_from_table(self) -> None:
        rows = self.regions_table.selectionModel().selectedRows()
        if rows:
            self.region_box.setCurrentText(self.regions_table.item(rows[0].row(), 0).text())

    def _gene_from_table(self, table) -> None:
        rows = table.selectionModel().selectedRows()
        if rows:
            self._pick_gene(table.item(rows[0].row(), 0).text())

    @report_errors
    def _pick_gene(self, gene: str) -> None:
        self.session.set_gene(gene)

    def _on_gene(self, gene: str) -> None:
        comp = self.comparison()
        if comp is not None:
            self.volcano.show_comparison(comp[2], comp[0], comp[1], highlight=gene)

    # -- export ------------------------------------------------------------
    @report_errors
    def _export_geojson(self, *_, path: str | None = None) -> None:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Regions for QuPath", "regions.geojson", "GeoJSON (*.geojson)")
        if path and may_write(path, self):
            write_geojson(self.result, path, overwrite=True)
            self.status.setText(f"Wrote {path}")

    @report_errors
    def _export_csv(self, *_, path: str | None = None) -> None:
        """The summary to ``path``; the comparison shown, if any, beside it (``<stem>_A_vs_B.csv``)."""
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Region summary", "regions.csv", "CSV (*.csv)")
        if not path or not may_write(path, self):
            return
        write_table(self.result.summary(), path, overwrite=True)
        comp = self.comparison()
        if comp is not None:
            p = Path(path)
            de_path = p.with_name(f"{p.stem}_{_slug(comp[0])}_vs_{_slug(comp[1])}.csv")
            if may_write(de_path, self):
                write_table(comp[2], de_path, overwrite=True)
        self.status.setText(f"Wrote {path}")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
