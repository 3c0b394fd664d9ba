"""The scoring engine: log-likelihood of continuations and greedy generation, batched for speed.

Log-likelihood uses *tree batching*: one row holds a question's context once, followed by every
choice's tokens as separate branches. A custom 4-D attention mask lets each branch see the context
and itself but not the other branches, and position ids restart after the context for every branch,
so each branch is scored exactly as if it were alone. The output layer (a large share of a small
model's compute) is applied only at the positions whose next token is scored: for single-token
choices that is one position per question, however many choices it has.

When every request starts with the same tokens (a system prompt, a shared instruction), that prefix
is run once and its key/value cache is reused by every batch, in scoring and in generation alike.

Tokenisation follows lm-evaluation-harness (`encode(context + continuation)` split at the length of
`encode(context)`, trailing spaces of the context moved to the continuation), so scores agree with it.

A prompt longer than the model's context is cut from the left, as lm-evaluation-harness does: the end
of the prompt (the question nearest the answer) and the whole continuation are what is scored, and for
generation room is kept for `max_new_tokens`. Cutting is never silent: each result says how many
prompt tokens it lost (`ChoiceScore.truncated`, `Generation.truncated`; `n_truncated` counts the items)
and every call that cut something logs one warning line naming how many items and to what length.
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .errors import TunelensError

log = logging.getLogger(__name__)
DEFAULT_CONTEXT = 2048  # for a model whose config does not say


@dataclass
class ChoiceScore:
    logprob: float  # summed log-probability of the continuation's tokens
    token_logprobs: list[float]
    tokens: list[int]
    is_greedy: bool  # every token is the argmax of its distribution
    truncated: int = 0  # prompt tokens cut from the left to fit the model's context (0: the whole prompt)


@dataclass
class Generation:
    text: str
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0  # summed log-probability of the generated tokens
    stopped_by: str | None = None  # the stop sequence that ended it, None for max_new_tokens/eos
    first_logprobs: list[float] | None = None  # log P(token | prompt) at the first step, for generate's score_ids
    truncated: int = 0  # prompt tokens cut from the left to fit the model's context (0: the whole prompt)


# ---------------------------------------------------------------- tokenisation


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids, split the way lm-evaluation-harness splits them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    if not ctx:  # an empty context is conditioned on the end-of-text token, as lm-eval does
        eot = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [eot], whole
    return ctx, whole[len(ctx) :]


# ---------------------------------------------------------------- fitting the model's context


def context_length(model) -> int:
    """The model's context in tokens (config.max_position_embeddings; GPT-2's n_positions maps to it)."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None) or DEFAULT_CONTEXT


def fit_left(ids: list[int], room: int) -> tuple[list[int], int]:
    """(the last `room` tokens of ids, how many were cut off the start): the one place prompts are cut."""
    cut = max(0, len(ids) - room)
    return (ids[cut:] if cut else ids), cut


def fit_prompts(tokenizer, prompts: list[str], max_length: int, max_new_tokens: int,
                desc: str) -> tuple[list[list[int]], list[int]]:
    """(token ids, tokens cut) per prompt for generation: each keeps room for max_new_tokens in max_length, losing
    its start when it does not fit (one warning line counts them). Every engine fits its prompts here."""
    room = max_length - max_new_tokens
    if room < 1:
        raise TunelensError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                            f"{max_length:,}-token context; lower max_new_tokens")
    fitted = [fit_left(encode(tokenizer, p), room) for p in prompts]
    encoded, cuts = [e for e, _ in fitted], [c for _, c in fitted]
    _warn_truncated(desc, [len(e) for e, c in zip(encoded, cuts) if c], len(prompts), max_length,
                    f"with max_new_tokens={max_new_tokens}")
    return encoded, cuts


def n_truncated(results) -> int:
    """How many items of a loglikelihood or generate result had their prompt cut to fit the context."""
    return sum(1 for r in results if (r[0] if isinstance(r, list) else r).truncated)


def _warn_truncated(desc: str, kept: list[int], total: int, max_length: int, because: str) -> None:
    """One warning line for the items of one call whose prompts were cut; `kept` = their new lengths."""
    if not kept:
        return
    lo, hi = min(kept), max(kept)
    to = f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"
    log.warning(f"tunelens: {desc}: {len(kept)} of {total} prompts do not fit the model's {max_length:,}-token "
                f"context {because}; cut from the left to their last {to} tokens")


# ---------------------------------------------------------------- model plumbing


def _split_head(model):
    """(backbone, output_layer) when logits can be computed from hidden states ourselves, else None.

    Falls back (None) for prompt-learning adapters (virtual tokens are injected by the wrapper) and for
    models that post-process logits (soft-capping, scaling), where only the full forward is exact.
    """
    from peft import PeftModel

    inner = model
    if isinstance(model, PeftModel):
        if model.peft_config[model.active_adapter].is_prompt_learning:
            return None
        inner = model.get_base_model()
    cfg = getattr(inner, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    backbone = getattr(inner, "model", None)
    if head is None or backbone is None or not isinstance(backbone, torch.nn.Module):
        return None
    return backbone, head


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------- log-likelihood


@dataclass
class _Row:
    req_idx: int
    tokens: list[int]
    positions: list[int]
    parent: list[int]  # for each token, -1 if it is context, else the branch index it belongs to
    ctx_len: int
    # for each branch: (row positions whose logits predict its tokens, target ids)
    branches: list[tuple[list[int], list[int]]]
    truncated: int = 0  # context tokens cut from the left to fit max_length


def _build_row(req_idx: int, ctx: list[int], conts: list[list[int]], max_length: int) -> _Row:
    longest = max(len(c) for c in conts)
    if longest >= max_length:
        raise TunelensError(f"a continuation of {longest} tokens does not fit the model's context of {max_length}")
    # the row holds the context and all but the last token of the longest continuation
    ctx, cut = fit_left(ctx, max_length - longest + 1)
    tokens, positions, parent = list(ctx), list(range(len(ctx))), [-1] * len(ctx)
    branches = []
    for b, cont in enumerate(conts):
        # the branch's inputs are its tokens but the last (whose output predicts nothing we score)
        pred_pos = [len(ctx) - 1]
        for j, t in enumerate(cont[:-1]):
            pred_pos.append(len(tokens))
            tokens.append(t)
            positions.append(len(ctx) + j)
            parent.append(b)
        branches.append((pred_pos, list(cont)))
    return _Row(req_idx, tokens, positions, parent, len(ctx), branches, cut)


def _row_mask(row: _Row, length: int) -> torch.Tensor:
    """Boolean [length, length]: True where query i may attend to key j."""
    n = len(row.tokens)
    parent = torch.tensor(row.parent)
    idx = torch.arange(n)
    causal = idx[None, :] <= idx[:, None]
    key_is_ctx = (parent == -1)[None, :]
    same_branch = parent[None, :] == parent[:, None]
    allowed = causal & (key_is_ctx | same_branch)
    mask = torch.zeros(length, length, dtype=torch.bool)
    mask[:n, :n] = allowed
    pad = torch.arange(n, length)
    mask[pad, pad] = True  # padding attends to itself only, so no row of the mask is empty (NaN-free)
    return mask


MIN_SHARED_PREFIX = 8


def _common_prefix(first: list[int], others, cap: int) -> int:
    """How many leading tokens (at most cap) every sequence in others shares with first."""
    n = cap
    for seq in others:
        k = 0
        while k < n and seq[k] == first[k]:
            k += 1
        n = k
    return n


@torch.inference_mode()
def _shared_prefix(model, rows: list[_Row], split):
    """Cut the context tokens every row starts with out of the rows; return (n, its KV cache) or None.

    Each row keeps at least its last context token, whose output predicts the continuations.
    Needs the split-head path (a plain decoder that accepts a cache) and at least two rows.
    """
    if split is None or len(rows) < 2:
        return None
    first = rows[0].tokens[: rows[0].ctx_len]
    n = _common_prefix(first, [r.tokens for r in rows[1:]], min(r.ctx_len for r in rows) - 1)
    if n < MIN_SHARED_PREFIX:
        return None
    backbone, _ = split
    out = backbone(input_ids=torch.tensor([first[:n]], device=_device(model)), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    for r in rows:
        r.tokens, r.parent = r.tokens[n:], r.parent[n:]
        r.positions = [p - n for p in r.positions[n:]]
        r.ctx_len -= n
        r.branches = [([p - n for p in pos], tgt) for pos, tgt in r.branches]
    return n, cache


def _cache_kwarg(backbone) -> str:
    """transformers renamed `past_key_values` to `cache` during 5.x; use whichever this version takes."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def _batches(rows: list[_Row], token_budget: int, max_batch: int):
    """Length-sorted batches whose padded size (rows x longest row) stays within the token budget."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
    batch: list[_Row] = []
    for i in order:
        row = rows[i]
        longest = len(batch[0].tokens) if batch else len(row.tokens)
        if batch and ((len(batch) + 1) * longest > token_budget or len(batch) >= max_batch):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


@torch.inference_mode()
def _forward_rows(model, batch: list[_Row], split, prefix=None) -> list[list[torch.Tensor]]:
    """For each row: (log-probs at the positions it needs, {row position: index into those log-probs}).

    With `prefix` = (n_tokens, cache), rows hold only what follows the shared prefix; the cache is
    copied, expanded to the batch, and every row may attend to all prefix positions.
    """
    device = _device(model)
    length = max(len(r.tokens) for r in batch)
    n_prefix = prefix[0] if prefix else 0
    pad_id = 0
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(batch), length), dtype=torch.long)
    masks = []
    for i, r in enumerate(batch):
        input_ids[i, : len(r.tokens)] = torch.tensor(r.tokens)
        position_ids[i, : len(r.tokens)] = torch.tensor(r.positions) + n_prefix
        masks.append(_row_mask(r, length))
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    allowed = torch.stack(masks)[:, None]
    if n_prefix:
        allowed = torch.cat([torch.ones(len(batch), 1, length, n_prefix, dtype=torch.bool), allowed], dim=-1)
    attn = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    kwargs = dict(
        input_ids=input_ids.to(device),
        position_ids=position_ids.to(device),
        attention_mask=attn.to(device),
        use_cache=False,
    )
    if n_prefix:
        cache = copy.deepcopy(prefix[1])
        cache.batch_repeat_interleave(len(batch))
        kwargs.update({_cache_kwarg(split[0]): cache, "use_cache": True})
    # the unique positions each row needs logits for
    need = [sorted({p for pos, _ in r.branches for p in pos}) for r in batch]
    if split is not None:
        backbone, head = split
        hidden = backbone(**kwargs).last_hidden_state
        rows_idx = torch.cat([torch.full((len(n),), i, dtype=torch.long) for i, n in enumerate(need)])
        cols_idx = torch.cat([torch.tensor(n, dtype=torch.long) for n in need])
        logits = head(hidden[rows_idx.to(device), cols_idx.to(device)]).float()
    else:
        full = model(**kwargs).logits
        logits = torch.cat([full[i, n].float() for i, n in enumerate(need)])
    logprobs = torch.log_softmax(logits, dim=-1).cpu()
    out, start = [], 0
    for n in need:
        out.append((logprobs[start : start + len(n)], {p: k for k, p in enumerate(n)}))
        start += len(n)
    return out


def loglikelihood(
    model,
    tokenizer,
    requests: list[tuple[str, list[str]]],
    *,
    token_budget: int = 4096,
    max_batch: int = 64,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "scoring",
    share_prefix: bool = True,
) -> list[list[ChoiceScore]]:
    """Score each (context, [continuation, ...]) request; returns one ChoiceScore per continuation.

    Results do not depend on batch size or request order (up to float rounding, ~1e-5 in fp32). A context
    that does not fit `max_length` (default: the model's context) with its longest continuation loses its
    start; the scores say how many tokens (``truncated``) and one warning line says how many requests.
    """
    if getattr(model, "engine", None) == "vllm":  # a served model (tunelens.engines.vllm): the server scores
        return model.loglikelihood(tokenizer, requests, max_length=max_length, progress=progress, desc=desc)
    if not requests:
        return []
    max_length = max_length or context_length(model)
    rows = []
    for i, (context, conts) in enumerate(requests):
        if not conts:
            raise TunelensError(f"request {i} has no continuations to score")
        pairs = [encode_pair(tokenizer, context, c) for c in conts]
        ctx = pairs[0][0]
        cont_ids = []
        for c, (pctx, pcont) in zip(conts, pairs):
            if pctx != ctx:  # trailing-space handling made contexts differ; cannot happen for a fixed context
                raise AssertionError("context tokenisation differs between continuations")
            if not pcont:
                raise TunelensError(f"continuation {c!r} of request {i} is empty after tokenisation")
            cont_ids.append(pcont)
        rows.append(_build_row(i, ctx, cont_ids, max_length))
    _warn_truncated(desc, [r.ctx_len for r in rows if r.truncated], len(rows), max_length,
                    "with their continuations (kept whole)")

    split = _split_head(model)
    prefix = _shared_prefix(model, rows, split) if share_prefix else None
    results: list[list[ChoiceScore] | None] = [None] * len(requests)
    bar = tqdm(total=len(rows), desc=desc, disable=not progress, unit="q")
    for batch in _batches(rows, token_budget, max_batch):
        for r, (lp, where) in zip(batch, _forward_rows(model, batch, split, prefix)):
            scores = []
            for pred_pos, targets in r.branches:
                dist = lp[[where[p] for p in pred_pos]]
                tgt = torch.tensor(targets)
                tok_lp = dist.gather(1, tgt[:, None])[:, 0]
                greedy = bool((dist.argmax(-1) == tgt).all())
                scores.append(ChoiceScore(float(tok_lp.sum()), tok_lp.tolist(), targets, greedy, r.truncated))
            results[r.req_idx] = scores
        bar.update(len(batch))
    bar.close()
    return results  # type: ignore[return-value]


@torch.inference_mode()
def loglikelihood_reference(model, tokenizer, requests: list[tuple[str, list[str]]],
                            max_length: int | None = None) -> list[list[ChoiceScore]]:
    """One forward pass per (context, continuation), no batching, full logits: the slow ground truth.

    A long context is cut as `loglikelihood` cuts it (to fit with the request's longest continuation).
    """
    device = _device(model)
    max_length = max_length or context_length(model)
    out = []
    for context, conts in requests:
        scores = []
        pairs = [encode_pair(tokenizer, context, c) for c in conts]
        longest = max(len(cont) for _, cont in pairs)
        for ctx, cont in pairs:
            ctx, cut = fit_left(ctx, max_length - longest + 1)
            ids = torch.tensor([ctx + cont[:-1]], device=device)
            logits = model(input_ids=ids, use_cache=False).logits[0, len(ctx) - 1 :].float()
            lp = torch.log_softmax(logits, -1).cpu()
            tgt = torch.tensor(cont)
            tok_lp = lp.gather(1, tgt[:, None])[:, 0]
            scores.append(ChoiceScore(float(tok_lp.sum()), tok_lp.tolist(), cont, bool((lp.argmax(-1) == tgt).all()),
                                      cut))
        out.append(scores)
    return out


# ---------------------------------------------------------------- generation


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, str | None]:
    cut, which = len(text), None
    for s in stop:
        k = text.find(s)
        if s and k != -1 and k < cut:
            cut, which = k, s
    return text[:cut], which


@torch.inference_mode()
def _generation_prefix(model, encoded: list[list[int]]):
    """(n, key/value cache of the first n tokens, generate's name for it) when all prompts share n >= MIN_SHARED_PREFIX leading tokens
    (each keeps at least one token of its own), else None. Needs a plain decoder (see _split_head)."""
    split = _split_head(model)
    if split is None or len(encoded) < 2:
        return None
    first = encoded[0]
    n = _common_prefix(first, encoded[1:], min(len(e) for e in encoded) - 1)
    if n < MIN_SHARED_PREFIX:
        return None
    out = split[0](input_ids=torch.tensor([first[:n]], device=_device(model)), use_cache=True)
    return n, getattr(out, "cache", None) or out.past_key_values, _cache_kwarg(split[0])


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    stop: list[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generating",
    score_ids: list[int] | None = None,
    share_prefix: bool = True,
    max_length: int | None = None,
) -> list[Generation]:
    """Greedy generation, length-sorted left-padded batches, cut at the first stop sequence.

    score_ids: token ids whose log-probabilities at the first response position are returned in
    ``Generation.first_logprobs`` — the distribution generation computes anyway, so a first-token score costs
    no extra forward pass.

    When every prompt starts with the same tokens (the chat template's system prompt, a shared instruction),
    that prefix is run once and each batch starts from a copy of its key/value cache: a batch is laid out as
    [prefix | left padding | rest of the prompt], and position ids, computed from the attention mask, skip the
    padding, so each prompt is generated as if it were alone.

    A prompt longer than `max_length` (default: the model's context) minus `max_new_tokens` loses its start;
    ``Generation.truncated`` says how many tokens, and one warning line says how many prompts.
    """
    if getattr(model, "engine", None) == "vllm":  # a served model (tunelens.engines.vllm): the server generates
        return model.generate(tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop, progress=progress,
                              desc=desc, score_ids=score_ids, max_length=max_length)
    stop = list(stop or [])
    device = _device(model)
    encoded, cuts = fit_prompts(tokenizer, prompts, max_length or context_length(model), max_new_tokens, desc)
    prefix = _generation_prefix(model, encoded) if share_prefix else None
    n_prefix = prefix[0] if prefix else 0
    rest = [e[n_prefix:] for e in encoded]
    order = sorted(range(len(prompts)), key=lambda i: -len(rest[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[Generation | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="item")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(rest[i]) for i in idx)
        length = n_prefix + width
        ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), length), dtype=torch.long)
        mask[:, :n_prefix] = 1
        for r, i in enumerate(idx):
            ids[r, :n_prefix] = torch.tensor(encoded[i][:n_prefix], dtype=torch.long)
            ids[r, length - len(rest[i]) :] = torch.tensor(rest[i])
            mask[r, length - len(rest[i]) :] = 1
        extra = {}
        if prefix:
            cache = copy.deepcopy(prefix[1])
            cache.batch_repeat_interleave(len(idx))
            extra[prefix[2]] = cache
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            **extra,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
            stop_strings=stop or None,
            tokenizer=tokenizer if stop else None,
            output_logits=True,  # the model's own logits (scores would be after any logits processors)
            return_dict_in_generate=True,
        )
        new = out.sequences[:, length:].cpu()
        step_lp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.logits], 1).cpu()
        for r, i in enumerate(idx):
            toks = new[r].tolist()
            # finished sequences are padded: keep what precedes the first eos/pad
            ends = [k for k, t in enumerate(toks) if t in (tokenizer.eos_token_id, pad_id)]
            n = ends[0] if ends else len(toks)
            toks = toks[:n]
            lp = float(step_lp[r, torch.arange(n), torch.tensor(toks, dtype=torch.long)].sum()) if n else 0.0
            text, which = _cut_at_stop(tokenizer.decode(toks, skip_special_tokens=True), stop)
            first = step_lp[r, 0, score_ids].tolist() if score_ids else None
            results[i] = Generation(text=text, tokens=toks, logprob=lp, stopped_by=which, first_logprobs=first,
                                    truncated=cuts[i])
        bar.update(len(idx))
    bar.close()
    return results  # type: ignore[return-value]
