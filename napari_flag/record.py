"""What a prediction file says about the run that made it: ``uns["flag"]``, as one typed record.

Every reader goes through :class:`PredictionRecord` (``PredictionRecord.of(adata)``)
instead of reading keys by string; :meth:`PredictionRecord.to_uns` is the one
place that writes them.  Files written before the record existed (no
``schema_version``) open with the defaults for what they lack.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["PredictionRecord", "SCHEMA_VERSION"]

#: version of the ``uns["flag"]`` layout this code writes
SCHEMA_VERSION = 2


@dataclass
class PredictionRecord:
    """The run behind a prediction: model, sampler, slide, spots, tissue, compatibility, timings."""

    # model
    checkpoint: str = ""
    method: str = ""
    model_version: str = ""
    training_slides: list = field(default_factory=list)
    in_training_set: bool = False
    encoder: str = ""
    encoder_dim: int = 0
    patch_um: float = 0.0
    patch_px: int = 0
    stain_norm: dict | None = None  # reference and slide stains when the patches were normalised
    # sampler
    steps: int = 0
    samples: int = 1
    solver: str = ""
    mean_rule: str = ""
    temperature: float | None = None
    network_calls_per_spot: int | None = None
    seed: int = 0
    # values
    transform: str | None = None  # None: not recorded (older files); readers default to log2p1
    scale: str = ""
    truth_genes: int | None = None
    truth_missing_genes: list | None = None
    # slide and spots
    sample_id: str = ""
    source: str = ""
    spot_diameter_px: float = 0.0
    pixel_size_um: float | None = None
    grid: str | None = None
    virtual_spots: bool = False
    spot_geometry: dict | None = None
    tissue: dict | None = None
    tissue_mask: dict | None = None
    # checks and costs
    compatibility: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    version: str = ""
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_uns(cls, flag: Any) -> "PredictionRecord":
        """From a ``uns["flag"]`` mapping (any version; unknown keys are ignored, missing ones default)."""
        if not hasattr(flag, "get"):
            return cls(schema_version=0)
        known = {f.name for f in fields(cls)}
        values = {k: _plain(v) for k, v in dict(flag).items() if k in known}
        values.setdefault("schema_version", 1 if flag else 0)  # before the record: version 1
        return cls(**values)

    @classmethod
    def of(cls, adata) -> "PredictionRecord":
        """The record of a prediction AnnData (an empty one for other AnnData)."""
        uns = getattr(adata, "uns", None) or {}
        return cls.from_uns(uns.get("flag", {}))

    def to_uns(self) -> dict:
        """``uns["flag"]``: every field that has a value (``None`` is left out: h5ad cannot store it)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def name(self) -> str:
        return self.sample_id or "this slide"


def _plain(v):
    """h5ad gives numpy scalars and arrays back; the record holds Python values (masks stay arrays)."""
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.dtype.kind in "OU" and v.ndim == 1:
        return [str(x) for x in v]
    return v
