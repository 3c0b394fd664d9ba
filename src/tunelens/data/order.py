"""The order in which an audit or an eval draws a pool's items: stratified, seeded, fixed for (pool, seed).

Why: "the first N items" of a file is whatever its author wrote first. The telecom test split keeps file order,
and its first 76 items cover 4 of its 7 intents, so every limited look (an `--limit`, robustness' 40 items, a
graft's slices) never saw three of them. Every limit takes a prefix of this order instead, and every prefix
holds each stratum (label, intent, category, subject, ...) in proportion to the pool, with the items inside a
stratum in a seeded random order.

The sequential audit does not draw along this order: its confidence sequences assume each next item is a
uniformly random one of those not yet drawn, which a stratified order is not (it kept coverage in simulation,
tests/test_stats.py, but the theorem does not cover it). It takes its pool as a prefix of this order (the
whole split, or the first `limit`) and draws the pool's items in a seeded uniformly random order (`draw_order`).

How: items are grouped by stratum; each group is shuffled with a seed derived from (seed, stratum) after
sorting by id (so the order does not depend on file order); then position k goes to the stratum furthest
behind its share k·n_h/N (ties to the stratum whose seeded rank is lower). `order_digest` names the result in
the ledger, so two audits that drew the same items can be told apart from two that did not.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict


def stratum_of(spec, item) -> str:
    """The stratum of an item: the spec's `stratify_by` column (raw or mapped name), else the label of a
    classification item, else one stratum for all."""
    key = getattr(spec, "stratify_by", None)
    if key:
        fields = item.fields
        mapped = next((f for f, col in (spec.fields or {}).items() if col == key), None)
        value = fields.get(key, fields.get(mapped) if mapped else None)
        return "" if value is None else str(value).strip()
    if getattr(spec, "type", None) == "classification" and item.answer is not None:
        return str(item.answer)
    return ""


def stratified_order(strata: list[str], ids: list[str], seed: int = 0) -> list[int]:
    """Indices of the items in draw order (see the module's docstring)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        groups[s].append(i)
    for s, members in groups.items():
        members.sort(key=lambda i: (ids[i], i))
        random.Random(f"order:{seed}:{s}").shuffle(members)
    names = sorted(groups)
    random.Random(f"order:{seed}").shuffle(names)  # which stratum goes first on a tie
    rank = {s: r for r, s in enumerate(names)}
    n = len(strata)
    taken = {s: 0 for s in names}
    out = []
    for k in range(1, n + 1):
        s = max((s for s in names if taken[s] < len(groups[s])),
                key=lambda s: (k * len(groups[s]) / n - taken[s], -rank[s]))
        out.append(groups[s][taken[s]])
        taken[s] += 1
    return out


def ordered(spec, items: list, seed: int = 0) -> list:
    """`items` in the stratified, seeded draw order of (spec, seed)."""
    idx = stratified_order([stratum_of(spec, it) for it in items], [it.id for it in items], seed)
    return [items[i] for i in idx]


def draw_order(spec, items: list, seed: int = 0, pool: int | None = None) -> list:
    """The sequential audit's draws: the pool (the first `pool` items of the stratified order; None: all) in a
    seeded, uniformly random order — what the confidence sequences for sampling without replacement assume."""
    chosen = ordered(spec, items, seed)[:pool]
    random.Random(f"draw:{seed}:{len(chosen)}").shuffle(chosen)
    return chosen


def order_digest(items: list) -> str:
    """A short hash of the ids in draw order."""
    h = hashlib.blake2b(digest_size=8)
    for it in items:
        h.update(str(it.id).encode() + b"\0")
    return h.hexdigest()
