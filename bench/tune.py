"""Tuning throughput: `tunelens tune` vs TRL's SFTTrainer with its default settings, same data, same model.

Both train LoRA r=16 (alpha 32, dropout 0.05) on all linear layers of the default model, batch 8,
one epoch over the same N chat examples (default 8, one step: TRL's default bf16 is
emulated on CPUs without AVX512-BF16 and takes minutes per step) of the telecom routing task (prompt = the routing
instruction, completion = the intent), learning rate 2e-4. Each runs in its own subprocess so peak
RSS is its own. Speed is real (non-pad) tokens per second of training time (Trainer's train_runtime).

    .venv/bin/python bench/tune.py [--examples 32]

Last line: tune: tunelens_tps=X trl_tps=Y speedup=Z loss_tunelens=A loss_trl=B peak_rss_mb=M
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
LR, BATCH, R, ALPHA, DROPOUT = 2e-4, 8, 16, 32, 0.05


def _items(n: int):
    from tunelens.data import load_items, load_task

    spec = load_task("telecom-intent")
    return spec, load_items(spec, "train")[:n]


def worker_tunelens(n: int, out: Path) -> dict:
    from tunelens.tune import load_config, tune

    spec, items = _items(n)
    data = out / "data.jsonl"
    data.write_text("".join(json.dumps({"id": it.id, "message": it.fields["text"], "intent": spec.labels[it.answer]})
                            + "\n" for it in items))
    task = out / "task.yaml"
    task.write_text(f"name: bench\ntype: classification\ndata: {data}\nfields: {{text: message, label: intent}}\n"
                    f"labels: {json.dumps(spec.labels)}\ntemplate: {json.dumps(spec.template)}\n")
    cfg = load_config(data=[str(task)], out=str(out / "run"), method="lora", lora_r=R, lora_alpha=ALPHA,
                      lora_dropout=DROPOUT, batch_size=BATCH, learning_rate=LR, epochs=1, save_steps=10_000,
                      warmup_ratio=0.0, progress=False)
    tune(cfg)
    run = json.loads((out / "run" / "run.json").read_text())
    return {"tokens": run["examples"]["tokens"], "seconds": run["train"]["train_runtime"],
            "loss": run["train"]["train_loss"]}


def worker_trl(n: int, out: Path, bf16: bool | None = None) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunelens.data import to_chat
    from tunelens.models import resolve_model

    spec, items = _items(n)
    rows = []
    for it in items:
        chat = to_chat(spec, it)
        rows.append({"prompt": chat[:-1], "completion": chat[-1:]})
    handle = resolve_model("default")
    args = SFTConfig(output_dir=str(out / "trl"), per_device_train_batch_size=BATCH, learning_rate=LR,
                     num_train_epochs=1, report_to="none", save_strategy="no", logging_steps=1, use_cpu=True,
                     warmup_steps=0, disable_tqdm=True, **({} if bf16 is None else {"bf16": bf16}))
    trainer = SFTTrainer(model=handle.model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=handle.tokenizer,
                         peft_config=LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=DROPOUT,
                                                target_modules="all-linear", task_type="CAUSAL_LM"))
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    result = trainer.train()
    return {"tokens": tokens, "seconds": result.metrics["train_runtime"], "loss": result.training_loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--no-fp32-peer", action="store_true",
                    help="skip the extra TRL run with bf16 off (TRL defaults to bf16, emulated on CPUs without "
                         "AVX512-BF16/AMX; the fp32 run shows how much of the gap that is)")
    ap.add_argument("--worker", choices=["tunelens", "trl", "trl-fp32"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        if args.worker == "tunelens":
            res = worker_tunelens(args.examples, Path(args.out))
        else:
            res = worker_trl(args.examples, Path(args.out), bf16=False if args.worker == "trl-fp32" else None)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(res))
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("tunelens", "trl") + (() if args.no_fp32_peer else ("trl-fp32",)):
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--examples", str(args.examples),
                                   "--out", tmp], capture_output=True, text=True)
            line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                raise SystemExit(f"{name} worker failed")
            results[name] = json.loads(line[-1][7:])
            r = results[name]
            r["tps"] = r["tokens"] / r["seconds"]
            print(f"{name}: {r['tokens']} real tokens in {r['seconds']:.1f}s = {r['tps']:.1f} tok/s, "
                  f"loss {r['loss']:.4f}, peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
    tl, trl = results["tunelens"], results["trl"]
    if "trl-fp32" in results:
        print(f"tunelens vs TRL with bf16 off: {tl['tps'] / results['trl-fp32']['tps']:.2f}x", file=sys.stderr)
    print(f"tune: tunelens_tps={tl['tps']:.1f} trl_tps={trl['tps']:.1f} speedup={tl['tps'] / trl['tps']:.2f} "
          f"loss_tunelens={tl['loss']:.4f} loss_trl={trl['loss']:.4f} peak_rss_mb={tl['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
