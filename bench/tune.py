"""Tuning throughput: `tunelens tune` vs TRL's SFTTrainer with its default settings, same data, same model.

Both train LoRA r=16 (alpha 32, dropout 0.05) on all linear layers of the default model, batch 8, learning rate
2e-4, one epoch of `--steps` optimizer steps (default 8) over the same `steps x 8` chat examples of the telecom
routing task (prompt = the routing instruction, completion = the intent). The examples are a seeded sample of the
task's *real* train split that keeps its length distribution: the split is sorted by token length, cut into
`steps x 8` equal bins, and one example is drawn from each bin (not the first N rows). Each trainer runs in its own
subprocess so peak RSS is its own. Speed is real (non-pad) tokens per second of training time (Trainer's
train_runtime). TRL's default is bf16 autocast, which is emulated (slow) on CPUs without AVX512-BF16 / AMX; the
extra `trl-fp32` run (skip with --no-fp32-peer) shows how much of the gap that is.

flop_util is tunelens' useful training FLOP rate over the matmul peak, in the precision its matmuls ran in,
measured in the tunelens worker (torch.mm of 2048 x 2048 fp32 matrices, and bf16 ones where bf16 is native, with
the same thread count, best of 7), just before it trains. On an AMX CPU the bf16 peak is ~6x the fp32 one: a bf16
run is held to it, not to the fp32 peak it would beat. The
useful FLOPs of one example of n real tokens, c of them completion tokens, counted exactly (no padding):
  - the frozen linear layers of the blocks (N_lin weights): forward 2*N_lin + input gradient 2*N_lin per token;
    no weight gradient (LoRA freezes them): 4*N_lin*n  (full tuning would be 6*N_lin*n)
  - the LoRA factors (N_lora = r*(in+out) summed over adapted layers): forward, input and weight gradients,
    6*N_lora*n
  - attention scores and weighted values (causal, n^2/2 pairs, 2*d FLOPs each for QK^T and for AV, forward; the
    backward needs both operands' gradients, 2x forward): 3 * 2*d*n^2 * layers = 6*layers*d*n^2
  - the output layer only where a loss is taken (the completion tokens): forward + input gradient 4*V*d*c
    (tunelens computes logits only for the last K positions; the positions it computes but does not score are
    not counted, nor the embedding lookup, norms, activations, softmax, the optimizer step)
Both trainers do the same useful work, so the FLOP rate ratio is the tokens/s ratio.

    flock /tmp/tunelens-bench.lock .venv/bin/python bench/tune.py [--steps 8] [--no-fp32-peer] [--trl-steps N]

On an AVX2-only CPU TRL's emulated bf16 runs ~4 tok/s: 8 steps take ~30 min. `--trl-steps 2` times it over its
first 2 steps (~8 min; the loss compared is then the fp32 peer's over all steps), and the whole bench takes
~15 min.

Last line: tune: tunelens_tps=X trl_tps=Y speedup=Z loss_tunelens=A loss_trl=B flop_util=F precision_tunelens=P
precision_trl=Q bf16_native=yes|no peak_rss_mb=M
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
LR, BATCH, R, ALPHA, DROPOUT = 2e-4, 8, 16, 32, 0.05


def _items(n: int, seed: int, tokenizer):
    """n train items of the demo task, one from each of n equal bins of the split sorted by token length."""
    from tunelens.data import load_items, load_task, to_chat
    from tunelens.tune.examples import tokenize_chat

    spec = load_task("telecom-intent")
    items = load_items(spec, "train")
    if n > len(items):
        raise SystemExit(f"--steps x {BATCH} = {n} examples, but the demo task's train split has {len(items)}")
    lengths = [len(tokenize_chat(tokenizer, to_chat(spec, it), 10_000)[0]) for it in items]
    rng = random.Random(seed)
    order = sorted(range(len(items)), key=lambda i: (lengths[i], rng.random()))
    picked = []
    for b in range(n):
        lo, hi = b * len(order) // n, (b + 1) * len(order) // n
        picked.append(order[rng.randrange(lo, hi)])
    rng.shuffle(picked)
    return spec, [items[i] for i in picked], [lengths[i] for i in picked]


def matmul_peak(threads: int, size: int = 2048, repeats: int = 7, dtype: str = "fp32") -> float:
    """Best torch.mm rate (FLOP/s) over `repeats` timed products of two size x size fp32 or bf16 matrices."""
    import torch

    torch.set_num_threads(threads)
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dt), torch.randn(size, size, dtype=dt)
    torch.mm(a, b)  # warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def useful_flops(model, rows: list[dict], r: int) -> float:
    """The training FLOPs of the module docstring, summed over the examples (each a dict of input_ids, labels)."""
    import torch

    cfg = model.config
    n_lin, n_lora = 0, 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
            n_lin += mod.in_features * mod.out_features
            n_lora += r * (mod.in_features + mod.out_features)
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    total = 0.0
    for row in rows:
        n = len(row["input_ids"])
        c = sum(1 for t in row["labels"] if t != -100)
        total += (4 * n_lin + 6 * n_lora) * n + 6 * layers * d * n * n + 4 * vocab * d * c
    return total


def worker_tunelens(steps: int, seed: int, out: Path) -> dict:
    import torch

    from tunelens.models import resolve_model
    from tunelens.precision import cpu_bf16
    from tunelens.tune import load_config, tune
    from tunelens.tune.examples import build_examples

    handle = resolve_model("default")
    spec, items, _ = _items(steps * BATCH, seed, handle.tokenizer)
    data = out / "data.jsonl"
    data.write_text("".join(json.dumps({"id": it.id, "message": it.fields["text"], "intent": spec.labels[it.answer]})
                            + "\n" for it in items))
    task = out / "task.yaml"
    task.write_text(f"name: bench\ntype: classification\ndata: {data}\nfields: {{text: message, label: intent}}\n"
                    f"labels: {json.dumps(spec.labels)}\ntemplate: {json.dumps(spec.template)}\n")
    cfg = load_config(data=[str(task)], out=str(out / "run"), method="lora", lora_r=R, lora_alpha=ALPHA,
                      lora_dropout=DROPOUT, batch_size=BATCH, learning_rate=LR, epochs=1, save_steps=10_000,
                      warmup_ratio=0.0, progress=False, seed=seed)
    rows, _ = build_examples(cfg, handle.tokenizer)
    flops = useful_flops(handle.model, rows, R)
    del handle
    # the peak of the precision the matmuls run in: both measured before training where auto may pick bf16
    peaks = {"fp32": matmul_peak(torch.get_num_threads())}
    if cpu_bf16().native:
        peaks["bf16"] = matmul_peak(torch.get_num_threads(), dtype="bf16")
    tune(cfg)
    run = json.loads((out / "run" / "run.json").read_text())
    seconds = run["train"]["train_runtime"]
    precision = run.get("precision", {}).get("chosen", "fp32")
    if precision not in peaks:
        peaks[precision] = matmul_peak(torch.get_num_threads(), dtype=precision)
    peak = peaks[precision]
    return {"tokens": run["examples"]["tokens"], "seconds": seconds, "loss": run["train"]["train_loss"],
            "steps": run["train"]["global_step"], "precision": precision,
            "precision_why": run.get("precision", {}).get("why", ""), "flops": flops, "peak_flops": peak,
            "peaks": peaks, "flop_util": flops / seconds / peak, "threads": torch.get_num_threads(),
            "cpu": cpu_bf16().describe()}


def worker_trl(steps: int, seed: int, out: Path, bf16: bool | None = None, max_steps: int = -1) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunelens.data import to_chat
    from tunelens.models import resolve_model

    handle = resolve_model("default")
    spec, items, _ = _items(steps * BATCH, seed, handle.tokenizer)
    rows = []
    for it in items:
        chat = to_chat(spec, it)
        rows.append({"prompt": chat[:-1], "completion": chat[-1:]})
    args = SFTConfig(output_dir=str(out / "trl"), per_device_train_batch_size=BATCH, learning_rate=LR,
                     num_train_epochs=1, report_to="none", save_strategy="no", logging_steps=1, use_cpu=True,
                     warmup_steps=0, disable_tqdm=True, seed=seed, max_steps=max_steps,
                     **({} if bf16 is None else {"bf16": bf16}))
    trainer = SFTTrainer(model=handle.model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=handle.tokenizer,
                         peft_config=LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=DROPOUT,
                                                target_modules="all-linear", task_type="CAUSAL_LM"))
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    seen = []
    if max_steps > 0:  # only the first max_steps batches train: count their real tokens
        from transformers import TrainerCallback

        class Count(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                seen.append(state.num_input_tokens_seen)

        trainer.args.include_num_input_tokens_seen = "non_padding"
        trainer.add_callback(Count())
    result = trainer.train()
    if max_steps > 0:
        tokens = seen[-1]
    return {"tokens": tokens, "seconds": result.metrics["train_runtime"], "loss": result.training_loss,
            "steps": result.global_step, "precision": "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32"),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps of batch 8 (examples = steps x 8)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the example sample and of both trainers")
    ap.add_argument("--no-fp32-peer", action="store_true",
                    help="skip the extra TRL run with bf16 off (TRL defaults to bf16, emulated on CPUs without "
                         "AVX512-BF16/AMX; the fp32 run shows how much of the gap that is)")
    ap.add_argument("--trl-steps", type=int, default=None,
                    help="time TRL's default (bf16) run over its first N steps only (it is emulated and ~10x slower "
                         "on CPUs without AVX512-BF16/AMX); its loss is then not comparable and the last line's "
                         "loss_trl is the fp32 peer's over all --steps")
    ap.add_argument("--only", choices=["tunelens", "trl", "trl-fp32"], action="append",
                    help="run only these workers (repeatable; the last line needs tunelens and trl)")
    ap.add_argument("--worker", choices=["tunelens", "trl", "trl-fp32"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--max-steps", type=int, default=-1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_steps is not None and args.trl_steps < args.steps and args.no_fp32_peer:
        ap.error("--trl-steps below --steps needs the fp32 peer for loss_trl (drop --no-fp32-peer)")
    if args.worker:
        if args.worker == "tunelens":
            res = worker_tunelens(args.steps, args.seed, Path(args.out))
        else:
            res = worker_trl(args.steps, args.seed, Path(args.out),
                             bf16=False if args.worker == "trl-fp32" else None, max_steps=args.max_steps)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(res))
        return

    from tunelens.precision import cpu_bf16

    cpu = cpu_bf16()
    print(f"cpu: {cpu.describe()}; load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    t_start = time.perf_counter()
    names = args.only or ["tunelens", "trl"] + ([] if args.no_fp32_peer else ["trl-fp32"])
    results = {}
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            short = name == "trl" and args.trl_steps is not None and args.trl_steps < args.steps
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(args.steps),
                                   "--seed", str(args.seed), "--out", tmp]
                                  + (["--max-steps", str(args.trl_steps)] if short else []),
                                  capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"{name} worker failed")
        results[name] = r = json.loads(line[-1][7:])
        r["tps"] = r["tokens"] / r["seconds"]
        peaks = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in r.get("peaks", {}).items())
        extra = (f", flop_util {r['flop_util']:.3f} ({r['flops'] / r['seconds'] / 1e9:.1f} of "
                 f"{r['peak_flops'] / 1e9:.1f} GFLOP/s {r['precision']} matmul peak; peaks {peaks}), "
                 f"precision {r['precision']} ({r['precision_why']})"
                 if name == "tunelens" else f", precision {r['precision']}")
        print(f"{name}: {r['steps']} steps, {r['tokens']} real tokens in {r['seconds']:.1f}s = {r['tps']:.1f} tok/s, "
              f"loss {r['loss']:.4f}, peak RSS {r['peak_rss_mb']:.0f} MB, {r['threads']} threads{extra} "
              f"[worker wall {time.perf_counter() - t0:.0f}s, load {os.getloadavg()[0]:.2f}]", file=sys.stderr)
    print(f"bench wall time {time.perf_counter() - t_start:.0f}s", file=sys.stderr)
    if "tunelens" not in results or "trl" not in results:
        return
    tl, trl = results["tunelens"], results["trl"]
    loss_trl = trl["loss"]
    if trl["steps"] < tl["steps"]:
        if "trl-fp32" not in results:
            raise SystemExit("TRL ran fewer steps than tunelens and there is no fp32 peer for its loss")
        loss_trl = results["trl-fp32"]["loss"]
        print(f"TRL's default run was timed over its first {trl['steps']} of {tl['steps']} steps; loss_trl is the "
              f"fp32 peer's over all {results['trl-fp32']['steps']} steps", file=sys.stderr)
    if "trl-fp32" in results:
        fp = results["trl-fp32"]
        print(f"tunelens vs TRL with bf16 off: {tl['tps'] / fp['tps']:.2f}x (trl-fp32 loss {fp['loss']:.4f})",
              file=sys.stderr)
    print(f"tune: tunelens_tps={tl['tps']:.1f} trl_tps={trl['tps']:.1f} speedup={tl['tps'] / trl['tps']:.2f} "
          f"loss_tunelens={tl['loss']:.4f} loss_trl={loss_trl:.4f} flop_util={tl['flop_util']:.3f} "
          f"precision_tunelens={tl['precision']} precision_trl={trl['precision']} "
          f"bf16_native={'yes' if cpu.native else 'no'} peak_rss_mb={tl['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
