"""Scoring throughput: tunelens vs lm-evaluation-harness on the same multiple-choice items, same model.

Both score identical (context, continuation) strings: the telecom routing task's prompts are rendered
once by tunelens (chat template applied) and handed to lm-eval through a local task YAML whose
doc_to_text is the rendered prompt. Both runs are timed end to end (task set-up, scoring, metrics),
in this process, one after the other, on the same loaded model.

    .venv/bin/python bench/scoring.py [--items 200] [--lmeval-batch-size 16]

Last line: scoring: tunelens_rps=X lmeval_rps=Y speedup=Z acc_tunelens=A acc_lmeval=B max_abs_diff=D
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--task", default="telecom-intent")
    ap.add_argument("--items", type=int, default=60, help="number of items (from train+validation+test)")
    ap.add_argument("--lmeval-batch-size", type=int, default=16)
    args = ap.parse_args()

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from tunelens.data import continuations, load_items, load_task, render_prompt
    from tunelens.evaluate import evaluate
    from tunelens.models import resolve_model

    torch.manual_seed(0)
    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    handle = resolve_model(args.model)
    spec = load_task(args.task)
    items = [it for split in ("test", "validation", "train") for it in load_items(spec, split)][: args.items]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [{"id": it.id, "prompt": render_prompt(spec, it, handle.tokenizer), "choices": continuations(spec, it),
                 "answer": it.answer} for it in items]
        data = tmp / "items.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        # the same items as a tunelens multiple-choice task with pre-rendered prompts
        (tmp / "tl.yaml").write_text(
            f"name: bench-mc\ntype: multiple_choice\ndata: {{test: {data}}}\nfields: {{question: prompt}}\n"
            "template: '{question}'\nchat_template: false\nchoice_prefix: ''\n")
        (tmp / "lmeval").mkdir()
        (tmp / "lmeval" / "bench_mc.yaml").write_text(
            "task: tunelens_bench_mc\noutput_type: multiple_choice\ndataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
            "doc_to_text: '{{prompt}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: answer\ntarget_delimiter: ''\n"
            "metric_list:\n  - metric: acc\n")
        n_requests = sum(len(r["choices"]) for r in rows)

        t0 = time.perf_counter()
        tl = evaluate(handle, load_task(tmp / "tl.yaml"), progress=False)
        tl_seconds = time.perf_counter() - t0

        lm = HFLM(pretrained=handle.model, tokenizer=handle.tokenizer, batch_size=args.lmeval_batch_size,
                  add_bos_token=False, device="cpu")
        t0 = time.perf_counter()
        res = simple_evaluate(model=lm, tasks=["tunelens_bench_mc"], task_manager=TaskManager(include_path=str(tmp / "lmeval")),
                              bootstrap_iters=0, log_samples=True, verbosity="ERROR")
        lm_seconds = time.perf_counter() - t0

    samples = {s["doc"]["id"]: s for s in res["samples"]["tunelens_bench_mc"]}
    max_diff = 0.0
    for rec in tl.records:
        lm_ll = [float(r[0]) for r in samples[rec["id"]]["filtered_resps"]]
        max_diff = max(max_diff, max(abs(a - b) for a, b in zip(rec["logprob"], lm_ll)))
    acc_lm = res["results"]["tunelens_bench_mc"]["acc,none"]
    acc_tl = tl.metrics["accuracy"]["value"]
    tl_rps, lm_rps = n_requests / tl_seconds, n_requests / lm_seconds
    print(f"items={len(rows)} requests={n_requests} model={args.model} threads={torch.get_num_threads()} "
          f"lmeval_batch_size={args.lmeval_batch_size}", file=sys.stderr)
    print(f"tunelens: {tl_seconds:.1f}s  lm-eval: {lm_seconds:.1f}s", file=sys.stderr)
    print(f"scoring: tunelens_rps={tl_rps:.1f} lmeval_rps={lm_rps:.1f} speedup={tl_rps / lm_rps:.2f} "
          f"acc_tunelens={acc_tl:.4f} acc_lmeval={acc_lm:.4f} max_abs_diff={max_diff:.2e}")


if __name__ == "__main__":
    main()
