"""Audit wall time: every built-in suite, the default model against a LoRA-tuned copy of it.

Without --tuned, a LoRA adapter is first tuned on the telecom routing task for a few steps (not
timed). The audit itself (all suites, the demo task as the user's task) is timed end to end, and
generated tokens per second are counted over the suites that generate (safety, over-refusal, context).

    .venv/bin/python bench/audit.py [--tuned out/tune/model] [--limit N]

Last line: audit: seconds=X gen_tps=Y
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tuned", help="a tuned model or adapter (default: tune a quick LoRA first)")
    ap.add_argument("--tune-steps", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None, help="cap items per suite")
    args = ap.parse_args()

    from tunelens.audit import AuditContext, run_audit
    from tunelens.data import load_task
    from tunelens.models import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        tuned = args.tuned
        if not tuned:
            from tunelens.tune import load_config, tune

            tuned = str(tune(load_config(data=["telecom-intent"], out=str(Path(tmp) / "tune"),
                                         max_steps=args.tune_steps, save_steps=10_000, progress=False)))
        base, tuned_h = resolve_model("default"), resolve_model(tuned, merge_adapter="auto")
        ctx = AuditContext(base=base, tuned=tuned_h, tasks=[load_task("telecom-intent")], limit=args.limit,
                           progress=False)
        t0 = time.perf_counter()
        ledger = run_audit(ctx, out=Path(tmp) / "audit")
        seconds = time.perf_counter() - t0
        gen_seconds = sum(ledger["suites"][s]["seconds"] for s in ("safety", "over_refusal", "context")
                          if s in ledger["suites"])
    for name, block in ledger["suites"].items():
        print(f"{name:14s} {block['status']:6s} {block['seconds']:7.1f}s", file=sys.stderr)
        for e in block["entries"][:6]:
            if e["delta"] is not None:
                print(f"    {e['metric']:32s} base={e['base']:.3f} tuned={e['tuned']:.3f} delta={e['delta']:+.3f}",
                      file=sys.stderr)
    gen_tps = ledger["generated_tokens"] / gen_seconds if gen_seconds else 0.0
    print(f"audit: seconds={seconds:.1f} gen_tps={gen_tps:.1f}")


if __name__ == "__main__":
    main()
