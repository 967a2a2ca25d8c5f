"""napari dock widgets (the only part of napari-flag that imports Qt/napari).

predict.PredictWidget ("Predict expression"), gene_maps.GeneMapsWidget ("Gene
maps"), morans.MoransWidget ("Moran's I"), metrics.MetricsWidget ("Metrics"),
trainer.TrainerWidget ("Train FLAG"), export.ExportWidget ("Export").  They
share one per-viewer session (_common.get_session): current prediction and gene.
"""
