"""Record the stain reference of a checkpoint's training slides; weights and everything else unchanged.

    python scripts/set_stain_reference.py resources/flag_default.pt her2st:C2 her2st:C3 her2st:C4 \
        her2st:C5 her2st:C6 [--off]

For checkpoints trained before stain normalisation existed: the slides it was
trained on (anything ``load_sample`` opens; their ids must be the ones the
checkpoint lists as its training slides) are opened, their pooled Macenko
stains estimated as training does (``napari_flag.training`` records the same
for new runs), and written into the checkpoint (``stain``), with
``normalise: true`` (``--off``: recorded, but predictions normalise only when
asked).  The file is written atomically and must load back with
``weights_only=True``.
"""
from __future__ import annotations

import sys

from napari_flag._io import atomic_path
from napari_flag.checkpoint import load_checkpoint
from napari_flag.data import load_sample
from napari_flag.errors import FlagInputError
from napari_flag.features.stain_norm import checkpoint_reference


def main(argv=None) -> int:
    import torch

    from napari_flag.inference import encoder_for_checkpoint

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    path, on = argv[0], "--off" not in argv[1:]
    sources = [a for a in argv[1:] if a != "--off"]
    try:
        ckpt = load_checkpoint(path)
        samples = [load_sample(s) for s in sources]
        slides = sorted(str(s.sample_id) for s in samples)
        if not samples or slides != sorted(str(s) for s in ckpt.get("training_slides") or []):
            raise FlagInputError(f"{path}: pass its training slides ({', '.join(ckpt.get('training_slides') or [])}"
                                 f"); got {', '.join(slides) or 'none'}")
        stain = checkpoint_reference(samples, encoder_for_checkpoint({**ckpt, "path": path}, "cpu"), on)
    except (ValueError, FlagInputError) as exc:
        print(exc, file=sys.stderr)
        return 2
    ckpt["stain"] = stain
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    back = load_checkpoint(path)["stain"]  # loads back
    print(f"{path}: stain reference of {', '.join(slides)}: {back}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
