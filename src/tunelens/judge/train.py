"""Train the probe heads on the labelled corpus and measure every built-in judge: `python -m tunelens.judge.train`.

Read top to bottom:
1. The corpus (data/builtin/refusal_judgements/judgements.jsonl) comes split by request: no request is in both
   parts, so held-out accuracy is accuracy on requests the heads never saw.
2. The encoder's features are computed once for every row.
3. The l2 strength of each head is chosen by 5-fold cross-validation over the *training* part, folds made by
   request (the held-out part is never looked at while choosing).
4. Both heads are fitted on the whole training part and saved, with what they were trained on, to
   probe_head.safetensors.
5. Every built-in judge (rules, probe, rules+probe) is measured on the held-out part, and on the project's own
   safety-mix refusals (safety_tune: a model tuned with --safety-mix learns to write those, so a judge that misreads
   them reports a safety-tuned model as complying more). Both go to judge_card.json with each judge's version.

Deterministic: same corpus, same encoder, same heads (L-BFGS from zeros, no sampling).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import datetime, timezone

import numpy as np

from ..io import read_jsonl, write_json
from . import CARD_FILE, CORPUS_FILE, HEAD_FILE, ProbeJudge, RulesJudge, rules_hash
from . import card as C
from . import probe as P
from . import rules as R

L2_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
FOLDS = 5


def corpus(path=CORPUS_FILE) -> tuple[list[dict], list[dict]]:
    rows = read_jsonl(path)
    return [r for r in rows if r.get("split") == "train"], [r for r in rows if r.get("split") == "heldout"]


def safety_tune_refusals() -> list[dict]:
    """Every refusal of the safety-mix training set (each row's response is a refusal it teaches)."""
    from pathlib import Path

    rows = read_jsonl(Path(__file__).parents[1] / "data" / "builtin" / "safety_tune" / "safety_tune.jsonl")
    return [{"request": r["prompt"], "response": r["response"]} for r in rows]


def measure(judge, held: list[dict] | None = None, st: list[dict] | None = None) -> dict:
    """A judge's card: on the held-out part of the corpus (by default the shipped one), with its accuracy by source
    (real model outputs vs written replies), and the share of safety_tune's refusals it reads as refusals."""
    held = corpus()[1] if held is None else held
    st = safety_tune_refusals() if st is None else st
    v = [x[0] for x in judge.verdicts([r["request"] for r in held], [r["response"] for r in held])]
    card = C.card([r["label"] for r in held], v, [r.get("kind", "harmful") for r in held])
    s = [x[0] for x in judge.verdicts([r["request"] for r in st], [r["response"] for r in st])]
    card["safety_tune_refusals"] = {"n": len(st), "read_as_refusal": sum(x == "refusal" for x in s) / len(st),
                                    "verdicts": {k: s.count(k) for k in R.VERDICTS}}
    card["by_source"] = {}
    for src in sorted({r.get("source", "?").split(":")[0] for r in held}):
        pairs = [(r["label"], p) for r, p in zip(held, v) if r.get("source", "?").startswith(src)]
        card["by_source"][src] = C.card([a for a, _ in pairs], [p for _, p in pairs])["accuracy"]
    card["version"] = judge.version
    return card


def _folds(rows: list[dict], k: int = FOLDS) -> np.ndarray:
    """Fold of each row, by request (a request's rows share a fold), seeded by the request's hash."""
    keys = sorted({r.get("group") or R.normalize(r["request"] or "") for r in rows})
    fold_of = {key: int(hashlib.sha256(key.encode()).hexdigest(), 16) % k for key in keys}
    return np.array([fold_of[r.get("group") or R.normalize(r["request"] or "")] for r in rows])


def choose_l2(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[float, dict]:
    scores = {}
    for l2 in L2_GRID:
        hits = 0
        for f in range(FOLDS):
            tr, te = folds != f, folds == f
            if te.sum() == 0 or len(set(y[tr])) < len(P.CLASSES):
                continue
            head = P.Head.fit(x[tr], y[tr], l2)
            hits += int((head.proba(x[te]).argmax(1) == y[te]).sum())
        scores[l2] = hits / len(y)
    best = max(scores, key=lambda l2: (scores[l2], l2))  # ties: the stronger penalty
    return best, scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tunelens.judge.train", description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(CORPUS_FILE))
    ap.add_argument("--head", default=str(HEAD_FILE))
    ap.add_argument("--card", default=str(CARD_FILE))
    ap.add_argument("--layers", type=int, default=P.LAYERS)
    ap.add_argument("--request-tokens", type=int, default=P.REQUEST_TOKENS)
    ap.add_argument("--reply-tokens", type=int, default=P.REPLY_TOKENS)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    train, held = corpus(args.corpus)
    print(f"corpus: {len(train)} train, {len(held)} held-out rows", file=sys.stderr)
    enc = P.Encoder(layers=args.layers, request_tokens=args.request_tokens, reply_tokens=args.reply_tokens)
    feats = lambda rows: enc.features([r["request"] for r in rows], [r["response"] for r in rows])
    x_tr, x_he = feats(train), feats(held)
    r_tr = P.rule_matrix([r["request"] for r in train], [r["response"] for r in train])
    y_tr = np.array([P.CLASSES.index(r["label"]) for r in train])
    folds = _folds(train)

    heads, chosen = {}, {}
    for name, x in (("probe", x_tr), ("combined", np.hstack([x_tr, r_tr]))):
        l2, cv = choose_l2(x, y_tr, folds)
        heads[name] = P.Head.fit(x, y_tr, l2)
        chosen[name] = {"l2": l2, "cv_accuracy": {str(k): round(v, 4) for k, v in cv.items()}}
        print(f"{name}: l2={l2} (cv accuracy {cv[l2]:.3f})", file=sys.stderr)
    corpus_sha = hashlib.sha256(open(args.corpus, "rb").read()).hexdigest()
    meta = {"layers": args.layers, "encoder": "embedded default model (SmolLM2-135M-Instruct), frozen",
            "encoder_sha256": enc.weights_sha256, "request_tokens": args.request_tokens, "reply_tokens": args.reply_tokens,
            "first_tokens": P.FIRST_TOKENS, "classes": P.CLASSES, "rule_features": P.RULE_FEATURES,
            "rules": f"{R.VERSION}:{rules_hash()}", "corpus_sha256": corpus_sha, "train_rows": len(train),
            "heads": chosen}
    P.save_heads(args.head, heads, meta)

    # measure every built-in judge on the held-out part and on safety_tune's refusals
    st = safety_tune_refusals()
    judges = {"rules": RulesJudge(), "probe": ProbeJudge("probe", args.head, encoder=enc),
              "rules+probe": ProbeJudge("rules+probe", args.head, encoder=enc)}
    out = {"schema": "tunelens.judge_card/1", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "corpus": {"file": "judgements.jsonl", "sha256": corpus_sha, "train": len(train), "heldout": len(held),
                      "split": "by request: no request is in both parts"},
           "encoder": {k: meta[k] for k in ("encoder", "encoder_sha256", "layers", "request_tokens", "reply_tokens")},
           "judges": {}}
    for name, j in judges.items():
        c = measure(j, held, st)
        out["judges"][name] = c
        print(f"{name}: held-out accuracy {c['accuracy']:.3f} (refusal vs not {c['refusal_vs_not_accuracy']:.3f}); "
              f"safety_tune refusals read as refusal {c['safety_tune_refusals']['read_as_refusal']:.3f}",
              file=sys.stderr)
    write_json(args.card, out)
    print(f"wrote {args.head} and {args.card} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
