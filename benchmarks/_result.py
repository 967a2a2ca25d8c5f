"""What every benchmark result records: the command, the machine, and an atomic write."""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

from napari_flag._io import atomic_write_text


def command(argv=None) -> str:
    return "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *(argv or sys.argv[1:])])


def machine(extra: str) -> str:
    import torch

    import napari_flag

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.platform()}; {os.cpu_count()} CPU cores; torch {torch.__version__}; "
            f"napari-flag {napari_flag.__version__}; {extra}; 1-min load average {load:.1f} at the end")


def write_json(result: dict, out: str | Path) -> Path:
    """Write via a temporary file and rename, so a killed run leaves the old result intact."""
    return atomic_write_text(out, json.dumps(result, indent=1, default=float))
