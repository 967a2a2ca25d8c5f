"""Ship a trained checkpoint as the bundled default model.

    python scripts/export_default.py runs/her2st_default/last.pt [resources/flag_default.pt]

Drops the resume-only state (optimizer, raw weights, RNG) so the file stays
small, and writes it atomically.
"""
from __future__ import annotations

import sys

from napari_flag import resources_dir
from napari_flag.checkpoint import export_checkpoint, load_model


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    dst = argv[1] if len(argv) > 1 else str(resources_dir() / "flag_default.pt")
    out = export_checkpoint(argv[0], dst)
    model, meta = load_model(out, "cpu")  # must load back with weights_only=True
    print(f"{out}: {len(meta.genes)} genes, {sum(p.numel() for p in model.parameters())} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
