"""napari dock widgets (the only part of napari-flag that imports Qt/napari).

predict.PredictWidget ("Predict expression"), gene_maps.GeneMapsWidget ("Gene
maps"), morans.MoransWidget ("Moran's I"), metrics.MetricsWidget ("Metrics"),
trainer.TrainerWidget ("Train FLAG"), export.ExportWidget ("Export").  They
share one per-viewer session (session.get_session): current prediction and gene.

Shared parts: base (FlagWidget), session (FlagSession), lookup (layers and
their objects in a viewer), painting (gene colours, image panels), jobs
(workers, shared evaluation), notify (notifications, overwrite questions).
"""
