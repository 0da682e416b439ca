"""Pruned-model evaluation with fair-esm's own gelu (baseline) vs torch's fused gelu (ours).

`kneurons.model.esm` replaces `esm.modules.gelu` (x * 0.5 * (1 + erf(x / sqrt 2)), four unfused
elementwise ops) with `torch.nn.functional.gelu` (the same function, one kernel). This times
`train.predict_proba` on the default tiny model and test-set size, both ways in the same run,
and prints the ratio and the largest difference of the class probabilities.

    PYTHONPATH=src python benchmarks/gelu_benchmark.py [--sequences 360] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import time

import esm.modules
import torch

from kneurons.data import synthetic
from kneurons.model import esm as model
from kneurons.model import train


def fair_esm_gelu(x: torch.Tensor) -> torch.Tensor:
    """fair-esm 2.0.0's `esm.modules.gelu`, verbatim."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def timed(classifier, sequences, repeats: int) -> tuple[float, torch.Tensor]:
    train.predict_proba(classifier, sequences)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        probs = train.predict_proba(classifier, sequences)
    return (time.perf_counter() - started) / repeats, probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=360, help="test-set size (default's)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = synthetic.generate_synthetic(-(-args.sequences // 6), 60, 90, seed=0)
    sequences = list(table["sequence"])[: args.sequences]
    classifier = model.EnzymeClassifier(model.build_tiny_esm2(4, 64, 4, seed=0), 6).eval()
    ours = esm.modules.gelu
    esm.modules.gelu = fair_esm_gelu
    baseline, baseline_probs = timed(classifier, sequences, args.repeats)
    esm.modules.gelu = ours
    fused, fused_probs = timed(classifier, sequences, args.repeats)
    print(f"{len(sequences)} sequences, tiny model (4 layers, 64 dims), 1 thread")
    print(f"fair-esm gelu (baseline): {baseline:.3f} s per evaluation")
    print(f"torch gelu (ours):        {fused:.3f} s per evaluation")
    print(f"speed-up: {baseline / fused:.2f}x")
    print(f"max |probability difference|: {(baseline_probs - fused_probs).abs().max():.1e}")


if __name__ == "__main__":
    main()
