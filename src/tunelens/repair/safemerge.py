"""SafeMERGE (Djuhera et al. 2025): where a tuned LoRA module drifts from the alignment subspace, blend it with
the same module of a safety adapter (same base, tuned on safety data); keep the other modules as tuned.

The drift test is SafeLoRA's: cos(C·ΔW, ΔW) < τ with C from the aligned/unaligned pair. Two merges:

- exact (default): ΔW' = w₁·ΔW_tuned + w₂·ΔW_safety, in weight space. It has rank ≤ r₁ + r₂, so it is stored
  as one LoRA module of rank r₁ + r₂ with concatenated factors, B' = [B₁, B₂] and A' = [w₁s₁·A₁; w₂s₂·A₂]
  (B'·A' = w₁s₁·B₁A₁ + w₂s₂·B₂A₂, PEFT's combination_type="cat"), and its own rank_pattern/alpha_pattern entry
  (alpha = rank, so scale 1) — the other modules keep the tuned rank and alpha.
- peft: PEFT's add_weighted_adapter(combination_type="linear"), the reference code's merge: A' = Σ√(wᵢsᵢ)·Aᵢ and
  B' = Σ√(wᵢsᵢ)·Bᵢ at scale 1. Its product has cross terms √(w₁s₁w₂s₂)·(B₁A₂ + B₂A₁), so it is not the weighted
  sum of the updates; it needs equal ranks.
"""

from __future__ import annotations

# importing the registry must stay cheap: cli lists it in --help, so torch and the weights load where used

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import TunelensError
from .core import Repair, RepairResult, register
from .safelora import Projector, check_tau, copy_adapter, default_unaligned, factor_cosine, write_report

if TYPE_CHECKING:
    from ..weights import LoraModule


def check_weights(weights) -> tuple[float, float]:
    try:
        w = tuple(float(x) for x in weights)
    except (TypeError, ValueError):
        raise TunelensError(f"safemerge weights {weights!r}: give two numbers, e.g. [0.8, 0.2]") from None
    if len(w) != 2:
        raise TunelensError(f"safemerge weights {list(w)}: give two numbers [tuned, safety], e.g. [0.8, 0.2]")
    if not all(math.isfinite(x) for x in w) or sum(w) <= 0:
        raise TunelensError(f"safemerge weights {list(w)} must sum to a positive number (e.g. [0.8, 0.2])")
    return w


@register("safemerge")
class SafeMerge(Repair):
    description = ("Blend the tuned adapter with a safety adapter ([0.8, 0.2]) in the modules whose update drifts "
                   "from the alignment subspace (cos < tau, SafeLoRA's test); keep the others as tuned.")

    @dataclass
    class Options:
        safety_adapter: str = ""  # LoRA adapter on the same base, tuned on safety data (tunelens tune --data safety-tune)
        aligned: str = ""  # the aligned reference for C (as in safelora)
        unaligned: str | None = None  # default: the tuned adapter's base
        tau: float = 0.35
        weights: list = field(default_factory=lambda: [0.8, 0.2])  # [tuned, safety]
        mode: str = "exact"  # exact (ΔW space) | peft (PEFT's factor-space linear merge)

    def run(self, base, tuned, out, opts, *, progress=True) -> RepairResult:
        from ..weights import open_weights, unit_alpha

        check_tau(opts.tau)
        w = check_weights(opts.weights)
        if opts.mode not in ("exact", "peft"):
            raise TunelensError(f"safemerge mode {opts.mode!r}: use 'exact' (weight-space merge) or 'peft' "
                                f"(PEFT's factor-space linear merge)")
        if not opts.safety_adapter:
            raise TunelensError("safemerge needs the safety adapter: pass --safety-adapter DIR (a LoRA adapter on "
                                "the same base, e.g. from `tunelens tune --data safety-tune`)")
        tuned_w = open_weights(tuned, "tuned")
        if tuned_w.lora is None:
            raise TunelensError(f"safemerge merges LoRA adapters; tuned '{tuned}' is a full model (use safelora or "
                                f"a weight merge for full fine-tunes)")
        safety_w = open_weights(opts.safety_adapter, "safety adapter")
        if safety_w.lora is None:
            raise TunelensError(f"safety adapter '{opts.safety_adapter}' is not a PEFT adapter folder")
        tuned_ad, safety = tuned_w.lora, safety_w.lora
        t_base, s_base = default_unaligned(base, tuned_w), default_unaligned(base, safety_w)
        if tuned_w.base.path.resolve() != safety_w.base.path.resolve():
            raise TunelensError(f"the safety adapter is on base '{s_base}' but the tuned adapter is on '{t_base}': "
                                f"SafeMERGE blends two adapters of the same base model")
        proj = Projector(opts.aligned, opts.unaligned or t_base)
        tensors = tuned_ad.load_tensors()
        s_tensors = safety.load_tensors()
        cfg = dict(tuned_ad.config)
        r_t = int(cfg.get("r", 8))
        ranks, alphas = {}, {}
        modules = []
        for name, mod in tuned_ad.modules.items():
            left, right, _ = tuned_ad.factors(mod)
            v = proj.direction(name, (left.shape[0], right.shape[1]))
            cos = factor_cosine(Projector.apply(v, left.double()), left.double(), right.double()) if v is not None \
                else None
            smod = safety.modules.get(name)
            merge = cos is not None and cos < opts.tau and smod is not None
            if merge:
                a_new, b_new = _merge(mod, smod, tensors, s_tensors, w, opts.mode)
                tensors[mod.a_key], tensors[mod.b_key] = a_new, b_new
                key = re.escape(mod.module)
                ranks[key] = a_new.shape[0]
                alphas[key] = unit_alpha(a_new.shape[0], mod.use_rslora)
            modules.append({"module": mod.module, "cos": cos, "merged": merge,
                            "projected": merge, "in_safety_adapter": smod is not None})
        # our per-module keys go first: PEFT uses the first pattern that matches a module
        cfg["rank_pattern"] = {**ranks, **(cfg.get("rank_pattern") or {})}
        cfg["alpha_pattern"] = {**alphas, **(cfg.get("alpha_pattern") or {})}
        copy_adapter(tuned_w.path, out, tensors, cfg)
        n = sum(m["merged"] for m in modules)
        cos = [m["cos"] for m in modules if m["cos"] is not None]
        summary = {"modules": len(modules), "merged": n, "projected": n, "tuned_rank": r_t,
                   "missing_in_safety_adapter": sum(not m["in_safety_adapter"] for m in modules),
                   "cos_min": min(cos) if cos else None, "cos_max": max(cos) if cos else None}
        options = {"safety_adapter": opts.safety_adapter, "aligned": opts.aligned, "unaligned": proj.u.spec,
                   "tau": opts.tau, "weights": list(w), "mode": opts.mode}
        result = RepairResult("safemerge", out, "adapter", options, modules, summary)
        write_report(out, result)
        return result


def _merge(mod: LoraModule, smod: LoraModule, tensors: dict, s_tensors: dict, w, mode: str):
    """New (A, B) raw PEFT factors for one module (ΔW = scale·B·A with scale 1)."""
    import torch

    a1, b1 = tensors[mod.a_key].double(), tensors[mod.b_key].double()
    a2, b2 = s_tensors[smod.a_key].double(), s_tensors[smod.b_key].double()
    if a1.shape[1] != a2.shape[1] or b1.shape[0] != b2.shape[0]:
        raise TunelensError(f"module '{mod.module}' has factors {tuple(b1.shape)}·{tuple(a1.shape)} in the tuned "
                            f"adapter but {tuple(b2.shape)}·{tuple(a2.shape)} in the safety adapter")
    s1, s2 = w[0] * mod.scale(a1.shape[0]), w[1] * smod.scale(a2.shape[0])
    dtype = tensors[mod.a_key].dtype
    if mode == "exact":
        a, b = torch.cat([s1 * a1, s2 * a2], dim=0), torch.cat([b1, b2], dim=1)
    else:
        if a1.shape[0] != a2.shape[0]:
            raise TunelensError(f"safemerge mode 'peft' needs equal LoRA ranks (module '{mod.module}': "
                                f"{a1.shape[0]} vs {a2.shape[0]}); use mode 'exact'")
        sign = lambda x: 1.0 if x >= 0 else -1.0  # noqa: E731 - PEFT puts a negative weight's sign on A only
        a = sign(s1) * math.sqrt(abs(s1)) * a1 + sign(s2) * math.sqrt(abs(s2)) * a2
        b = math.sqrt(abs(s1)) * b1 + math.sqrt(abs(s2)) * b2
    return a.to(dtype), b.to(dtype)
