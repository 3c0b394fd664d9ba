"""Audit wall time: every built-in suite, the default model against a LoRA-tuned copy of it.

Without --tuned, a LoRA adapter is first tuned on the telecom routing task for a few steps (not
timed). The audit itself (all suites, the demo task as the user's task) is timed end to end, and
generated tokens per second are counted over the suites that generate (safety, over-refusal, context).

    .venv/bin/python bench/audit.py [--tuned out/tune/model] [--limit N] [--warm]

The timed audit keeps the base model's results in a fresh BaseStore, as `tunelens audit` does. With --warm a
second audit of the same pair follows with a new store on the same folder: what every later audit against
this base costs (the base model is not run).

Last line: audit: seconds=X gen_tps=Y   (with --warm: ... warm_seconds=Z)
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
    ap.add_argument("--warm", action="store_true", help="then time a second audit with the base results on disk")
    args = ap.parse_args()

    from tunelens.audit import AuditContext, run_audit
    from tunelens.audit.base_store import BaseStore
    from tunelens.data import load_task
    from tunelens.models import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        tuned = args.tuned
        if not tuned:
            from tunelens.tune import load_config, tune

            tuned = str(tune(load_config(data=["telecom-intent"], out=str(Path(tmp) / "tune"),
                                         max_steps=args.tune_steps, save_steps=10_000, progress=False)))
        base, tuned_h = resolve_model("default"), resolve_model(tuned, merge_adapter="auto")

        def audit(out: str):
            ctx = AuditContext(base=base, tuned=tuned_h, tasks=[load_task("telecom-intent")], limit=args.limit,
                               progress=False)
            t0 = time.perf_counter()
            ctx.base_cache = store = BaseStore(Path(tmp) / "base-store", ctx)
            print(f"[{out}] fingerprint {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            ledger = run_audit(ctx, out=Path(tmp) / out)
            return ledger, time.perf_counter() - t0, store.hits

        ledger, seconds, _ = audit("audit")
        if args.warm:
            warm_ledger, warm_seconds, hits = audit("audit-warm")
            same = all(warm_ledger["suites"][s]["entries"] == b["entries"] for s, b in ledger["suites"].items())
            print(f"[warm] {hits} base results read from disk; ledger identical to the cold one: {same}",
                  file=sys.stderr)
        gen_seconds = sum(ledger["suites"][s]["seconds"] for s in ("safety", "over_refusal", "context")
                          if s in ledger["suites"])
    for name, block in ledger["suites"].items():
        print(f"{name:14s} {block['status']:6s} {block['seconds']:7.1f}s", file=sys.stderr)
        for e in block["entries"][:6]:
            if e["delta"] is not None:
                print(f"    {e['metric']:32s} base={e['base']:.3f} tuned={e['tuned']:.3f} delta={e['delta']:+.3f}",
                      file=sys.stderr)
    gen_tps = ledger["generated_tokens"] / gen_seconds if gen_seconds else 0.0
    warm = f" warm_seconds={warm_seconds:.1f}" if args.warm else ""
    print(f"audit: seconds={seconds:.1f} gen_tps={gen_tps:.1f}{warm}")


if __name__ == "__main__":
    main()
