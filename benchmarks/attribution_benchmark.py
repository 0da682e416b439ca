"""Gradient x activation vs unit-level integrated gradients on a fine-tuned model: cost and
agreement with converged IG, on the workflow's own scoring subset.

Every contender scores all layers and the six default modules of the same sequences (the
validation subset `engine.scoring_subset` gives the workflow). Timed contenders run
interleaved; each reported time is the median over repeats. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from kneurons.analysis import selection
from kneurons.attribution import engine
from kneurons.attribution.methods import REGISTRY, ScoringInputs
from kneurons.data import tables
from kneurons.model.esm import load_classifier

MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")  # the config default
RATIOS = (0.5, 0.25, 0.1, 0.01)  # sweep.retention_ratios default
DEFAULT_IG = ("riemann_left", 20)  # scoring.ig_rule / ig_steps default
GL_CONTENDERS = (1, 2, 3, 4, 6, 8)
# steps tried, in order, for the fewest Gauss-Legendre steps (stops once all are found)
GL_SEARCH = (*range(1, 13), 16, 24, 32)
JACCARD_TARGET = 0.95


class Bench:
    """The fine-tuned model, the scoring subset and the workflow's scoring settings."""

    def __init__(self, args):
        self.model, meta = load_classifier(args.model)
        self.layers = list(range(self.model.num_layers))
        self.sequences, self.labels = engine.scoring_subset(
            tables.read_labelled(args.split), meta["classes"], args.max_sequences, args.seed
        )
        self.max_length = meta["max_length"]
        self.seed = args.seed
        self.batch_size = args.batch_size
        self.rows_per_pass = args.rows_per_pass

    def inputs(self, **settings) -> ScoringInputs:
        settings = {"batch_size": self.batch_size, "rows_per_pass": self.rows_per_pass,
                    "ig_abs": False, **settings}  # fmt: skip
        return ScoringInputs(self.sequences, self.labels, self.layers, MODULES, self.seed,
                             self.max_length, settings)  # fmt: skip

    def ig(self, rule, steps, model=None, granularity="unit"):
        """The workflow's `ig` method over all layers (float32 unless `model` says otherwise)."""
        inputs = self.inputs(ig_rule=rule, ig_steps=steps, granularity=granularity)
        return REGISTRY["ig"].score(self.model if model is None else model, inputs)

    def gradxact(self):
        return REGISTRY["gradxact"].score(self.model, self.inputs())

    def activation(self):
        return REGISTRY["activation"].score(self.model, self.inputs())


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def flat(scores) -> np.ndarray:
    """All unit scores in a fixed (layer, module, unit) order."""
    return np.concatenate([scores[key].double().numpy() for key in sorted(scores, key=_order)])


def _order(key):
    layer, module = key
    return layer, MODULES.index(module)


def kept_sets(scores) -> dict[float, set]:
    frame = engine.scores_frame(scores)
    out = {}
    for ratio in RATIOS:
        kept = selection.select(frame, ratio).query("kept")
        out[ratio] = set(zip(kept["layer"], kept["module"], kept["unit"], strict=True))
    return out


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def max_rel_diff(scores, reference) -> float:
    """max over modules of max |s - ref| / max |ref| of that module."""
    return max(
        ((scores[k].double() - reference[k].double()).abs().max()
         / reference[k].double().abs().max()).item()
        for k in reference
    )  # fmt: skip


def table(rows, columns) -> str:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def converged(bench, steps_list):
    """(scores, seconds) of Gauss-Legendre IG with each of `steps_list` on a float64 copy of
    the model (fused attention, so the attention softmax is float64 too)."""
    model64 = copy.deepcopy(bench.model).double()
    return [timed(lambda s=steps: bench.ig("gausslegendre", s, model64)) for steps in steps_list]


def ig_name(rule, steps) -> str:
    return f"ig {rule} {steps}"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="results/finetune/seed0/model.pt")
    p.add_argument("--split", default="results/data/split/seed0.tsv")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-sequences", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="scoring.batch_size")
    p.add_argument("--rows-per-pass", type=int, default=256, help="scoring.rows_per_pass")
    p.add_argument("--reference-steps", type=int, default=64,
                   help="Gauss-Legendre steps of the converged reference (float64); its "
                        "convergence is checked against half as many")  # fmt: skip
    p.add_argument("--gl-timed", type=int, default=3, help="Gauss-Legendre steps timed")
    p.add_argument(
        "--quick",
        action="store_true",
        help="8 sequences, 1 repeat, reference 16 steps: a smoke run (~2 min)",
    )
    p.add_argument("--time-only", action="store_true", help="section 1 (timings) only")
    p.add_argument(
        "--out", default=str(Path(__file__).parent / "out" / "attribution_benchmark.tsv")
    )
    args = p.parse_args()
    if args.quick:
        args.max_sequences, args.repeats, args.reference_steps = 8, 1, 16
    torch.set_num_threads(args.threads)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    bench = Bench(args)
    lengths = [len(s) for s in bench.sequences]
    n_units = sum(len(s) for s in bench.activation().values())
    print(f"model {args.model}: {len(bench.layers)} layers, {n_units} units in "
          f"{', '.join(MODULES)}; {len(bench.sequences)} validation sequences (seed {args.seed}, "
          f"lengths {min(lengths)}-{max(lengths)}, median {statistics.median(lengths):g}); "
          f"batch_size {args.batch_size}, rows_per_pass {args.rows_per_pass}; "
          f"{args.threads} thread(s) of {os.cpu_count()} cores")  # fmt: skip
    tsv = []  # (section, contender, metric, value)

    # -- 1. time: interleaved repeats ------------------------------------------------------
    rl20 = ig_name(*DEFAULT_IG)
    gl_t = ig_name("gausslegendre", args.gl_timed)
    runs = {
        rl20: lambda: bench.ig(*DEFAULT_IG),
        gl_t: lambda: bench.ig("gausslegendre", args.gl_timed),
        "gradxact": bench.gradxact,
        f"{rl20} per weight": lambda: bench.ig(*DEFAULT_IG, granularity="weight"),
    }
    times = {name: [] for name in runs}
    scores = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            scores[name], dt = timed(fn)
            times[name].append(dt)
    med = {name: statistics.median(v) for name, v in times.items()}
    rows = [(name, len(times[name]), f"{med[name]:.2f}", f"{min(times[name]):.2f}",
             f"{max(times[name]):.2f}", f"{len(bench.sequences) / med[name]:.2f}")
            for name in runs]  # fmt: skip
    print(
        f"\n== 1. time: all {len(bench.layers)} layers x six modules, "
        f"{len(bench.sequences)} sequences, median of {args.repeats} interleaved repeats"
    )
    print(table(rows, ["contender", "reps", "time_s", "min_s", "max_s", "seq_per_s"]))
    for name in runs:
        tsv.append(("time", name, "median_s", f"{med[name]:.4f}"))
    for base in (rl20, gl_t):
        print(f"gradxact vs {base}: {med[base] / med['gradxact']:.1f}x")
        tsv.append(
            ("speedup", f"gradxact vs {base}", "ratio", f"{med[base] / med['gradxact']:.3f}")
        )
    print(f"{gl_t} vs {rl20}: {med[rl20] / med[gl_t]:.1f}x")
    tsv.append(("speedup", f"{gl_t} vs {rl20}", "ratio", f"{med[rl20] / med[gl_t]:.3f}"))
    weight = f"{rl20} per weight"
    print(f"{weight} costs {med[weight] / med[rl20]:.2f}x {rl20} per unit")
    tsv.append(("cost", f"{weight} vs {rl20}", "ratio", f"{med[weight] / med[rl20]:.3f}"))
    if args.time_only:
        write_tsv(tsv, args)
        return

    # -- 2. agreement with converged IG -----------------------------------------------------
    ref_steps, half = args.reference_steps, args.reference_steps // 2
    (reference, t_ref), (ref_half, t_half) = converged(bench, (ref_steps, half))
    convergence = max_rel_diff(ref_half, reference)
    ref_flat, ref_kept = flat(reference), kept_sets(reference)

    contenders = {"gradxact": scores["gradxact"], rl20: scores[rl20]}
    one_run = {"gradxact": med["gradxact"], rl20: med[rl20]}
    gl = {}  # steps -> float32 scores
    for steps in GL_CONTENDERS:
        gl[steps], one_run[ig_name("gausslegendre", steps)] = timed(
            lambda s=steps: bench.ig("gausslegendre", s)
        )
        contenders[ig_name("gausslegendre", steps)] = gl[steps]
    contenders["activation"], one_run["activation"] = timed(bench.activation)
    contenders[f"ig gausslegendre {half} (float64)"] = ref_half
    one_run[f"ig gausslegendre {half} (float64)"] = t_half
    rl20_kept = kept_sets(scores[rl20])

    print(
        f"\n== 2. agreement with converged IG = ig gausslegendre {ref_steps}, float64 model "
        f"({t_ref:.0f} s); convergence: max relative difference to gausslegendre {half} "
        f"(float64) = {convergence:.2e} (max over modules of max|d| / max|ref| of the module)"
    )
    tsv.append(("convergence", f"ig gausslegendre {half} (float64)", "max_rel_diff",
                f"{convergence:.3e}"))  # fmt: skip
    rows = []
    for name, s in contenders.items():
        rho, _ = spearmanr(flat(s), ref_flat)
        kept = kept_sets(s)
        j_ref = [jaccard(kept[r], ref_kept[r]) for r in RATIOS]
        j_rl = [jaccard(kept[r], rl20_kept[r]) for r in RATIOS]
        err = max_rel_diff(s, reference) if name != "activation" else float("nan")
        rows.append((name, f"{one_run[name]:.1f}", f"{rho:.4f}", f"{err:.2e}",
                     *(f"{j:.3f}" for j in j_ref), *(f"{j:.3f}" for j in j_rl)))  # fmt: skip
        tsv.append(("agreement", name, "time_s", f"{one_run[name]:.3f}"))
        tsv.append(("agreement", name, "spearman_ref", f"{rho:.5f}"))
        tsv.append(("agreement", name, "max_rel_diff_ref", f"{err:.3e}"))
        for r, a, b in zip(RATIOS, j_ref, j_rl, strict=True):
            tsv.append(("agreement", name, f"jaccard_ref@{r:g}", f"{a:.4f}"))
            tsv.append(("agreement", name, f"jaccard_rl20@{r:g}", f"{b:.4f}"))
    cols = ["contender", "time_s", "spearman", "max_rel_diff",
            *(f"J_ref@{r:g}" for r in RATIOS), *(f"J_rl20@{r:g}" for r in RATIOS)]  # fmt: skip
    print(table(rows, cols))
    print(
        "time_s: median of section 1 for gradxact and ig riemann_left 20, else one run; "
        "J_ref / J_rl20: Jaccard of the kept set with the reference's / ig riemann_left 20's"
    )

    # -- 3. fewest Gauss-Legendre steps ------------------------------------------------------
    # fewest steps reaching the target against (rl20, reference) at every ratio / at all but
    # the smallest ratio
    first = {("rl20", "all"): None, ("ref", "all"): None, ("rl20", "big"): None,
             ("ref", "big"): None}  # fmt: skip
    rows = []
    for steps in GL_SEARCH:
        if all(v is not None for v in first.values()):
            break
        if steps not in gl:
            gl[steps] = bench.ig("gausslegendre", steps)
        kept = kept_sets(gl[steps])
        j = {"rl20": [jaccard(kept[r], rl20_kept[r]) for r in RATIOS],
             "ref": [jaccard(kept[r], ref_kept[r]) for r in RATIOS]}  # fmt: skip
        rows.append((steps, *(f"{v:.3f}" for v in j["rl20"]), *(f"{v:.3f}" for v in j["ref"])))
        for against, values in j.items():
            for r, v in zip(RATIOS, values, strict=True):
                tsv.append(("gl_steps", ig_name("gausslegendre", steps), f"jaccard_{against}@{r:g}",
                            f"{v:.4f}"))  # fmt: skip
            for which, subset in (("all", values), ("big", values[:-1])):
                if first[(against, which)] is None and min(subset) >= JACCARD_TARGET:
                    first[(against, which)] = steps
    print(
        f"\n== 3. fewest Gauss-Legendre steps whose kept set has Jaccard >= {JACCARD_TARGET} "
        f"with {rl20}'s (J_rl20) or the reference's (J_ref) at every ratio"
    )
    cols = ["gl_steps", *(f"J_rl20@{r:g}" for r in RATIOS), *(f"J_ref@{r:g}" for r in RATIOS)]
    print(table(rows, cols))
    n_keep = [int(round(r * n_units)) for r in RATIOS]
    print(
        "kept units per ratio: "
        + ", ".join(f"{r:g}: {k} (one swapped unit: J = {(k - 1) / (k + 1):.3f})"
                    for r, k in zip(RATIOS, n_keep, strict=True))
    )  # fmt: skip
    small = f"{RATIOS[-1]:g}"
    for against, label in (("rl20", rl20), ("ref", "the converged reference")):
        for which, where in (("all", "every ratio"), ("big", f"every ratio but {small}")):
            found = first[(against, which)]
            print(
                f"fewest gausslegendre steps matching {label} at {where}: "
                f"{found if found is not None else f'none up to {GL_SEARCH[-1]}'}"
            )
            tsv.append(("gl_steps", "fewest", f"vs_{against}_{which}", str(found)))
    rl20_vs_ref = [jaccard(rl20_kept[r], ref_kept[r]) for r in RATIOS]
    print(f"{rl20} itself vs the reference: J = {', '.join(f'{v:.3f}' for v in rl20_vs_ref)}")

    write_tsv(tsv, args)
    load_end = os.getloadavg()
    print(
        f"\ntotal {time.perf_counter() - t_start:.0f} s, {args.threads} thread(s); "
        f"1-min load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end; "
        f"TSV: {args.out}"
    )


def write_tsv(tsv, args) -> None:
    """The (section, contender, metric, value) rows to `args.out`."""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        f.write("section\tcontender\tmetric\tvalue\n")
        f.writelines("\t".join(r) + "\n" for r in tsv)


if __name__ == "__main__":
    main()
