"""Grafting / skill localization (Panigrahi et al., ICML 2023): find a sparse set of fine-tuned entries that,
grafted onto the base, recovers most of the fine-tune's gain on a task.

θ(γ) = θ_base + γ⊙Δ with Δ = θ_tuned − θ_base over the *eligible* tensors (transformer blocks; embeddings,
the final norm and the head stay at the base unless ``include_embeddings``). γ_base marks the global top-(s·N)
entries by |Δ|; γ = γ_base + (1 − 2γ_base)⊙σ(S − 10) with S ~ U[0,1) (seeded). Only S is trained, with plain
steps S ← S − lr·∂L/∂S on the SFT loss (completion tokens) of train examples — a fixed pool of ``examples``, from
which each step takes a seeded minibatch of ``batch_size`` (the whole pool when it is smaller: the paper's
full-batch setting; minibatches make a step affordable on a CPU); after every step
(and before the first) the rounded mask round(γ) is scored on a small train+validation subset and the best is
kept. Everything is held in memory (base and tuned weights, Δ, S and its gradient: ~5x the eligible
parameters in fp32, plus the model): meant for small models.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import __version__
from .. import progress as P
from ..run.config import GraftSection as _G  # the defaults: `tunelens graft`'s and a run's graft section
from ..errors import DataError, TunelensError
from ..models.portable import make_portable, warn_unportable

__all__ = ["graft", "eligible", "top_mask", "gain_recovered", "save_mask", "load_mask", "sparsity_tag", "SCHEMA"]

SCHEMA = "tunelens.graft/1"
_BLOCK = re.compile(r"\.(layers|h|blocks|block|layer|decoder_layers)\.\d+\.")
_EMBED = re.compile(r"(embed_tokens|embed_positions|wte|wpe|word_embeddings|position_embeddings)\.weight$")


def eligible(name: str, include_embeddings: bool = False) -> bool:
    """Parameters of the per-layer blocks (names containing e.g. '.layers.3.'); embeddings optionally."""
    return bool(_BLOCK.search(name)) or (include_embeddings and bool(_EMBED.search(name)))


def sparsity_tag(s: float) -> str:
    return f"{s:g}"


def gain_recovered(p_base, p_tuned, p_graft):
    """(P_graft − P_base)/(P_tuned − P_base); None when the tune gained nothing (P_tuned == P_base)."""
    if p_base is None or p_tuned is None or p_graft is None or p_tuned == p_base:
        return None
    return (p_graft - p_base) / (p_tuned - p_base)


def top_mask(deltas: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """γ_base: bool masks selecting the global top round(s·N) entries by |Δ| over all given tensors."""
    names = list(deltas)
    n = sum(deltas[k].numel() for k in names)
    k = int(round(float(sparsity) * n))
    if k <= 0:
        return {m: torch.zeros_like(deltas[m], dtype=torch.bool) for m in names}
    if k >= n:
        return {m: torch.ones_like(deltas[m], dtype=torch.bool) for m in names}
    flat = torch.cat([deltas[m].detach().reshape(-1).abs().float() for m in names])
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.topk(flat, k, sorted=False).indices] = True
    del flat
    out, i = {}, 0
    for m in names:
        c = deltas[m].numel()
        out[m] = keep[i : i + c].view(deltas[m].shape).clone()
        i += c
    return out


def save_mask(path, masks: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """Masks as safetensors: per tensor the int64 flat indices of kept entries; shapes in the metadata."""
    from safetensors.torch import save

    from ..io import atomic_open

    tensors = {k: torch.nonzero(v.reshape(-1), as_tuple=False).reshape(-1).to(torch.int64).contiguous()
               for k, v in masks.items()}
    meta = {"format": "tunelens.graft.mask/1", "shapes": json.dumps({k: list(v.shape) for k, v in masks.items()})}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(save(tensors, metadata=meta))
    return path


def load_mask(path) -> dict[str, torch.Tensor]:
    """Bool masks saved by :func:`save_mask`."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        shapes = json.loads(f.metadata()["shapes"])
        for k in f.keys():
            m = torch.zeros(math.prod(shapes[k]), dtype=torch.bool)
            m[f.get_tensor(k)] = True
            out[k] = m.view(shapes[k])
    return out


# ---------------------------------------------------------------------------------------------------- models


def _load_pair(base, tuned):
    """(base handle, tuned handle with any LoRA adapter merged)."""
    from ..models import resolve_model, resolve_path

    kind, _ = resolve_path(tuned)
    if kind == "peft_adapter":
        tuned_h = resolve_model(tuned, base=base, merge_adapter=True)
        base_spec = tuned_h.base
    else:
        if base is None:
            raise TunelensError("pass the base model (--base): it cannot be read from a full tuned checkpoint")
        tuned_h = resolve_model(tuned)
        base_spec = base
    base_h = resolve_model(base_spec)
    if base_h.kind == "peft_adapter":
        raise TunelensError(f"the base model must be a full checkpoint, not an adapter ({base_spec})")
    return base_h, tuned_h


def _weights(base_model, tuned_model, include_embeddings: bool):
    tuned = dict(tuned_model.named_parameters())
    base_w, tuned_w = {}, {}
    for name, p in base_model.named_parameters():
        if not eligible(name, include_embeddings) or not p.is_floating_point():
            continue
        if name not in tuned or tuned[name].shape != p.shape:
            raise TunelensError(f"base and tuned have different architectures at '{name}'")
        base_w[name] = p.detach().float().clone()
        tuned_w[name] = tuned[name].detach().float().clone()  # the tuned weights: exact where the mask is 1
    if not tuned_w:
        raise TunelensError("no eligible (per-layer) weight tensors found: unknown architecture naming")
    return base_w, tuned_w


def _changed_outside(base_model, tuned_model, include_embeddings: bool) -> list[str]:
    tuned = dict(tuned_model.named_parameters())
    return [n for n, p in base_model.named_parameters()
            if not eligible(n, include_embeddings) and n in tuned and not torch.equal(p, tuned[n])]


@torch.no_grad()
def _apply(model, base_w, tuned_w, masks=None):
    """Set the model's eligible weights to the tuned value where the mask is set, else the base (mask None: base).
    A full mask gives the tuned tensors bit for bit."""
    params = dict(model.named_parameters())
    for n, w in base_w.items():
        p = params[n]
        new = w if masks is None else torch.where(masks[n], tuned_w[n], w)
        p.data.copy_(new.to(p.dtype))


# ---------------------------------------------------------------------------------------------------- data


def _items(spec, split, n=None, seed=0):
    from ..data import load_items

    items = load_items(spec, split)
    if n is not None and len(items) > n:
        items = random.Random(seed).sample(items, n)
    return items


def _batch(spec, tokenizer, n: int, seed: int, max_length: int):
    """A fixed batch of n train examples (sampled with replacement only when the split is smaller)."""
    from ..data import to_chat
    from ..tune.examples import tokenize_chat

    pool = _items(spec, "train")
    rng = random.Random(seed)
    if n <= len(pool):
        chosen = rng.sample(pool, n)
    else:
        chosen = [pool[rng.randrange(len(pool))] for _ in range(n)]
    rows = [tokenize_chat(tokenizer, to_chat(spec, it), max_length)[:2] for it in chosen]
    return [r for r in rows if any(l != -100 for l in r[1])]


def _loss(model, params_fn, rows, pad_id: int, micro: int = 8, backward=False):
    """Mean token cross-entropy over the completion tokens of rows (ids, labels). ``params_fn()`` gives the
    eligible parameters to substitute (functional forward); with backward, gradients accumulate."""
    from torch.func import functional_call

    n_tok = sum(sum(1 for l in lab[1:] if l != -100) for _, lab in rows)
    total = 0.0
    for i in range(0, len(rows), micro):
        chunk = rows[i : i + micro]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        lab = torch.full((len(chunk), width), -100, dtype=torch.long)
        att = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, (a, b) in enumerate(chunk):
            ids[j, : len(a)] = torch.tensor(a)
            lab[j, : len(b)] = torch.tensor(b)
            att[j, : len(a)] = 1
        with torch.set_grad_enabled(backward):
            out = functional_call(model, params_fn(), args=(), kwargs={"input_ids": ids, "attention_mask": att},
                                  strict=False)
            logits = out.logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1),
                                                     ignore_index=-100, reduction="sum") / max(n_tok, 1)
            if backward:
                loss.backward()
        total += float(loss.detach())
    return total


def _score(handle, spec, split=None, limit=None, items_limit=None, n_boot=1000):
    from ..evaluate import CHOICE_TYPES, evaluate

    res = evaluate(handle, spec, split=split, limit=limit, progress=False, n_boot=n_boot)
    key = "accuracy" if spec.type in CHOICE_TYPES else "exact_match"
    ece = res.metrics.get("ece", {}).get("value")
    return res.metrics[key]["value"], ece, len(res.records)


def _selection_score(handle, spec, limit: int):
    """Mean score over train[:limit] and validation[:limit] (validation only when the task has that split)."""
    total, n = 0.0, 0
    for split in ("train", "validation"):
        try:
            s, _, k = _score(handle, spec, split=split, limit=limit, n_boot=10)
        except DataError:
            continue
        total, n = total + s * k, n + k
    return total / n if n else 0.0


# ---------------------------------------------------------------------------------------------------- graft


def graft(base, tuned, task, sparsities, steps: int = _G.steps, lr: float = _G.lr, examples: int = _G.examples,
          out=None, save_model: bool = False, seed: int = _G.seed, *,
          include_embeddings: bool = _G.include_embeddings, select_limit: int = _G.select_limit,
          eval_limit: int | None = _G.eval_limit, max_length: int = 512, micro_batch: int = 8,
          batch_size: int = _G.batch_size, progress=None) -> dict:
    """Graft the top-s fine-tuned entries (then optimise the mask) for each sparsity s; returns graft.json content.

    base: the base model (optional when ``tuned`` is a LoRA adapter naming its base); tuned: full checkpoint or
    PEFT LoRA adapter (merged). task: task spec (path/dict/TaskSpec). ``select_limit``: items per split
    (train, validation) scoring the rounded mask after each step. ``eval_limit``: items of the eval split for
    the reported scores (None: all). ``out``: folder for graft.json, mask-s{s}.safetensors and, with
    ``save_model``, model-s{s}/. ``progress(done, total)`` (default: the progress channel, tunelens.progress) is
    called after every mask step (total: steps over all sparsities), or with no mask steps after each sparsity.
    """
    from ..data import load_task
    from ..evaluate import CHOICE_TYPES
    from ..models import ModelHandle

    t0 = time.perf_counter()
    progress = P.listener_or(progress)
    spec = load_task(task)
    sparsities = [float(s) for s in sparsities]
    if not sparsities or any(not 0.0 <= s <= 1.0 for s in sparsities):
        raise TunelensError("sparsities must be fractions in [0, 1], e.g. 1e-4,1e-3,1e-2")
    if steps < 0 or examples <= 0 or batch_size <= 0:
        raise TunelensError("steps must be >= 0, and examples and batch_size > 0")
    torch.manual_seed(seed)
    base_h, tuned_h = _load_pair(base, tuned)
    notes: list[str] = []
    outside = _changed_outside(base_h.model, tuned_h.model, include_embeddings)
    if outside:
        shown = ", ".join(outside[:3]) + (", ..." if len(outside) > 3 else "")
        notes.append(f"{len(outside)} ineligible tensor(s) changed by the tune are kept at the base: {shown}")

    p_base, ece_base, n_eval = _score(base_h, spec, limit=eval_limit)
    p_tuned, ece_tuned, _ = _score(tuned_h, spec, limit=eval_limit)
    base_w, tuned_w = _weights(base_h.model, tuned_h.model, include_embeddings)
    del tuned_h
    model = base_h.model
    for p in model.parameters():
        p.requires_grad_(False)
    handle = ModelHandle(model=model, tokenizer=base_h.tokenizer, name="graft", path=None, kind="graft",
                         base=str(base_h.name))
    tok = base_h.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    rows = _batch(spec, tok, examples, seed, max_length)
    if not rows:
        raise TunelensError("no train example has a completion token within max_length")
    n_elig = sum(d.numel() for d in base_w.values())
    out = Path(out) if out is not None else None
    with torch.no_grad():  # the batch loss at both ends, so each graft's loss can be read as a share of the change
        loss_base = _loss(model, lambda: base_w, rows, pad_id, micro_batch)
        loss_tuned = _loss(model, lambda: tuned_w, rows, pad_id, micro_batch)

    results = []
    for s in sparsities:
        tag = sparsity_tag(s)
        deltas = {n: tuned_w[n] - base_w[n] for n in base_w}
        gb = top_mask(deltas, s)
        gen = torch.Generator().manual_seed(seed)
        S = {n: torch.rand(d.shape, generator=gen).requires_grad_(True) for n, d in deltas.items()}
        sign = {n: 1.0 - 2.0 * gb[n].float() for n in deltas}

        def params_fn():
            return {n: base_w[n] + (gb[n].float() + sign[n] * torch.sigmoid(S[n] - 10.0)) * deltas[n]
                    for n in deltas}

        def rounded():
            with torch.no_grad():
                return {n: (gb[n].float() + sign[n] * torch.sigmoid(S[n] - 10.0)) > 0.5 for n in deltas}

        _apply(model, base_w, tuned_w, gb)
        best_mask = {n: m.clone() for n, m in gb.items()}
        # with no mask steps there is nothing to choose between: skip the selection scoring
        best_score, best_step = (_selection_score(handle, spec, select_limit) if steps else None), 0
        with torch.no_grad():
            loss0 = _loss(model, lambda: {n: base_w[n] + gb[n].float() * deltas[n] for n in deltas}, rows, pad_id,
                          micro_batch)
        history = [{"step": 0, "selection_score": best_score, "kept": int(sum(int(m.sum()) for m in gb.values()))}]
        pick = random.Random(seed)
        for step in range(1, steps + 1):
            for t in S.values():
                t.grad = None
            batch = rows if batch_size >= len(rows) else pick.sample(rows, batch_size)
            loss = _loss(model, params_fn, batch, pad_id, micro_batch, backward=True)
            with torch.no_grad():
                for t in S.values():
                    t -= lr * t.grad
            mask = rounded()
            _apply(model, base_w, tuned_w, mask)
            score = _selection_score(handle, spec, select_limit)
            kept = int(sum(int(m.sum()) for m in mask.values()))
            history.append({"step": step, "loss": loss, "selection_score": score, "kept": kept})
            if score > best_score:
                best_score, best_step, best_mask = score, step, mask
            progress(len(results) * steps + step, len(sparsities) * steps)
        _apply(model, base_w, tuned_w, best_mask)
        if best_step == 0:
            loss_best = loss0  # the best mask is γ_base itself
        else:
            with torch.no_grad():
                loss_best = _loss(model, lambda: {n: base_w[n] + best_mask[n].float() * deltas[n] for n in deltas},
                                  rows, pad_id, micro_batch)
        p_graft, ece_graft, _ = _score(handle, spec, limit=eval_limit)
        kept = int(sum(int(m.sum()) for m in best_mask.values()))
        row = {
            "sparsity": s, "kept": kept, "kept_fraction": kept / n_elig, "best_step": best_step,
            "selection_score": best_score, "loss_gamma_base": loss0, "loss_best": loss_best,
            "score": {"base": p_base, "tuned": p_tuned, "graft": p_graft},
            "gain_recovered": gain_recovered(p_base, p_tuned, p_graft),
            "loss_recovered": gain_recovered(loss_base, loss_tuned, loss_best),
            "ece": {"base": ece_base, "tuned": ece_tuned, "graft": ece_graft},
            "history": history,
        }
        if out is not None:
            path = save_mask(out / f"mask-s{tag}.safetensors", best_mask, {"sparsity": s})
            row["mask_file"] = path.name
            if save_model:
                folder = out / f"model-s{tag}"
                model.save_pretrained(folder)
                tok.save_pretrained(folder)
                warn_unportable(make_portable(folder))
                row["model_dir"] = folder.name
        results.append(row)
        if not steps:
            progress(len(results), len(sparsities))
        _apply(model, base_w, tuned_w, None)

    result = {
        "schema": SCHEMA,
        "tunelens_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": str(base_h.name), "tuned": str(tuned),
        "task": {"name": spec.name, "type": spec.type, "eval_split": spec.eval_split, "n_eval": n_eval},
        "metric": "accuracy" if spec.type in CHOICE_TYPES else "exact_match",
        "options": {"steps": steps, "lr": lr, "examples": examples, "batch_size": batch_size, "seed": seed,
                    "include_embeddings": include_embeddings, "select_limit": select_limit,
                    "eval_limit": eval_limit, "max_length": max_length},
        "eligible": {"tensors": len(base_w), "entries": n_elig},
        "loss": {"base": loss_base, "tuned": loss_tuned},
        "notes": notes,
        "results": results,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if out is not None:
        from ..io import write_json

        write_json(out / "graft.json", result)
    return result
