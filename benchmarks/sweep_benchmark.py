"""Many pruned models per forward pass (ours) vs one model per pass (baseline), in one run.

Times `analysis.evaluation.evaluate_seed`, the whole computation of the `evaluate` job (the
selections, every pruned model on the test set, metrics, intervals, effective counts), with
`sweep.max_tokens` 1 (one model per pass: the baseline, the loop the job ran before), with
each `--max-tokens` budget and, on CUDA, with 0 (auto), on two cases:

1. `default seed 0`: the fine-tuned model, the scores and the test split of a finished default
   run (`--results`, default `results`), with the sweep settings of `--config`;
2. `esm2_t6_8M random`: fair-esm's ESM2 in the esm2_t6_8M_UR50D shape (6 layers, dim 320, 20
   heads) with random weights, random unit scores, `--esm-sequences` synthetic sequences of
   `--esm-lengths` residues, and a smaller sweep (`--esm-draws` random and control draws).

Contenders run interleaved (`--repeats` rounds; medians). It prints, per case and contender:
models, models per pass, wall and CPU seconds, models/s, the ratio against the baseline, the
share of the time in the forward passes, and whether the results table is identical to the
baseline's (it must be).

    PYTHONPATH=src python benchmarks/sweep_benchmark.py [--device auto] [--max-tokens 16384 65536]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from esm.model.esm2 import ESM2

from kneurons.analysis import evaluation
from kneurons.attribution.engine import scores_frame
from kneurons.data import synthetic
from kneurons.data.tables import read_labelled
from kneurons.model import train
from kneurons.model.esm import ALPHABET, EnzymeClassifier, linear, load_classifier, pick_device
from kneurons.model.units import MODULES
from kneurons.settings import SweepSettings, build, sweep_params


def timed_evaluation(model, test, classes, scores, settings, device) -> dict:
    """One evaluate_seed run: wall and CPU seconds, and the seconds spent in forward passes."""
    forward = {"s": 0.0}
    original = train.predict_proba_models

    def counted(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            forward["s"] += time.perf_counter() - started

    train.predict_proba_models = counted
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        results, _ = evaluation.evaluate_seed(model, test, classes, scores, settings, seed=0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        train.predict_proba_models = original
    return {"results": results, "wall_s": wall, "cpu_s": cpu, "forward_s": forward["s"]}


TIMES = ("wall_s", "cpu_s", "forward_s")


def run_case(name, model, test, classes, scores, settings, budgets, device, repeats) -> list[dict]:
    """The baseline and each budget on one case, `repeats` interleaved runs each (medians);
    prints the table."""
    model = model.to(device).eval()
    sequences = list(test["sequence"])
    batches = train.token_batches(sequences, batch_size=settings.batch_size)
    lengths = [len(s) for s in sequences]
    print(
        f"\n== {name}: {model.num_layers} layers, dim {model.esm.embed_dim}, "
        f"{len(scores)} methods, {len(sequences)} test sequences of {min(lengths)}-"
        f"{max(lengths)} residues, batch {settings.batch_size}, device {device}"
    )
    contenders = [("one model per pass (baseline)", 1)]
    contenders += [(f"max_tokens {b}", b) for b in budgets]
    if device.type == "cuda":
        contenders.append((f"max_tokens 0 (auto: {train.token_budget(0, model)})", 0))
    runs = {label: [] for label, _ in contenders}
    for _ in range(repeats):  # interleaved: A, B, C, A, B, C, ... so load drifts hit all alike
        for label, budget in contenders:
            settings_b = dataclasses.replace(settings, max_tokens=budget)
            runs[label].append(timed_evaluation(model, test, classes, scores, settings_b, device))
    rows, baseline = [], None
    for label, budget in contenders:
        run = {key: float(np.median([r[key] for r in runs[label]])) for key in TIMES}
        results = runs[label][0]["results"]
        n_models = len(results)
        row = {
            "case": name,
            "contender": label,
            "models": n_models,
            "per_pass": train.models_per_pass(
                batches, train.token_budget(budget, model), per_weight=False
            ),
            "reps": repeats,
            "wall_s": run["wall_s"],
            "cpu_s": run["cpu_s"],
            "models_per_s": n_models / run["wall_s"],
            "forward_share": run["forward_s"] / run["wall_s"],
        }
        if baseline is None:
            baseline = {**run, "results": results}
        row["speedup"] = baseline["wall_s"] / run["wall_s"]
        row["cpu_ratio"] = baseline["cpu_s"] / run["cpu_s"]
        row["identical"] = all(r["results"].equals(baseline["results"]) for r in runs[label])
        rows.append(row)
    table = pd.DataFrame(rows).drop(columns="case")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return rows


def default_case(results: Path, config: dict):
    """The seed-0 inputs of a finished default run, or None (with a message) without one."""
    model_path = results / "finetune/seed0/model.pt"
    if not model_path.exists():
        print(f"\n== default seed 0: skipped, {model_path} not found (run snakemake first)")
        return None
    model, meta = load_classifier(model_path)
    settings = build(SweepSettings, sweep_params(config))
    scores = {m: pd.read_csv(results / f"scores/seed0/{m}.tsv", sep="\t") for m in settings.methods}
    test = read_labelled(results / "data/split/seed0.tsv").query("split == 'test'")
    return model, test, meta["classes"], scores, settings


def esm_case(config: dict, n_sequences: int, lengths: tuple[int, int], draws: int):
    """A random-weight esm2_t6_8M-shaped classifier with random scores and a reduced sweep."""
    torch.manual_seed(0)
    model = EnzymeClassifier(ESM2(6, 320, 20, alphabet=ALPHABET, token_dropout=True), 6)
    generator = torch.Generator().manual_seed(0)
    scores = {
        method: scores_frame(
            {
                (layer, module): torch.rand(
                    linear(model.esm, layer, module).out_features, generator=generator
                )
                for layer in range(model.num_layers)
                for module in MODULES
            }
        )
        for method in config["scoring"]["methods"]
    }
    table = synthetic.generate_synthetic(-(-n_sequences // 6), *lengths, seed=1)
    test = table.sample(n=n_sequences, random_state=0).reset_index(drop=True)
    settings = dataclasses.replace(
        build(SweepSettings, sweep_params(config)), random_draws=draws, control_draws=draws
    )
    return model, test, sorted(test["ec_class"].unique()), scores, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--esm-sequences", type=int, default=24)
    parser.add_argument("--esm-lengths", type=int, nargs=2, default=[100, 250])
    parser.add_argument("--esm-draws", type=int, default=1)
    parser.add_argument("--skip-esm", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    config = yaml.safe_load(args.config.read_text())
    print(
        f"torch {torch.__version__}, {args.threads} thread(s) of {os.cpu_count()} cores, "
        f"device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    started = time.perf_counter()
    rows = []
    case = default_case(args.results, config)
    if case is not None:
        rows += run_case("default seed 0", *case, args.max_tokens, device, args.repeats)
    if not args.skip_esm:
        case = esm_case(config, args.esm_sequences, tuple(args.esm_lengths), args.esm_draws)
        rows += run_case("esm2_t6_8M random", *case, args.max_tokens, device, args.repeats)
    out = Path("benchmarks/out")
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "sweep_benchmark.tsv", sep="\t", index=False)
    load = os.getloadavg()[0]
    print(
        f"\ntotal {time.perf_counter() - started:.0f} s; 1-min load average {load:.1f}; "
        f"TSV: {out / 'sweep_benchmark.tsv'}"
    )
    if not all(row["identical"] for row in rows):
        raise SystemExit("a contender's results differ from the baseline's")


if __name__ == "__main__":
    main()
