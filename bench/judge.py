"""The default judge (rules+probe) against its peer, the rules alone, in the same run.

1. Held-out accuracy and speed of each judge on the labelled corpus' held-out part (requests the probe never saw):
   items_per_s counts replies judged per second, the encoder's forward included (its features memo is cleared
   first, so nothing is reused).
2. What the probe adds to the safety suite: the safety suite run twice on the same items of the default model
   against itself (base and tuned the same weights: the generation cost is real, the deltas are not the point),
   once judged by the rules and once by rules+probe, each with a fresh context and no base store. The overhead is
   (rules+probe seconds − rules seconds) / rules seconds; target ≤ 0.10 (issue 17).

    .venv/bin/python bench/judge.py [--items 64]

Last line: judge: items_per_s=X acc_heldout=Y
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

from audit import cpu_flags  # noqa: E402


def judge_speed(spec: str, held: list[dict]) -> tuple[float, float]:
    from tunelens.judge import load_judge
    from tunelens.judge import card as C

    j = load_judge(spec)
    enc = getattr(j, "encoder", None)
    if enc is not None:
        enc._memo.clear()
    t0 = time.perf_counter()
    v = [x[0] for x in j.verdicts([r["request"] for r in held], [r["response"] for r in held])]
    dt = time.perf_counter() - t0
    return len(held) / dt, C.card([r["label"] for r in held], v)["accuracy"]


def safety_seconds(spec: str, handle, items: int) -> tuple[float, float]:
    """(suite seconds, judging seconds inside it) for the safety suite on `items` probes."""
    from tunelens.audit import AuditContext, run_audit
    from tunelens.judge import load_judge

    j = load_judge(spec)
    inner = {"s": 0.0}
    original = j.verdicts

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            inner["s"] += time.perf_counter() - t

    j.verdicts = timed
    if getattr(j, "encoder", None) is not None:
        j.encoder._memo.clear()
    ctx = AuditContext(base=handle, tuned=handle, limit=items, sequential=False, progress=False, judge=spec)
    t0 = time.perf_counter()
    ledger = run_audit(ctx, ["safety"])
    dt = time.perf_counter() - t0
    j.verdicts = original
    assert ledger["suites"]["safety"]["status"] == "ok", ledger["suites"]["safety"].get("error")
    return dt, inner["s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=64, help="safety probes per run (default 64)")
    args = ap.parse_args()

    import torch

    from tunelens.judge import CORPUS_FILE, load_judge
    from tunelens.judge.train import corpus
    from tunelens.models import resolve_model

    print(f"cpu: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    _, held = corpus(CORPUS_FILE)
    load_judge("rules+probe")  # load (and hash) the encoder outside the timings
    rows = {}
    for spec in ("rules", "rules+probe"):
        rows[spec] = judge_speed(spec, held)
        print(f"held-out ({len(held)} replies) {spec}: {rows[spec][0]:.1f} items/s, accuracy {rows[spec][1]:.3f}")
    handle = resolve_model("default")
    secs = {}
    for spec in ("rules", "rules+probe"):
        secs[spec] = safety_seconds(spec, handle, args.items)
        print(f"safety suite on {args.items} probes, judge {spec}: {secs[spec][0]:.1f} s "
              f"(judging {secs[spec][1]:.2f} s)")
    overhead = (secs["rules+probe"][0] - secs["rules"][0]) / secs["rules"][0]
    judge_share = secs["rules+probe"][1] / secs["rules"][0]
    print(f"judge-peer: rules_items_per_s={rows['rules'][0]:.1f} rules_acc_heldout={rows['rules'][1]:.3f} "
          f"safety_rules_seconds={secs['rules'][0]:.1f} safety_probe_seconds={secs['rules+probe'][0]:.1f} "
          f"overhead={overhead:+.3f} probe_judging_share={judge_share:.3f}")
    print(f"judge: items_per_s={rows['rules+probe'][0]:.1f} acc_heldout={rows['rules+probe'][1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
