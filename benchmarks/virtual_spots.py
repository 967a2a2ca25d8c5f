"""Virtual spots on real slides: HER2ST C2-C6 predicted as routine H&E, scored against the measured spots.

    python benchmarks/virtual_spots.py --runs /work/runs/her2st_loso --work /tmp/virtual_spots

For every section Ck:

* its H&E is written as a pyramidal OME-TIFF at full resolution with the
  section's measured pixel size (``write_ome_tiff``) and given to
  :func:`~napari_flag.inference.predict_sample` *without* spots, so it gets
  virtual spots over its detected tissue with the model's spots (legacy ST:
  100 um on a square lattice) at the default pitch (the model's 200 um,
  refined until the encoder's patches tile the tissue: 100 um), and at the
  pitches of ``--spacings-um`` (e.g. the model's own 200 um);
* with ``--tile-spots N``, the default pitch once more, predicted region by
  region in tiles of N spots (:mod:`napari_flag.streaming`), to compare with
  the whole-section run;
* the same file with the measured spots is predicted in spot mode by the same
  model with the same sampler and seed;
* the model is Ck's leave-one-section-out FLAG fold (trained on the other four
  sections), copied and given its training geometry
  (``scripts/record_training_geometry.py``), so Ck is never in its training set.

Each measured spot takes the prediction of its nearest virtual spot, and both
modes are scored with :func:`napari_flag.metrics.evaluate` on the measured
spots (their coordinates and array lattice).  Also reported per section: the
share of measured spots with a virtual spot within 0.75 spacing (how well the
tissue detection covers what was sequenced) and the share of virtual spots
outside the tissue the measured spots cover, i.e. farther than one spot
radius plus one spacing from every measured spot (how much the detection adds
beyond it; HER2ST's measured spots are those under tissue inside the array
frame, so tissue outside the frame counts here too).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from _result import command, machine, write_json

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]
KEYS = ("PCC", "GSC", "SSC")


def _slide(section: str, measured, work: Path) -> Path:
    """Ck's H&E at full resolution as a pyramidal OME-TIFF with its pixel size (built once)."""
    import numpy as np
    from PIL import Image

    from napari_flag.data.images import write_ome_tiff

    path = work / "slides" / f"{section}.ome.tif"
    if path.is_file():
        return path
    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        arr = np.asarray(Image.open(measured.image.path).convert("RGB"))
    finally:
        Image.MAX_IMAGE_PIXELS = old
    assert arr.shape[:2] == measured.image.shape[:2]
    return write_ome_tiff(arr, path, pixel_size_um=float(measured.pixel_size_um))


def _model(section: str, runs: Path, work: Path, sampler: list[str] = ()) -> Path:
    """A copy of Ck's fold model with its training slides and spot geometry recorded, and the
    sampler settings ``sampler`` (``key=value``, as ``scripts/set_sampler.py`` takes them)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import record_training_geometry
    import set_sampler

    from napari_flag.checkpoint import load_checkpoint

    # one copy per sampler setting, so a copy made for other settings is never picked up
    dst = work / "models" / ("_".join([f"{section}_flag", *sampler]).replace("=", "-") + ".pt")
    if not (dst.is_file() and load_checkpoint(dst).get("spot_geometry")):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(runs / f"{section}_flag" / "last.pt", dst)
        assert record_training_geometry.main([str(dst)]) == 0
        if sampler:
            assert set_sampler.main([str(dst), *sampler]) == 0
    return dst


def _virtual(path: Path, measured, truth, genes, kw: dict, spacing_um: float | None, model_spacing_um: float,
             seed: int) -> dict:
    """Virtual spots at the default pitch (``spacing_um=None``) or another; scored on the measured spots."""
    import numpy as np
    from scipy.spatial import cKDTree

    from napari_flag.inference import predict_sample
    from napari_flag.metrics import array_rc, evaluate

    t0 = time.perf_counter()
    virt = predict_sample(str(path), spacing_um=spacing_um, **kw)
    seconds = time.perf_counter() - t0
    info = virt.uns["flag"]
    assert info["virtual_spots"] and not info["in_training_set"]
    assert list(virt.var_names) == list(genes)
    px = float(info["pixel_size_um"])
    geom = info["spot_geometry"]
    spacing_px = geom["spacing_um"] / px
    mxy, vxy = measured.coords, np.asarray(virt.obsm["spatial"])
    d, nearest = cKDTree(vxy).query(mxy)
    # covered tissue: every measured disc dilated by one pitch of the model (200 um on legacy ST)
    model_spacing_px = model_spacing_um / px
    reach = geom["diameter_um"] / 2.0 / px + model_spacing_px
    dv, _ = cKDTree(mxy).query(vxy)
    m = evaluate(np.asarray(virt.X)[nearest], truth, mxy, array_rc(measured.adata), measured.grid, genes=genes,
                 seed=seed)
    return {
        **{k: float(m[k]) for k in KEYS},
        "within_075_spacing": float(np.mean(d <= 0.75 * spacing_px)),
        "virtual_outside_covered": float(np.mean(dv > reach)),
        "virtual_spots": int(virt.n_obs),
        "nearest_distance_um": {"median": float(np.median(d) * px), "max": float(d.max() * px)},
        "spot_geometry": geom,
        "tissue_fraction": float(info["tissue"]["fraction"]),
        "tiles": int((info.get("timings", {}).get("tiles") or {}).get("tiles", 1)),
        "compatibility": sorted(info["compatibility"]),
        "sampler": {"steps": info["steps"], "samples": info["samples"], "solver": info["solver"], "seed": info["seed"]},
        "seconds": seconds,
    }


def run_section(section: str, runs: Path, work: Path, seed: int, spacings: list[float],
                sampler: list[str] = (), tile_spots: int | None = None) -> dict:
    import dataclasses

    import numpy as np

    from napari_flag.checkpoint import load_checkpoint
    from napari_flag.data import load_sample
    from napari_flag.data.images import open_tiff
    from napari_flag.inference import predict_sample
    from napari_flag.metrics import array_rc, evaluate

    measured = load_sample(f"her2st:{section}")
    path = _slide(section, measured, work)
    ckpt = _model(section, runs, work, sampler)
    img, px_file = open_tiff(path)
    assert abs(px_file - measured.pixel_size_um) < 1e-9 * measured.pixel_size_um
    spot_sample = dataclasses.replace(measured, image=img, source=str(path))
    kw = {"checkpoint": ckpt, "device": "cpu", "seed": seed, "feature_cache": work / "features", "notice": lambda ev: None}

    t0 = time.perf_counter()
    spot = predict_sample(spot_sample, **kw)
    t_spot = time.perf_counter() - t0
    assert not spot.uns["flag"]["in_training_set"]
    truth = np.asarray(spot.layers["truth"])
    genes = list(spot.var_names)
    m = evaluate(np.asarray(spot.X), truth, measured.coords, array_rc(measured.adata), measured.grid, genes=genes,
                 seed=seed)
    model_spacing = float(load_checkpoint(ckpt)["spot_geometry"]["spacing_um"])
    res = {
        "section": section,
        "measured_spots": int(measured.n_spots),
        "pixel_size_um": float(measured.pixel_size_um),
        "image_shape": list(img.shape),
        "spot_mode": {k: float(m[k]) for k in KEYS},
        "spot_mode_s": t_spot,
        "virtual": {},
    }
    import napari_flag.inference as inference

    runs_ = [(None, "default", None), *[(sp, f"{sp:g}um", None) for sp in spacings]]
    if tile_spots:  # the default pitch again, predicted tile by tile with tiles this small
        runs_.append((None, f"default_tiles{tile_spots}", tile_spots))
    for sp, key, tiles in runs_:
        before = inference.TILE_SPOTS, inference.FIRST_TILE_SPOTS
        if tiles:  # every tile this small
            inference.TILE_SPOTS = inference.FIRST_TILE_SPOTS = tiles
        try:
            res["virtual"][key] = v = _virtual(path, measured, truth, genes, kw, sp, model_spacing, seed)
        finally:
            inference.TILE_SPOTS, inference.FIRST_TILE_SPOTS = before
        print(f"[{section}] spot " + " ".join(f"{k}={res['spot_mode'][k]:.3f}" for k in KEYS)
              + f" | virtual {key} " + " ".join(f"{k}={v[k]:.3f}" for k in KEYS)
              + f" | within0.75={v['within_075_spacing']:.3f} outside={v['virtual_outside_covered']:.3f} "
              f"({v['virtual_spots']} virtual, {res['measured_spots']} measured)", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/virtual_spots.json")
    ap.add_argument("--sections", nargs="+", default=SECTIONS)
    ap.add_argument("--runs", default="runs/her2st_loso", help="folder with <section>_flag/last.pt fold models")
    ap.add_argument("--work", default="/tmp/virtual_spots", help="slides, model copies and features go here")
    ap.add_argument("--spacings-um", nargs="*", type=float, default=[200.0],
                    help="virtual pitches to run besides the default (--spacing-um of predict)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tile-spots", type=int, default=None,
                    help="also run the default pitch tile by tile, tiles of this many spots (a section is "
                         "smaller than predict's own tiles), to compare with the whole-slide run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampler", nargs="*", default=[], metavar="KEY=VALUE",
                    help="sampler settings for the fold models (e.g. the bundled recipe's sample_mean_like)")
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    work = Path(a.work)
    t0 = time.time()
    per = [run_section(s, Path(a.runs), work, a.seed, a.spacings_um, a.sampler, a.tile_spots) for s in a.sections]
    mean: dict = {"spot_mode": {k: float(np.mean([p["spot_mode"][k] for p in per])) for k in KEYS}, "virtual": {}}
    for key in per[0]["virtual"]:
        vs = [p["virtual"][key] for p in per]
        mean["virtual"][key] = {k: float(np.mean([v[k] for v in vs]))
                                for k in (*KEYS, "within_075_spacing", "virtual_outside_covered")}
        mean["virtual"][key]["PCC_gap"] = mean["spot_mode"]["PCC"] - mean["virtual"][key]["PCC"]
        mean["virtual"][key]["spot_geometry"] = vs[0]["spot_geometry"]
    result = {
        "sections": per,
        "mean": mean,
        "targets": {"PCC_gap_max": 0.03, "within_075_spacing_min": 0.97, "virtual_outside_covered_max": 0.10},
        "command": command(argv),
        "machine": machine(f"{a.threads} torch threads, cpu"),
        "wall_s": time.time() - t0,
    }
    write_json(result, a.out)
    print(markdown_table(result))
    return 0


def markdown_table(result: dict) -> str:
    lines = [("| section | virtual pitch | spot PCC | spot GSC | spot SSC | virtual PCC | virtual GSC | virtual SSC "
             "| measured within 0.75 pitch | virtual outside covered tissue |"),
             "|---" * 10 + "|"]
    rows = [(p["section"], p) for p in result["sections"]] + [("mean", result["mean"])]
    for name, p in rows:
        for key, v in p["virtual"].items():
            pitch = f"{v['spot_geometry']['spacing_um']:g} um" + (" (default)" if key == "default" else "")
            if key.startswith("default_tiles"):
                pitch += f" in tiles of {key[len('default_tiles'):]}"
            cells = [f"{p['spot_mode'][k]:.3f}" for k in KEYS] + [f"{v[k]:.3f}" for k in KEYS]
            lines.append(f"| {name} | {pitch} | "
                         + " | ".join(cells)
                         + f" | {100 * v['within_075_spacing']:.1f} % | {100 * v['virtual_outside_covered']:.1f} % |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
