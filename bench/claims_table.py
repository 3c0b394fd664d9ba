"""Tables of bench/claims.sh's runs, in Markdown, as docs/claims.md quotes them.

For each run folder under OUT: the tune's record (objective, method, precision, steps, final loss), the
audit's entries (base, tuned, paired delta with its 95% interval, n, the decision and the verdict) and, where
a diff was taken, the update's sparsity per module type (fraction unchanged exactly, |Δ| ≤ 1e-5, and equal
after bf16 rounding); and for the flip claim, flip-aware vs plain tuning paired item by item. Reads only the
JSON the commands wrote; prints to stdout.

    python bench/claims_table.py out/claims
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x, nd=3):
    return "—" if x is None else f"{x:.{nd}f}"


def _ci(ci):
    return "—" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def tune_line(run: Path) -> str | None:
    p = run / "run.json"
    if not p.exists():
        return None
    r = json.loads(p.read_text())
    cfg = r.get("config") or {}
    log = run / "train_log.jsonl"
    losses = []
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if "loss" in rec:
                losses.append(float(rec["loss"]))
    prec = (r.get("precision") or {}).get("chosen", "?")
    first, last = (f"{losses[0]:.3f}", f"{losses[-1]:.3f}") if losses else ("?", "?")
    return (f"tune: objective={cfg.get('objective', 'sft')} method={cfg.get('method')} precision={prec} "
            f"steps={(r.get('train') or {}).get('global_step')} loss {first} -> {last} "
            f"safety_mix={cfg.get('safety_mix')} compat_weight={cfg.get('compat_weight')}")


def audit_table(run: Path) -> list[str]:
    p = run / "audit" / "ledger.json"
    if not p.exists():
        return []
    led = json.loads(p.read_text())
    verdict = led.get("verdict") or {}
    out = [f"verdict: **{verdict.get('label')}** ({verdict.get('why', '')})",
           "", "| suite | metric | base | tuned | Δ (95% CI) | n | decision |", "|---|---|---|---|---|---|---|"]
    for suite, block in led["suites"].items():
        if block.get("status") != "ok":
            out.append(f"| {suite} | failed: {block.get('error')} | | | | | |")
            continue
        for e in block["entries"]:
            if "." in e["metric"] and e.get("role") != "headline":
                continue  # per-category rows: in the run's summary.md
            out.append(f"| {suite} | {e['metric']} | {_f(e['base'])} | {_f(e['tuned'])} | "
                       f"{_f(e['delta'], 3) if e['delta'] is not None else '—'} {_ci(e.get('ci95'))} | {e['n']} | "
                       f"{e.get('decision') or ''} |")
    return out


def diff_table(run: Path) -> list[str]:
    p = run / "diff" / "diff.json"
    if not p.exists():
        return []
    d = json.loads(p.read_text())
    rows = [{"module": "all", **d["summary"]}] + d["aggregates"]["by_module"]
    out = ["| module | numel | unchanged (Δ=0) | unchanged (|Δ|≤1e-5) | unchanged after bf16 rounding |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['module']} | {r['numel']:,} | {1 - r['frac_changed']:.4f} | {1 - r['frac_changed_abs']:.4f} | "
                   f"{1 - r['frac_changed_bf16']:.4f} |")
    return out


def _items(run: Path, suite: str = "task") -> dict:
    p = run / "audit" / "items" / f"{suite}.jsonl"
    if not p.exists():
        return {}
    rows = (json.loads(line) for line in p.read_text().splitlines() if line.strip())
    return {(r["task"], r["id"]): r for r in rows}


def flips_pair(plain: Path, other: Path, n_boot: int = 2000) -> list[str]:
    """Two tunes audited against the same base on the same items (--full, one seed): the paired difference
    other - plain of task accuracy and of the negative and positive flip rates (each an item's indicator, base
    right and tune wrong / base wrong and tune right), with a paired bootstrap 95% interval over the items."""
    import numpy as np

    from tunelens.metrics import bootstrap_ci_paired

    a, b = _items(plain), _items(other)
    if not a or not b:  # one of the two has no task audit yet
        return []
    keys = sorted(set(a) & set(b))
    if len(keys) != len(a) or len(keys) != len(b):
        return [f"{other.name} vs {plain.name}: the audits cover different items ({len(a)} / {len(b)})"]
    if any(a[k]["base"]["correct"] != b[k]["base"]["correct"] for k in keys):
        return [f"{other.name} vs {plain.name}: the base answers differ between the audits"]
    base = np.array([a[k]["base"]["correct"] for k in keys], dtype=float)
    ta = np.array([a[k]["tuned"]["correct"] for k in keys], dtype=float)
    tb = np.array([b[k]["tuned"]["correct"] for k in keys], dtype=float)
    series = {"accuracy": (ta, tb), "negative_flip_rate": (base * (1 - ta), base * (1 - tb)),
              "positive_flip_rate": ((1 - base) * ta, (1 - base) * tb)}
    out = [f"paired over the same {len(keys)} items: {other.name} − {plain.name} (bootstrap 95%, {n_boot} draws)",
           "", f"| metric | {plain.name} | {other.name} | difference (95% CI) |", "|---|---|---|---|"]
    for name, (x, y) in series.items():
        lo, hi = bootstrap_ci_paired(lambda idx: float(y[idx].mean() - x[idx].mean()), len(keys), n_boot=n_boot)
        out.append(f"| {name} | {x.mean():.3f} | {y.mean():.3f} | {y.mean() - x.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    return out


def main(root: str) -> None:
    runs = [r for r in sorted(Path(root).iterdir()) if r.is_dir()]
    for run in runs:
        print(f"### {run.name}\n")
        t = tune_line(run)
        if t:
            print(t + "\n")
        for block in (audit_table(run), diff_table(run)):
            if block:
                print("\n".join(block) + "\n")
    plain = Path(root) / "flips-plain"
    for other in (r for r in runs if r.name.startswith("flips-compat-")):
        if block := flips_pair(plain, other):
            print("\n".join(block) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/claims")
