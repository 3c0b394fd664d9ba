"""Generation speed: tunelens' static batches vs transformers' continuous batching, on the audit's own prompts.

The prompts are those of the built-in safety and over-refusal suites, rendered as the audit renders them
(`audit.safety.judged_generations`: the task's chat template, `render_prompt`), generated with the suites' settings
(`safety.MAX_NEW_TOKENS`, no stop strings, greedy, the refusal openers' first-token log-probs as `score_ids`) by
the default model. A seeded subset (`--n`, `--seed`) of the two pools together is used, the same for every method.

Methods (`--methods`, run interleaved A B A B ... `--repeats` times so load drift hits each alike):
  static64     `scoring.generate(batch_size=64)` on the whole subset in one call (the issue's "static batch of 64")
  audit        `scoring.generate` as the audit calls it: one call per chunk of `AuditContext.chunk` prompts,
               `batch_size=AuditContext.batch_size`
  staticN      `scoring.generate(batch_size=N)` in one call (e.g. static32)
  cb-R[-T][-P] `model.generate_batch` (continuous batching, paged KV cache) with max_requests_per_batch=R,
               max_batch_tokens=T (default R x the longest prompt, at most 8192), page_size=P (default 64); the
               cache holds the whole subset (num_blocks from the workload), not the default 90% of RAM.
               It returns no first-token distribution, so `score_ids` is not served: its time is a lower bound
               for a continuous-batching path that would need one more prefill for them.

Each run's time is the whole call (manager set-up and warm-up included for continuous batching: that is what a
`generate` call would pay). Token agreement: each method's greedy tokens (cut at eos) against static64's.

    flock /tmp/tunelens-bench.lock .venv/bin/python bench/generate.py [--n 96] [--methods static64,audit,cb-64]

Last line: generate: static_seconds=X cb_seconds=Y speedup=Z tokens_equal=K/N
(X: static64's best time, Y: the fastest continuous-batching setting's best time, Z = X / Y, K of N prompts with
token-identical output between the two).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from audit import cpu_flags  # noqa: E402  (every bench prints the same CPU line)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def audit_prompts(handle, n: int | None, seed: int):
    """(prompts, suite of each, max_new_tokens, stop, score_ids) as the safety and over-refusal suites render and
    generate them; a seeded subset of n of the two pools together (None: all)."""
    from tunelens.audit import safety
    from tunelens.audit.core import AuditContext
    from tunelens.audit.refusal import opener_ids
    from tunelens.data import load_task, render_prompt

    ctx = AuditContext(base=handle, tuned=handle, progress=False)
    rows = []
    # the tasks judged_generations draws from: the safety suite's probes, the over-refusal suite's set
    for task in (safety.SafetySuite.probes, "over-refusal"):
        spec = load_task(task)
        rows += [(render_prompt(spec, it, handle.tokenizer), task) for it in ctx.draw(spec)]
    if n is not None and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    ref, com = opener_ids(handle.tokenizer)
    # judged_generations calls generate with max_new_tokens=MAX_NEW_TOKENS and no stop strings
    return [p for p, _ in rows], [t for _, t in rows], safety.MAX_NEW_TOKENS, None, ref + com, ctx


def run_static(h, prompts, max_new, stop, score_ids, batch_size, chunk=None):
    from tunelens.scoring import generate

    chunk = chunk or len(prompts)
    out = []
    for a in range(0, len(prompts), chunk):
        out += generate(h.model, h.tokenizer, prompts[a:a + chunk], max_new_tokens=max_new, stop=stop,
                        batch_size=batch_size, progress=False, score_ids=score_ids)
    return [g.tokens for g in out], [g.logprob for g in out]


def parse_cb(name: str) -> dict:
    parts = name.split("-")[1:]
    r = int(parts[0])
    return {"max_requests_per_batch": r, "max_batch_tokens": int(parts[1]) if len(parts) > 1 else None,
            "page_size": int(parts[2]) if len(parts) > 2 else 64}


def run_cb(h, prompts, max_new, setting: dict):
    import torch
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from tunelens.scoring import encode

    tok = h.tokenizer
    enc = [encode(tok, p) for p in prompts]
    longest = max(len(e) for e in enc)
    page = setting["page_size"]
    blocks = sum(math.ceil((len(e) + max_new) / page) for e in enc) + 2
    mbt = setting["max_batch_tokens"] or min(8192, setting["max_requests_per_batch"] * longest)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gc = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, eos_token_id=tok.eos_token_id,
                          pad_token_id=pad)
    cbc = ContinuousBatchingConfig(page_size=page, num_blocks=blocks, max_batch_tokens=mbt,
                                   max_requests_per_batch=setting["max_requests_per_batch"], return_logprobs=True,
                                   allow_block_sharing=True, seed=0)
    with torch.inference_mode():
        out = h.model.generate_batch(inputs=enc, generation_config=gc, continuous_batching_config=cbc)
    res = list(out.values())
    if len(res) != len(prompts) or any(r.error for r in res):
        raise RuntimeError(f"continuous batching returned {len(res)} of {len(prompts)} results")
    toks, lps = [], []
    for r in res:  # cut at eos as scoring.generate does (its Generation.tokens hold no eos)
        t = list(r.generated_tokens)
        ends = [k for k, x in enumerate(t) if x in (tok.eos_token_id, pad)]
        n = ends[0] if ends else len(t)
        toks.append(t[:n])
        lps.append(float(sum(r.logprobs[:n])))
    return toks, lps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="prompts, a seeded subset of both pools (0: all 348)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="static64,audit,cb-64,cb-16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default). On a loaded machine 1 thread avoids the stalls of a "
                         "2-thread op waiting for a core another process holds")
    args = ap.parse_args()

    import torch
    import transformers

    from tunelens.models import resolve_model

    logging.getLogger("transformers").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_flags()}; {os.cpu_count()} cpus, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"transformers {transformers.__version__}", file=sys.stderr)
    h = resolve_model("default")
    attn = h.model.config._attn_implementation
    prompts, suites, max_new, stop, score_ids, ctx = audit_prompts(h, args.n or None, args.seed)
    lens = [len(h.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    print(f"{len(prompts)} prompts ({suites.count('safety-probes')} safety, {suites.count('over-refusal')} "
          f"over-refusal; {min(lens)}-{max(lens)} tokens), max_new_tokens={max_new}, stop={stop}, "
          f"{len(score_ids)} score_ids; audit: batch_size={ctx.batch_size}, chunk={ctx.chunk}", file=sys.stderr)

    methods = args.methods.split(",")
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}  # process CPU seconds (all threads): less load-sensitive
    tokens: dict[str, list[list[int]]] = {}
    logprobs: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        for m in methods:
            before = load()
            t0, c0 = time.perf_counter(), time.process_time()
            if m == "static64":
                toks, lps = run_static(h, prompts, max_new, stop, score_ids, 64)
            elif m == "audit":
                toks, lps = run_static(h, prompts, max_new, stop, score_ids, ctx.batch_size, chunk=ctx.chunk)
            elif m.startswith("static"):
                toks, lps = run_static(h, prompts, max_new, stop, score_ids, int(m[len("static"):]))
            elif m.startswith("cb-"):
                toks, lps = run_cb(h, prompts, max_new, parse_cb(m))
                h.model.set_attn_implementation(attn)  # as it was: generate_batch may switch it
            else:
                raise SystemExit(f"unknown method {m!r}")
            s, c = time.perf_counter() - t0, time.process_time() - c0
            times[m].append(s)
            cpu[m].append(c)
            tokens.setdefault(m, toks)
            logprobs.setdefault(m, lps)
            if tokens[m] != toks:
                print(f"  note: {m} gave other tokens on repeat {rep}", file=sys.stderr)
            new = sum(len(t) for t in toks)
            print(f"[{m} #{rep}] {s:.1f}s  {len(prompts) / s:.2f} items/s  {new / s:.1f} new tokens/s  "
                  f"({new} tokens)  cpu {c:.1f}s  load {before} -> {load()}", file=sys.stderr)

    ref = tokens.get("static64") or tokens[methods[0]]
    ref_lp = logprobs.get("static64") or logprobs[methods[0]]
    print("summary (best of repeats):", file=sys.stderr)
    for m in methods:
        best = min(times[m])
        new = sum(len(t) for t in tokens[m])
        eq = sum(a == b for a, b in zip(tokens[m], ref))
        # summed log-prob of the reply, where the tokens agree: the numerics of another attention kernel
        dlp = max((abs(x - y) for a, b, x, y in zip(tokens[m], ref, logprobs[m], ref_lp) if a == b), default=0.0)
        first = next((i for i, (a, b) in enumerate(zip(tokens[m], ref)) if a != b), None)
        if first is not None:
            a, b = tokens[m][first], ref[first]
            k = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"  {m}: prompt {first} differs from token {k} of {len(b)}", file=sys.stderr)
        print(f"  {m:14s} best {best:7.1f}s  runs {[round(x, 1) for x in times[m]]}  {len(prompts) / best:.2f} items/s  "
              f"{new / best:.1f} new tokens/s  cpu best {min(cpu[m]):.1f}s  tokens_equal_static64={eq}/{len(prompts)}  "
              f"max|dlogprob|={dlp:.1e}", file=sys.stderr)
    cbs = [m for m in methods if m.startswith("cb-")]
    static_s = min(times["static64"]) if "static64" in times else float("nan")
    if cbs:
        fastest = min(cbs, key=lambda m: min(times[m]))
        cb_s = min(times[fastest])
        eq = sum(a == b for a, b in zip(tokens[fastest], ref))
        print(f"fastest continuous-batching setting: {fastest}", file=sys.stderr)
        print(f"generate: static_seconds={static_s:.1f} cb_seconds={cb_s:.1f} speedup={static_s / cb_s:.2f} "
              f"tokens_equal={eq}/{len(prompts)}")
    else:
        print(f"generate: static_seconds={static_s:.1f} cb_seconds=nan speedup=nan tokens_equal=0/{len(prompts)}")


if __name__ == "__main__":
    main()
