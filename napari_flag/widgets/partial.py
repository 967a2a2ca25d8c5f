"""A whole slide's prediction as it is made: one Points layer that grows tile by tile.

The finished slide replaces it with the usual prediction layers; on Cancel it
is removed, or kept (renamed) when the user asked to keep finished tiles.
"""
from __future__ import annotations

import numpy as np

from .. import layers as L
from .session import get_session


class PartialPrediction:
    """The growing layer of the slide being predicted (at most one at a time)."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.layer = None
        self._gene: str | None = None

    def add(self, meta: dict, tile) -> None:
        """Draw a finished tile's spots, coloured by the session's gene (else the panel's first)."""
        if self.layer is None or self.layer not in self.viewer.layers:
            self.remove()  # the first tile, or the user deleted the layer: start again
            gene = get_session(self.viewer).gene
            self._gene = gene if gene in tile.genes else tile.genes[0]
            self._yx, self._values = np.zeros((0, 2)), np.zeros(0, np.float32)
        values = tile.mean[:, list(tile.genes).index(self._gene)].astype(np.float32)
        self._yx = np.vstack([self._yx, np.asarray(tile.coords, dtype=np.float64)[:, ::-1]])
        self._values = np.concatenate([self._values, values])
        name = (f"{meta.get('sample_id') or 'slide'} predicting · {self._gene} "
                f"({tile.index + 1}/{tile.count} tiles, {len(self._yx):,} spots)")
        if self.layer is not None:  # a layer's data and features cannot grow together: draw it anew
            self.viewer.layers.remove(self.layer)
        self.layer = self.viewer.add_points(
            self._yx, features={"value": self._values}, face_color="value", face_colormap="viridis",
            size=float(tile.spot_diameter_px), scale=L.world_scale(tile.pixel_size_um), border_width=0,
            units=L.world_units(tile.pixel_size_um), name=name,
            metadata={L.ROLE: "partial_prediction", "slide": meta.get("slide_layer"), "gene": self._gene},
        )

    def remove(self) -> None:
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self.layer = None

    def keep(self) -> None:
        """Leave what is done as a plain layer of its own (the next run starts a new one)."""
        if self.layer is not None and self.layer in self.viewer.layers:
            self.layer.name = self.layer.name.replace("predicting", "cancelled, kept")
        self.layer = None
