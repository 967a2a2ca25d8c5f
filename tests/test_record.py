"""The prediction record: written once, read back typed, older files still open."""
from __future__ import annotations

import anndata as ad
import numpy as np

from napari_flag.record import SCHEMA_VERSION, PredictionRecord


def test_record_round_trips_through_h5ad(tmp_path):
    rec = PredictionRecord(checkpoint="m.pt", method="flag", steps=4, samples=2, seed=3, sample_id="C2",
                           pixel_size_um=0.69, grid="square", virtual_spots=True, training_slides=["her2st:C3"],
                           compatibility={"gene_share": {"level": "warning", "message": "few genes"}},
                           timings={"tiles": {"wall_s": 1.5, "tiles": 3}},
                           tissue_mask={"packed": np.packbits(np.ones(10, bool)), "shape": np.array([2, 5]),
                                        "fullres_per_px": 4.0, "source": "x"})
    a = ad.AnnData(np.zeros((2, 1), np.float32))
    a.uns["flag"] = rec.to_uns()
    assert "temperature" not in a.uns["flag"]  # None is left out (h5ad has no None)
    a.write_h5ad(tmp_path / "p.h5ad")
    back = PredictionRecord.of(ad.read_h5ad(tmp_path / "p.h5ad"))
    assert back.schema_version == SCHEMA_VERSION and back.steps == 4 and back.seed == 3
    assert back.training_slides == ["her2st:C3"] and back.virtual_spots is True and back.grid == "square"
    assert back.compatibility["gene_share"]["message"] == "few genes"
    assert back.timings["tiles"]["tiles"] == 3 and back.temperature is None
    np.testing.assert_array_equal(back.tissue_mask["packed"], rec.tissue_mask["packed"])


def test_older_and_foreign_files_open_with_defaults():
    old = PredictionRecord.from_uns({"sample_id": "C4", "steps": 8, "samples": 8, "transform": "log1p",
                                     "some_key_of_the_future": 1})
    assert old.schema_version == 1 and old.sample_id == "C4" and old.transform == "log1p" and old.tissue is None
    assert PredictionRecord.from_uns({"sample_id": "x"}).transform is None  # not recorded: nothing to check against
    none = PredictionRecord.of(ad.AnnData(np.zeros((1, 1))))
    assert none.schema_version == 0 and none.name == "this slide" and not none.in_training_set
    assert PredictionRecord.from_uns("not a mapping").schema_version == 0
