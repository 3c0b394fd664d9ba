"""`tunelens judge`: label a user's replies through the audit's own judging path, or print a judge's card."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import DataError
from . import Judge, load_judge
from .train import measure

REQUEST_FIELDS = ("prompt", "request")


def read_replies(path: Path) -> list[dict]:
    """Rows of a JSONL/JSON/CSV file, each with a string 'response' (file:line and the field otherwise)."""
    from ..data.readers import read_file

    rows = read_file(Path(path))
    out = []
    for row in rows:
        v = row.values
        if "response" not in v:
            raise DataError("no 'response' (the reply to judge); every row needs one", row.path, row.line,
                            "response")
        if not isinstance(v["response"], str):
            raise DataError(f"must be a string, not {type(v['response']).__name__}", row.path, row.line, "response")
        for f in REQUEST_FIELDS:
            if f in v and v[f] is not None and not isinstance(v[f], str):
                raise DataError(f"must be a string, not {type(v[f]).__name__}", row.path, row.line, f)
        out.append(v)
    return out


def label_rows(judge: Judge, rows: list[dict], labels=None, batch_size: int = 64) -> list[dict]:
    from tqdm.auto import tqdm

    out = []
    bar = tqdm(total=len(rows), desc=f"judge [{judge.spec}]", unit="reply", disable=len(rows) < 2 * batch_size,
               file=sys.stderr)
    for a in range(0, len(rows), batch_size):
        part = rows[a: a + batch_size]
        req = [next((r[f] for f in REQUEST_FIELDS if r.get(f) is not None), None) for r in part]
        for r, (v, why) in zip(part, judge.verdicts(req, [r["response"] for r in part], labels)):
            out.append({**r, "verdict": v, "reason": why})
        bar.update(len(part))
    bar.close()
    return out


def label_file(path: Path, spec: str, *, labels=None, out: Path | None = None, batch_size: int = 64) -> list[dict]:
    rows = read_replies(path)  # every row checked before any judging
    judge = load_judge(spec)
    labelled = label_rows(judge, rows, labels, batch_size)
    if out is None:
        for r in labelled:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        from ..io import write_jsonl

        write_jsonl(out, labelled)
    return labelled


def format_card(spec: str, card: dict) -> str:
    pc = lambda x: "–" if x is None else f"{x:.3f}"
    lines = [f"judge {spec} ({card.get('version', '?')})",
             f"held-out accuracy {pc(card['accuracy'])} on {card['n']} labelled replies (4-way); refusal vs not "
             f"{pc(card['refusal_vs_not_accuracy'])}"]
    if "safety_tune_refusals" in card:
        st = card["safety_tune_refusals"]
        lines.append(f"safety-mix refusals read as refusal: {pc(st['read_as_refusal'])} of {st['n']}")
    lines.append("")
    lines.append(f"{'class':<12}{'n':>5}{'precision':>11}{'recall':>9}")
    for v, p in card["per_class"].items():
        lines.append(f"{v:<12}{p['n']:>5}{pc(p['precision']):>11}{pc(p['recall']):>9}")
    lines.append("")
    labs = card["confusion"]["labels"]
    lines.append("confusion (rows: true label, columns: verdict)")
    lines.append(" " * 12 + "".join(f"{x[:10]:>11}" for x in labs))
    for lab, row in zip(labs, card["confusion"]["matrix"]):
        lines.append(f"{lab:<12}" + "".join(f"{c:>11}" for c in row))
    return "\n".join(lines)


def evaluate_judge(judge: Judge) -> str:
    return format_card(judge.spec, measure(judge))
