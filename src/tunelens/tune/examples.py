"""Training examples: task items -> units (chats, documents or preference pairs) -> token ids.

Mixtures ("cocktail" tuning) sample each task to its weight with a fixed seed; replay and safety
sets are blended in as fractions of the final set (SafeInstruct mixes ~3% refusals). A unit is what an objective
learns from (tune/objectives): a chat for SFT (loss on the final reply), a raw document for continued pretraining
(loss on every token; replay and safety chats keep their reply-only loss), a (prompt, chosen, rejected) pair
for DPO.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..data import load_items, load_task, to_chat
from ..data.render import _with_system, apply_chat_template, instruction
from ..errors import TunelensError
from ..scoring import encode

REPLAY_TASK = "general-replay"
SAFETY_TASK = "safety-tune"
SAFETY_PAIRS_TASK = "safety-preferences"  # safety mixing for preference objectives: refusals preferred
IGNORE = -100


class Chat(list):
    """A training conversation (its messages, a plain list to every caller) that remembers the task item it was
    made from, so flip-aware tuning can ask the base model how it ranks that item's choices (`choice_request`)."""

    source: tuple | None = None  # (TaskSpec, Item)

    @classmethod
    def of(cls, spec, item) -> "Chat":
        chat = cls(to_chat(spec, item))
        chat.source = (spec, item)
        return chat


def choice_request(conv, tokenizer) -> tuple[str, list[str], int] | None:
    """(prompt, continuations, index of the right one) as the audit's task suite scores the item a chat was made
    from, for a multiple-choice or classification item; None for anything else (free-text replies, chats
    given as messages)."""
    from ..data.render import CHOICE_TYPES, continuations, render_prompt

    spec, item = getattr(conv, "source", None) or (None, None)
    if spec is None or spec.type not in CHOICE_TYPES or item.messages is not None or item.answer is None:
        return None
    return render_prompt(spec, item, tokenizer), continuations(spec, item), int(item.answer)


@dataclass
class ExampleStats:
    sources: dict[str, int] = field(default_factory=dict)  # examples drawn from each source
    truncated: int = 0  # examples cut to max_length (prompt cut from the left, then completion from the right)
    total_tokens: int = 0
    completion_tokens: int = 0
    too_short: int = 0  # continued pretraining: documents under min_doc_tokens, left out
    documents: int = 0  # continued pretraining: documents cut into the rows


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


def units(task: str, split: str, kind: str = "chat") -> list:
    """A task's items as training units of one kind: "chat" (a list of messages; every task type but raw text),
    "text" (a document's text, from a `text` task) or "pair" ({"prompt": messages, "chosen": text, "rejected":
    text}, from a `preference` task). A task of the wrong kind is refused, saying which objective it is for."""
    spec = load_task(task)
    wants = {"text": ("text", "--objective cpt trains on raw documents (a `text` task such as telecom-corpus)"),
             "pair": ("preference", "preference objectives train on pairs (a `preference` task: prompt, chosen, "
                                    "rejected, such as preference-pairs)")}
    if kind in wants and spec.type != wants[kind][0]:
        raise TunelensError(f"{wants[kind][1]}; '{task}' is a {spec.type} task")
    if kind == "chat" and spec.type == "text":
        raise TunelensError(f"'{task}' holds raw documents (a text task): tune on it with --objective cpt")
    items = load_items(spec, split)
    if kind == "text":
        return [it.fields["text"] for it in items]
    if kind == "pair":
        return [{"prompt": _with_system(spec, [{"role": "user", "content": instruction(spec, it)}]),
                 "chosen": it.fields["chosen"], "rejected": it.fields["rejected"]} for it in items]
    return [Chat.of(spec, it) for it in items]


def _chats(task: str, split: str) -> list[list[dict]]:
    return units(task, split, "chat")


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


def compose(cfg, kind: str = "chat", extras: dict[str, str] | None = None) -> tuple[list, dict[str, int]]:
    """The units to train on (conversations by default; `kind` as in `units`), with how many came from each
    source. `extras`: the unit kind the replay and safety sets are read as ({"replay": "chat", "safety": "chat"}
    by default; a preference objective reads safety as pairs from SAFETY_PAIRS_TASK)."""
    extras = extras or {"replay": "chat", "safety": "chat"}
    rng = random.Random(cfg.seed)
    counts: dict[str, int] = {}
    convs: list = []
    for task in cfg.data:  # plain --data tasks: all of their items
        chats = units(task, cfg.split, kind)
        counts[task] = len(chats)
        convs += chats
    mix = parse_mix(cfg.mix)
    if mix:
        pools = {t: units(t, cfg.split, kind) for t, _ in mix}
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
    for role, frac in (("replay", cfg.replay), ("safety", cfg.safety_mix)):
        if frac > 0:
            if role not in extras:
                raise TunelensError(f"--{'replay' if role == 'replay' else 'safety-mix'} is not available for "
                                    f"--objective {getattr(cfg, 'objective', 'sft')}")
            unit = extras[role]
            task = REPLAY_TASK if role == "replay" else (SAFETY_PAIRS_TASK if unit == "pair" else SAFETY_TASK)
            drawn = _draw(units(task, "train", unit), round(n_task * frac / rest), rng)
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


def build_examples(cfg, tokenizer, choices: bool = False) -> tuple[list[dict], ExampleStats]:
    """Token rows of the chats. `choices`: each row made from a multiple-choice or classification item also
    carries `_choice`, that item's `choice_request` (flip-aware tuning pops it before training)."""
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
        if choices and (req := choice_request(conv, tokenizer)) is not None:
            rows[-1]["_choice"] = req
    if not rows:
        raise TunelensError("no usable training examples after templating (every completion was empty)")
    return rows, stats


def build_documents(cfg, tokenizer) -> tuple[list[dict], ExampleStats]:
    """Continued pretraining rows: each document's tokens and an end-of-text token, cut into rows of at most
    max_length tokens, the loss on every token but a row's first (which has nothing before it to be predicted
    from). Rows never span two documents: packing several into one row is correct only with an attention kernel
    that keeps documents apart (--packing, flash attention on a GPU); otherwise a row holds one document's piece,
    and rows of similar length share a batch (length-grouped, left-padded). A document under min_doc_tokens is
    left out and counted; if every one is, that is an error. Replay and safety chats (--replay, --safety-mix)
    join as in SFT, their loss on the reply."""
    units_, counts = compose(cfg, kind="text")
    stats = ExampleStats(sources=counts)
    eos = tokenizer.eos_token_id
    rows = []
    for unit in units_:
        if not isinstance(unit, str):  # a replay or safety chat
            ids, labels, cut = tokenize_chat(tokenizer, unit, cfg.max_length)
            stats.truncated += cut
            _add(rows, stats, ids, labels)
            continue
        ids = encode(tokenizer, unit) + ([eos] if eos is not None else [])
        if len(ids) < cfg.min_doc_tokens:
            stats.too_short += 1
            continue
        stats.documents += 1
        for start in range(0, len(ids), cfg.max_length):
            piece = ids[start:start + cfg.max_length]
            if len(piece) >= 2:
                _add(rows, stats, piece, [IGNORE] + piece[1:])
    if not stats.documents:
        raise TunelensError(f"every one of the {stats.too_short} documents is shorter than min_doc_tokens="
                            f"{cfg.min_doc_tokens} tokens: nothing to pretrain on (lower --min-doc-tokens, or give "
                            "longer documents)")
    if stats.too_short:
        from ..progress import log

        log.warning(f"tunelens: {stats.too_short} document(s) shorter than min_doc_tokens={cfg.min_doc_tokens} "
                    "tokens left out")
    return rows, stats


def _add(rows: list, stats: ExampleStats, ids: list[int], labels: list[int]) -> None:
    n = sum(1 for t in labels if t != IGNORE)
    if n:
        stats.total_tokens += len(ids)
        stats.completion_tokens += n
        rows.append({"input_ids": ids, "labels": labels, "length": len(ids)})


def build_pairs(cfg, tokenizer) -> tuple[list[dict], ExampleStats]:
    """Preference rows in TRL's conversational form ({"prompt": messages, "chosen": [assistant turn],
    "rejected": [assistant turn]}): DPOTrainer applies the chat template and tokenises them itself. The stats
    count tokens as the template renders prompt and replies; a pair longer than max_length is counted as
    truncated (DPOTrainer keeps its start: the replies' ends are cut)."""
    pairs, counts = compose(cfg, kind="pair", extras={"safety": "pair"})
    stats = ExampleStats(sources=counts)
    rows = []
    for pair in pairs:
        prompt = apply_chat_template(tokenizer, pair["prompt"])
        n_prompt = len(encode(tokenizer, prompt))
        lengths = []
        for reply in (pair["chosen"], pair["rejected"]):
            full = tokenizer.apply_chat_template(pair["prompt"] + [{"role": "assistant", "content": reply}],
                                                 tokenize=False)
            lengths.append(len(encode(tokenizer, full[len(prompt):])))
        stats.truncated += n_prompt + max(lengths) > cfg.max_length
        stats.total_tokens += 2 * n_prompt + sum(lengths)
        stats.completion_tokens += sum(lengths)
        rows.append({"prompt": pair["prompt"], "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                     "rejected": [{"role": "assistant", "content": pair["rejected"]}]})
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
