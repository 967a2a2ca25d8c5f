"""Set the sampler defaults a checkpoint predicts with; weights and everything else are unchanged.

    python scripts/set_sampler.py resources/flag_default.pt sample_count=2 sample_mean=blend sample_mean_like=8

Only sampler keys (``napari_flag.model.config.SAMPLER_KEYS``) may be set,
since they do not change what the network learned.  The checkpoint is
written atomically and must load back with ``weights_only=True``.
"""
from __future__ import annotations

import sys

import yaml

from napari_flag._io import atomic_path
from napari_flag.checkpoint import load_checkpoint
from napari_flag.model import FlagConfig
from napari_flag.model.config import SAMPLER_KEYS


def main(argv=None) -> int:
    import torch

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__)
        return 2
    path, pairs = argv[0], [a.split("=", 1) for a in argv[1:]]
    bad = [k for k, _ in pairs if k not in SAMPLER_KEYS]
    if bad:
        print(f"not sampler keys: {bad} (allowed: {SAMPLER_KEYS})", file=sys.stderr)
        return 2
    ckpt = load_checkpoint(path)
    cfg = dict(ckpt["model_config"])
    cfg.update({k: yaml.safe_load(v) for k, v in pairs})
    FlagConfig.from_dict(cfg)  # validates the values
    ckpt["model_config"] = cfg
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    back = load_checkpoint(path)  # must load back with weights_only=True
    print(f"{path}: " + ", ".join(f"{k}={back['model_config'][k]!r}" for k, _ in pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
