"""Training examples: task items -> chat turns -> token ids with the loss on the completion only.

Mixtures ("cocktail" tuning) sample each task to its weight with a fixed seed; replay and safety
sets are blended in as fractions of the final set (SafeInstruct mixes ~3% refusals).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..data import load_items, load_task, to_chat
from ..data.render import apply_chat_template
from ..errors import TunelensError
from ..scoring import encode

REPLAY_TASK = "general-replay"
SAFETY_TASK = "safety-tune"
IGNORE = -100


@dataclass
class ExampleStats:
    sources: dict[str, int] = field(default_factory=dict)  # examples drawn from each source
    truncated: int = 0  # examples cut to max_length (prompt cut from the left, then completion from the right)
    total_tokens: int = 0
    completion_tokens: int = 0


def parse_mix(entries: list[str]) -> list[tuple[str, float]]:
    """["a.yaml:0.6", "b.yaml:0.4"] -> [("a.yaml", 0.6), ("b.yaml", 0.4)]; weights must be >= 0, not all 0."""
    out = []
    for e in entries:
        task, sep, w = str(e).rpartition(":")
        if not sep or not task:
            raise TunelensError(f"mixture entry '{e}' must look like TASK:WEIGHT (e.g. tasks/a.yaml:0.6)")
        try:
            weight = float(w)
        except ValueError:
            raise TunelensError(f"mixture entry '{e}': weight '{w}' is not a number") from None
        if weight < 0:
            raise TunelensError(f"mixture entry '{e}': weight must not be negative")
        out.append((task, weight))
    if out and sum(w for _, w in out) <= 0:
        raise TunelensError("mixture weights sum to 0: give at least one task a positive weight")
    return out


def _chats(task: str, split: str) -> list[list[dict]]:
    spec = load_task(task)
    return [to_chat(spec, it) for it in load_items(spec, split)]


def _draw(pool: list, n: int, rng: random.Random) -> list:
    """n examples from pool: a seeded shuffle, repeated whole when n exceeds the pool."""
    if n <= 0 or not pool:
        return []
    out = []
    while len(out) < n:
        order = pool[:]
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    return out


def compose(cfg) -> tuple[list[list[dict]], dict[str, int]]:
    """The chat conversations to train on, with how many came from each source."""
    rng = random.Random(cfg.seed)
    counts: dict[str, int] = {}
    convs: list[list[dict]] = []
    for task in cfg.data:  # plain --data tasks: all of their items
        chats = _chats(task, cfg.split)
        counts[task] = len(chats)
        convs += chats
    mix = parse_mix(cfg.mix)
    if mix:
        pools = {t: _chats(t, cfg.split) for t, _ in mix}
        n_total = sum(len(p) for p in pools.values())
        total_w = sum(w for _, w in mix)
        for task, w in mix:
            drawn = _draw(pools[task], round(n_total * w / total_w), rng)
            counts[task] = counts.get(task, 0) + len(drawn)
            convs += drawn
    if not convs:
        raise TunelensError("the training data holds no examples")
    n_task = len(convs)
    rest = 1.0 - cfg.replay - cfg.safety_mix
    for task, frac in ((REPLAY_TASK, cfg.replay), (SAFETY_TASK, cfg.safety_mix)):
        if frac > 0:
            drawn = _draw(_chats(task, "train"), round(n_task * frac / rest), rng)
            counts[task] = len(drawn)
            convs += drawn
    rng.shuffle(convs)
    if cfg.max_examples:
        convs = convs[: cfg.max_examples]
    return convs, counts


def tokenize_chat(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated): labels are IGNORE on everything but the final assistant turn."""
    if messages[-1]["role"] != "assistant":
        raise TunelensError("a training conversation must end with an assistant turn")
    prompt = apply_chat_template(tokenizer, messages[:-1])
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise TunelensError("the chat template renders the prompt differently with and without the reply; "
                            "cannot tell where the completion starts")
    p_ids, c_ids = encode(tokenizer, prompt), encode(tokenizer, full[len(prompt) :])
    truncated = len(p_ids) + len(c_ids) > max_length
    if truncated:
        c_ids = c_ids[: max_length - 1]  # keep at least one prompt token to condition on
        p_ids = p_ids[-(max_length - len(c_ids)) :]
    return p_ids + c_ids, [IGNORE] * len(p_ids) + c_ids, truncated


def build_examples(cfg, tokenizer) -> tuple[list[dict], ExampleStats]:
    convs, counts = compose(cfg)
    stats = ExampleStats(sources=counts)
    rows = []
    for conv in convs:
        ids, labels, cut = tokenize_chat(tokenizer, conv, cfg.max_length)
        n_completion = sum(1 for t in labels if t != IGNORE)
        if n_completion == 0:
            continue
        stats.truncated += cut
        stats.total_tokens += len(ids)
        stats.completion_tokens += n_completion
        rows.append({"input_ids": ids, "labels": labels, "length": len(ids)})
    if not rows:
        raise TunelensError("no usable training examples after templating (every completion was empty)")
    return rows, stats


def data_files(tasks: list[str]) -> dict[str, str]:
    """sha256 of every local file behind the given tasks (recorded in run.json)."""
    out = {}
    for task in tasks:
        spec = load_task(task)
        if spec.path:
            out[str(spec.path)] = _sha256(Path(spec.path))
        sources = spec.data.values() if isinstance(spec.data, dict) else [spec.data]
        for src in sources:
            for s in (src if isinstance(src, list) else [src]):
                p = Path(spec.base_dir or ".") / str(s)
                if p.is_file():
                    out[str(p)] = _sha256(p)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
