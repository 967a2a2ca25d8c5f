"""Set the sampler defaults a checkpoint predicts with; weights and everything else are unchanged.

    python scripts/set_sampler.py resources/flag_default.pt sample_count=2 sample_mean=blend sample_mean_like=8

Only keys of the model's sampler (``napari_flag.model.config.SamplerConfig``: flat keys such as
``sample_temperature`` or ``guidance``, or ``sampler.<field>``) may be set, since they do not change
what the network learned.  The checkpoint's ``model_config`` is written back in the current
(nested) layout; the file is written atomically and must load back with ``weights_only=True``.
"""
from __future__ import annotations

import sys

import yaml

from napari_flag._io import atomic_path
from napari_flag.checkpoint import load_checkpoint
from napari_flag.errors import FlagInputError
from napari_flag.model import FlagConfig
from napari_flag.model.config import SamplerConfig, route


def sampler_changes(pairs: list[tuple[str, str]]) -> dict:
    """``{field: value}`` of the sampler from ``key=value`` pairs; any other key is an error naming it."""
    out = {}
    for key, text in pairs:
        part, dot, name = key.partition(".")
        routed = route({part: {name: text}} if dot else {key: text})  # an unknown key: an error naming it
        if not routed["sampler"]:
            raise ValueError(f"{key!r} is not a sampler key (it changes what the network was trained with)")
        out.update({k: yaml.safe_load(v) for k, v in routed["sampler"].items()})
    return out


def main(argv=None) -> int:
    import torch

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__)
        return 2
    path = argv[0]
    try:
        changes = sampler_changes([tuple(a.split("=", 1)) for a in argv[1:]])
        ckpt = load_checkpoint(path)
        cfg = FlagConfig.from_dict(ckpt["model_config"])
        cfg = cfg.replace(sampler=cfg.sampler.replace(**changes))  # validates the values
    except (ValueError, FlagInputError) as exc:
        print(exc, file=sys.stderr)
        return 2
    ckpt["model_config"] = cfg.to_dict()
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    back: SamplerConfig = FlagConfig.from_dict(load_checkpoint(path)["model_config"]).sampler  # loads back
    print(f"{path}: " + ", ".join(f"sampler.{k}={getattr(back, k)!r}" for k in changes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
