"""Record in a checkpoint trained before napari-flag did so which slides it saw and their spot geometry.

    python scripts/record_training_geometry.py resources/flag_default.pt

Loads the training slides named in the checkpoint's ``train_config``, measures
their spot lattice (``napari_flag.data.lattice.training_geometry``: what
virtual spots on image-only slides copy) and writes both back atomically;
weights and everything else are unchanged.
"""
from __future__ import annotations

import sys

from napari_flag._io import atomic_path
from napari_flag.checkpoint import load_checkpoint
from napari_flag.data import load_sample
from napari_flag.data.lattice import training_geometry


def main(argv=None) -> int:
    import torch

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    ckpt = load_checkpoint(argv[0])
    samples = [load_sample(s) for s in (ckpt.get("train_config") or {}).get("train", [])]
    geom = training_geometry(samples)
    if geom is None:
        print(f"{argv[0]}: no training slide has a measurable spot lattice", file=sys.stderr)
        return 1
    ckpt["spot_geometry"] = geom.to_dict()
    ckpt["training_slides"] = [str(s.sample_id) for s in samples]
    with atomic_path(argv[0]) as tmp:
        torch.save(ckpt, tmp)
    load_checkpoint(argv[0])  # must load back with weights_only=True
    print(f"{argv[0]}: {ckpt['training_slides']}, spot geometry {ckpt['spot_geometry']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
