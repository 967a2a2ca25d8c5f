"""One table from several ``her2st_loso.py --nested`` results, with the fidelity targets checked.

    python benchmarks/nested_table.py condition-only=benchmarks/results/her2st_nested.json \
        joint=benchmarks/results/her2st_nested_joint.json ... [--reference benchmarks/results/her2st.json]

Each ``LABEL=JSON`` contributes its methods as rows ``LABEL: method``; per fold it
also lists the step whose weights were kept and the temperature (and, with
``--select split``, the blend's N) chosen on the validation section.  Targets (means over the folds): the default prediction's SSC
at least ridge's and its PCC at least regression's - 0.01; one sample's GSC-CCC
at least 0.85 and SSC at least 0.40.  Ridge and regression are read from the
``--baselines`` label (default ``baselines``) and, when given, ``--reference``
(the standard harness, four training sections); a run that trained its own
regression is held to that one.  Runs are compared by the default prediction's
validation PCC + SSC at the sampler each fold chose (mean over folds); a
``--select targets`` run also lists, per fold, the smaller margin of its chosen
mean over the two targets on the validation section.
"""
from __future__ import annotations

import argparse
import json
import sys

from her2st_loso import target_margin

KEYS = ["PCC", "PCC-50", "MSE", "GSC", "GSC-CCC", "SSC", "ARI", "NMI", "DEG"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=path/to/result.json")
    ap.add_argument("--baselines", default="baselines")
    ap.add_argument("--reference", default=None, help="standard (non-nested) result with ridge")
    a = ap.parse_args(argv)
    res = {}
    for item in a.runs:
        label, _, path = item.partition("=")
        with open(path) as fh:
            res[label] = json.load(fh)
    lines = ["| run: method | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    for label, r in res.items():
        for m, row in r["methods"].items():
            if m == "flag_antithetic":
                continue
            lines.append(f"| {label}: {m} | " + " | ".join(f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in KEYS) + " |")
    print("\n".join(lines))
    print()
    print("| run | kept step per fold | temperature per fold | blend N per fold |")
    print("| --- | --- | --- | --- |")
    for label, r in res.items():
        for sel_m in ("flag", "regression"):
            rows = [s.get(sel_m) for s in r.get("selection", []) if s.get(sel_m)]
            if not rows:
                continue
            steps = ", ".join(f"{s['held_out']}:{s[sel_m]['steps']}" for s in r["selection"] if s.get(sel_m))
            temps = ", ".join(f"{s['held_out']}:{s[sel_m]['temperature']['chosen']:g}" for s in r["selection"]
                              if s.get(sel_m) and "temperature" in s[sel_m]) or "-"
            likes = ", ".join(f"{s['held_out']}:{s[sel_m]['temperature']['mean_like']}" for s in r["selection"]
                              if s.get(sel_m) and "mean_like" in s[sel_m].get("temperature", {})) or "-"
            print(f"| {label}: {sel_m} | {steps} | {temps} | {likes} |")
    print()
    # what runs are compared by: the default prediction's validation PCC + SSC at the sampler
    # each fold chose (never a test score)
    print("| run | validation PCC of the default | validation SSC | PCC + SSC |")
    print("| --- | --- | --- | --- |")
    for label, r in res.items():
        vals = []
        for s in r.get("selection", []):
            t = (s.get("flag") or {}).get("temperature", {})
            grid = t.get("validation", {}).get("mean")
            if grid and "mean_like" in t:
                vals.append(grid[str(t["mean_like"])])
        if vals:
            pcc = sum(v["PCC"] for v in vals) / len(vals)
            ssc = sum(v["SSC"] for v in vals) / len(vals)
            print(f"| {label} ({len(vals)} folds) | {pcc:.3f} | {ssc:.3f} | {pcc + ssc:.3f} |")
    print()
    for label, r in res.items():  # --select targets: how far the chosen mean cleared the targets on validation
        margins = [(s["held_out"], target_margin(t["validation"]["mean"][str(t["mean_like"])], t["references"]))
                   for s in r.get("selection", [])
                   if "references" in (t := (s.get("flag") or {}).get("temperature", {}))]
        if margins:
            print(f"{label}: smaller validation margin over the two targets, per fold: "
                  + ", ".join(f"{h} {m:+.3f}" for h, m in margins))
            print()
    base = res.get(a.baselines, {}).get("methods", {})
    ref = {}
    if a.reference:
        with open(a.reference) as fh:
            ref = json.load(fh)["methods"]
    ridge_nested = [("nested ridge", base["ridge"]["SSC"]["mean"])] if "ridge" in base else []
    ridge_ref = [("ridge, 4 training sections", ref["ridge"]["SSC"]["mean"])] if "ridge" in ref else []
    reg_pcc = base["regression"]["PCC"]["mean"] if "regression" in base else None
    print("| run | default SSC ≥ ridge SSC | default PCC ≥ regression − 0.01 | sample GSC-CCC ≥ 0.85 | sample SSC ≥ 0.40 |")
    print("| --- | --- | --- | --- | --- |")
    for label, r in res.items():
        if "flag" not in r["methods"]:
            continue
        f, s = r["methods"]["flag"], r["methods"].get("flag_sample")
        ssc = f["SSC"]["mean"]
        nested = ([("own ridge", r["methods"]["ridge"]["SSC"]["mean"])] if "ridge" in r["methods"]
                  else ridge_nested)  # same run first
        c1 = "; ".join(f"{ssc:.3f} vs {v:.3f} ({n}): {'yes' if ssc >= v else 'no'}"
                       for n, v in nested + ridge_ref) or "-"
        reg = r["methods"]["regression"]["PCC"]["mean"] if "regression" in r["methods"] else reg_pcc  # same run first
        c2 = (f"{f['PCC']['mean']:.3f} vs {reg:.3f}: {'yes' if f['PCC']['mean'] >= reg - 0.01 else 'no'}"
              if reg is not None else "-")
        c3 = f"{s['GSC-CCC']['mean']:.3f}: {'yes' if s['GSC-CCC']['mean'] >= 0.85 else 'no'}" if s else "-"
        c4 = f"{s['SSC']['mean']:.3f}: {'yes' if s['SSC']['mean'] >= 0.40 else 'no'}" if s else "-"
        print(f"| {label} | {c1} | {c2} | {c3} | {c4} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
