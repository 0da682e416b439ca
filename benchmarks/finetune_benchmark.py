"""Fine-tuning throughput: length-sorted token-budget batches (`finetune.max_tokens`) vs
`finetune.batch_size` sequences per batch (baseline), one training epoch each, in one run.

Sequences come from `--table` (a TSV/CSV with a `Sequence` column, e.g. real enzymes) or, by
default, synthetic sequences whose lengths follow Swiss-Prot enzymes' (log-normal, median 440,
cut to 50-1,000 residues). The model is the default tiny ESM-2 (or `--shape layers dim heads`)
with a 6-class head and random labels; the step is the workflow's (`model.train`). Prints
sequences/s, the time per epoch per 1,000 sequences, padding overhead and the ratio against
the baseline.

    PYTHONPATH=src python benchmarks/finetune_benchmark.py [--table t.tsv] [--max-tokens 4096]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kneurons.model import train
from kneurons.model.esm import EnzymeClassifier, build_tiny_esm2, pick_device

RESIDUES = list("ACDEFGHIKLMNPQRSTVWY")


def sequences_of(table: Path | None, n: int, max_length: int) -> list[str]:
    """`n` sequences: from `table`'s `Sequence` column (cycled if shorter), else synthetic."""
    if table is not None:
        column = pd.read_csv(table, sep=None, engine="python")["Sequence"].astype(str)
        return [column.iloc[i % len(column)][:max_length] for i in range(n)]
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(440), 0.4, n).astype(int), 50, 1000)
    return ["M" + "".join(rng.choice(RESIDUES, k - 1)) for k in lengths]


def one_epoch(sequences, labels, shape, batch_size, max_tokens, device, seed=0) -> dict:
    """One training epoch of the workflow's loop: seconds, steps, padded and real tokens."""
    model = EnzymeClassifier(build_tiny_esm2(*shape, seed=seed), 6).to(device)
    lengths = train.token_lengths(sequences)
    generator = torch.Generator().manual_seed(seed)
    if max_tokens:
        chunks = train.token_budget_batches(lengths, max_tokens, generator)
    else:
        chunks = train.batches(len(sequences), batch_size, generator)
    optimizer, scheduler = train._optimiser(model, 1e-3, 1e-3, 0.01, len(chunks), 1)
    padded = sum(len(c) * max(lengths[i] for i in c.tolist()) for c in chunks)
    started = time.perf_counter()
    train._train_epoch(model, optimizer, scheduler, chunks, sequences, labels, 1022, device, 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": len(chunks), "padded": padded, "tokens": sum(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path)
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--shape", type=int, nargs=3, default=[4, 64, 4])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    sequences = sequences_of(args.table, args.sequences, 1022)
    labels = torch.as_tensor(np.random.default_rng(0).integers(0, 6, len(sequences)))
    lengths = [len(s) for s in sequences]
    print(
        f"{len(sequences)} sequences of {min(lengths)}-{max(lengths)} residues (median "
        f"{int(np.median(lengths))}) from {args.table or 'the synthetic length model'}; "
        f"ESM-2 {args.shape[0]} layers, dim {args.shape[1]}, {args.shape[2]} heads; "
        f"{args.threads} thread(s) of {os.cpu_count()} cores; device {device}"
    )
    contenders = [(f"batch_size {args.batch_size} (baseline)", 0)]
    contenders += [(f"max_tokens {t}", t) for t in args.max_tokens]
    rows, baseline = [], None
    for label, max_tokens in contenders:
        run = one_epoch(sequences, labels, args.shape, args.batch_size, max_tokens, device)
        baseline = baseline or run
        rows.append(
            {
                "contender": label,
                "steps": run["steps"],
                "padding": run["padded"] / run["tokens"] - 1,
                "seq_per_s": len(sequences) / run["seconds"],
                "s_per_1000_seq": 1000 * run["seconds"] / len(sequences),
                "speedup": baseline["seconds"] / run["seconds"],
            }
        )
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"1-min load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
