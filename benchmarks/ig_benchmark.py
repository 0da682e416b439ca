"""Integrated-gradients neuron scoring: straightforward reference vs captum vs our engine.

All contenders run in one process on the same inputs, repeats interleaved; each reported time
is the median over repeats. See benchmarks/README.md for the columns.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

# Large allocations must go back to the OS when freed, so that resident memory tracks live
# tensors (glibc otherwise raises its mmap threshold and keeps freed blocks in the heap).
if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
from captum.attr import LayerIntegratedGradients  # noqa: E402
from torch import nn  # noqa: E402

from kneurons.attribution.engine import ig_scores, ig_scores_reference  # noqa: E402
from kneurons.model.attention import use_fused_attention  # noqa: E402
from kneurons.model.esm import MODULES, EnzymeClassifier, build_tiny_esm2, encode, module_name

ARCHS = {"tiny": (4, 64, 4), "esm2_t6_8M": (6, 320, 20)}
AMINO = "ACDEFGHIKLMNPQRSTVWY"
N_CLASSES = 7


class _Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(0, 1)


class _Probe(nn.Module):
    """Wraps a Linear so captum sees a batch-first output it can scale (fair-esm is
    time-major); `gate` is 1 for the inputs and 0 for captum's baseline run, so the layer
    baseline is exactly zero."""

    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.inner, self.batch_first, self.gate = inner, _Transpose(), None

    def forward(self, x):
        out = self.inner(x)
        if self.gate is not None:
            out = out * self.gate[None, :, None]
        # the clone protects captum's tensor from fair-esm's in-place `q *= scaling`
        return self.batch_first(out).transpose(0, 1).clone()


class _Probabilities(nn.Module):
    def __init__(self, model: EnzymeClassifier, probe: _Probe):
        super().__init__()
        self.model, self.probe = model, probe

    def forward(self, tokens, gate):
        self.probe.gate = gate[:, 0]
        return self.model(tokens).softmax(-1)


def captum_scores(model, sequences, labels, layer, modules, *, steps, rule, rows_per_pass):
    """captum LayerIntegratedGradients per module, same attribution as ours."""
    totals = {}
    for module in modules:
        name = module_name(layer, module)
        parent_name, attr = name.rsplit(".", 1)
        parent = model.esm.get_submodule(parent_name)
        inner = getattr(parent, attr)
        probe = _Probe(inner)
        setattr(parent, attr, probe)
        try:
            lig = LayerIntegratedGradients(_Probabilities(model, probe), probe.batch_first)
            total = 0
            for i in range(0, len(sequences), max(1, rows_per_pass // steps)):
                chunk = list(range(i, min(len(sequences), i + max(1, rows_per_pass // steps))))
                tokens = encode([sequences[j] for j in chunk])
                ones = torch.ones(len(chunk), 1)
                attr_ = lig.attribute(
                    (tokens, ones),
                    baselines=(tokens, torch.zeros_like(ones)),
                    target=torch.as_tensor([labels[j] for j in chunk]),
                    n_steps=steps,
                    method=rule,
                    internal_batch_size=rows_per_pass,
                )  # (B, T, U)
                residues = (tokens != model.esm.padding_idx).unsqueeze(-1)
                total = total + attr_.masked_fill(~residues, 0).sum(1).double().sum(0)
        finally:
            setattr(parent, attr, inner)
        totals[(layer, module)] = total / len(sequences)
    return totals


class PeakRSS:
    """Peak resident set size above the value at entry, sampled every 2 ms (MiB)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.mib = (self.peak - self.base) / 2**20


def max_rel_error(scores, reference):
    """max over units of |s - ref| / max|ref| of that module, then max over modules."""
    return max(
        ((scores[k].double() - reference[k]).abs().max() / reference[k].abs().max()).item()
        for k in reference
    )


def make_inputs(n, length, seed):
    rng = random.Random(seed)
    seqs = ["".join(rng.choice(AMINO) for _ in range(length)) for _ in range(n)]
    return seqs, [rng.randrange(N_CLASSES) for _ in range(n)]


def contenders(gl_steps, rows):
    def ours(rule, steps, fused):
        def run(model, seqs, labels, layer):
            use_fused_attention(model, fused)
            try:
                return ig_scores(
                    model, seqs, labels, layer, MODULES, steps=steps, rule=rule,
                    batch_size=len(seqs), rows_per_pass=rows, progress=False,
                )  # fmt: skip
            finally:
                use_fused_attention(model, False)

        return run

    def cap(rule, steps):
        return lambda model, seqs, labels, layer: captum_scores(
            model, seqs, labels, layer, MODULES, steps=steps, rule=rule, rows_per_pass=rows
        )

    def ref(model, seqs, labels, layer):
        return ig_scores_reference(model, seqs, labels, layer, MODULES, steps=20)

    return {
        "reference riemann_left 20": ref,
        "captum riemann_left 20 (paper)": cap("riemann_left", 20),
        f"captum gausslegendre {gl_steps}": cap("gausslegendre", gl_steps),
        "ours riemann_left 20": ours("riemann_left", 20, False),
        "ours riemann_left 20 +fused": ours("riemann_left", 20, True),
        f"ours gausslegendre {gl_steps}": ours("gausslegendre", gl_steps, False),
        f"ours gausslegendre {gl_steps} +fused": ours("gausslegendre", gl_steps, True),
    }


def converged(model, seqs, labels, layer, steps, rows):
    m64 = use_fused_attention(copy.deepcopy(model).double(), True)  # float64 softmax too
    return ig_scores(
        m64, seqs, labels, layer, MODULES, steps=steps, rule="gausslegendre",
        batch_size=len(seqs), rows_per_pass=rows, progress=False,
    )  # fmt: skip


def pick_gl_steps(model, seqs, labels, layer, reference, target_error, rows):
    """Fewest Gauss-Legendre steps whose error is <= the Riemann-20 error."""
    for steps in range(2, 21):
        s = ig_scores(
            model, seqs, labels, layer, MODULES, steps=steps, rule="gausslegendre",
            batch_size=len(seqs), rows_per_pass=rows, progress=False,
        )  # fmt: skip
        if max_rel_error(s, reference) <= target_error:
            return steps
    return 20


def table(rows, columns):
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def bench_config(arch, length, n, layer_choice, repeats, ref_steps, rows, ref_repeats, out):
    layers, dim, heads = ARCHS[arch]
    model = EnzymeClassifier(build_tiny_esm2(layers, dim, heads, seed=0), N_CLASSES).eval()
    use_fused_attention(model, False)  # the baselines run fair-esm's own attention
    with torch.no_grad():  # a non-trivial head so p(true class) varies
        model.head.weight.normal_(0, 1)
    layer = (layers - 1) // 2 if layer_choice is None else layer_choice
    seqs, labels = make_inputs(n, length, seed=length)
    t0 = time.perf_counter()
    reference = converged(model, seqs, labels, layer, ref_steps, rows)
    riemann = ig_scores(model, seqs, labels, layer, MODULES, steps=20, progress=False)
    gl_steps = pick_gl_steps(
        model, seqs, labels, layer, reference, max_rel_error(riemann, reference), rows
    )
    setup = time.perf_counter() - t0
    runs = contenders(gl_steps, rows)
    times = {k: [] for k in runs}
    mem, err = {}, {}
    for rep in range(repeats):
        for name, fn in runs.items():
            if name.startswith("reference") and rep >= ref_repeats:
                continue
            with PeakRSS() as peak:
                t = time.perf_counter()
                scores = fn(model, seqs, labels, layer)
                times[name].append(time.perf_counter() - t)
            mem[name] = max(mem.get(name, 0), peak.mib)
            err[name] = max_rel_error(scores, reference)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows_out = [
        (
            arch, length, n, layer, name, len(times[name]), f"{med[name]:.2f}",
            f"{n / med[name]:.3f}", f"{mem[name]:.0f}", f"{err[name]:.2e}",
        )
        for name in runs
    ]  # fmt: skip
    print(f"\n== {arch} (layers={layers}, dim={dim}, heads={heads}), length {length}, "
          f"{n} sequences, layer {layer}, six modules; converged reference: gausslegendre "
          f"{ref_steps} float64 ({setup:.0f} s incl. choosing gausslegendre steps)")  # fmt: skip
    cols = ["arch", "len", "n", "layer", "contender", "reps", "time_s", "seq_per_s", "peak_mib",
            "max_rel_err"]  # fmt: skip
    print(table(rows_out, cols))
    gl_ours = f"ours gausslegendre {gl_steps} +fused"
    ratios = [
        (gl_ours, "captum riemann_left 20 (paper)"),
        (gl_ours, f"captum gausslegendre {gl_steps}"),
        (f"ours gausslegendre {gl_steps}", f"captum gausslegendre {gl_steps}"),
        ("ours riemann_left 20 +fused", "captum riemann_left 20 (paper)"),
        ("ours riemann_left 20", "captum riemann_left 20 (paper)"),
        ("ours riemann_left 20", "reference riemann_left 20"),
        (gl_ours, "reference riemann_left 20"),
        (f"ours gausslegendre {gl_steps} +fused", f"ours gausslegendre {gl_steps}"),
    ]
    print(table([(a, b, f"{med[b] / med[a]:.2f}x") for a, b in ratios],
                ["ours", "vs", "speed-up"]))  # fmt: skip
    with open(out, "a") as f:
        for r in rows_out:
            f.write("\t".join(map(str, r)) + "\n")


def scaling_table(arch, lengths, counts, rows, layer):
    layers, dim, heads = ARCHS[arch]
    model = EnzymeClassifier(build_tiny_esm2(layers, dim, heads, seed=0), N_CLASSES).eval()
    use_fused_attention(model, True)
    out = []
    for length in lengths:
        for n in counts:
            seqs, labels = make_inputs(n, length, seed=length)
            t = time.perf_counter()
            ig_scores(model, seqs, labels, layer, MODULES, steps=8, rule="gausslegendre",
                      batch_size=16, rows_per_pass=rows, progress=False)  # fmt: skip
            dt = time.perf_counter() - t
            out.append((arch, length, n, f"{dt:.2f}", f"{dt / n:.3f}"))
    print(f"\n== cost growth: ours, gausslegendre 8 +fused, {arch}, layer {layer}, six modules")
    print(table(out, ["arch", "len", "n", "time_s", "s_per_seq"]))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny model only, < 1 minute")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference-repeats", type=int, default=1)
    p.add_argument("--layer", type=int, default=None, help="default: (num_layers - 1) // 2")
    p.add_argument("--rows-per-pass", type=int, default=256)
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "ig_benchmark.tsv"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        "arch\tlen\tn\tlayer\tcontender\treps\ttime_s\tseq_per_s\tpeak_mib\tmax_rel_err\n"
    )
    if args.quick:
        configs = [("tiny", 128, 2, 32)]
    else:
        configs = [("tiny", 128, 4, 64), ("esm2_t6_8M", 128, 2, 48),
                   ("tiny", 512, 2, 64), ("esm2_t6_8M", 512, 1, 32)]  # fmt: skip
    t0 = time.perf_counter()
    for arch, length, n, ref_steps in configs:
        bench_config(arch, length, n, args.layer, args.repeats, ref_steps, args.rows_per_pass,
                     args.reference_repeats, args.out)  # fmt: skip
    if args.quick:
        scaling_table("tiny", (64, 128), (1, 2), args.rows_per_pass, 1)
    else:
        scaling_table("tiny", (128, 256, 512), (1, 2, 4), args.rows_per_pass, 1)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, {args.threads} thread(s); TSV: {args.out}")


if __name__ == "__main__":
    main()
