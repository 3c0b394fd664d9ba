"""SafeLoRA (Hsu et al. 2024): project the parts of a fine-tune that leave the alignment subspace back into it.

Per module, keyed by the weight's name (never by parameter order): V = W_aligned − W_unaligned and
C = V·Vᵀ/‖V‖_F. With the tuned update ΔW = scale·B·A, cos = cosine(C·ΔW, ΔW) (the scale cancels); where the
update points away from the alignment direction (cos ≤ τ, or among the K lowest cosines) B is replaced by C·B.
C is never formed: C·L = V·(Vᵀ·L)/‖V‖_F. Full fine-tunes are projected the same way on their dense Δ.
"""

from __future__ import annotations

# importing the registry must stay cheap: cli lists it in --help, so torch and the weights load where used

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError, TunelensError
from ..io import atomic_open, write_json
from .core import Repair, RepairResult, register

if TYPE_CHECKING:
    import torch

    from ..weights import LoraAdapter, Weights

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_same_architecture(u: Weights, a: Weights) -> None:
    keys = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    diff = [k for k in keys if k in u.config and k in a.config and u.config[k] != a.config[k]]
    if diff:
        k = diff[0]
        raise TunelensError(f"unaligned '{u.spec}' and aligned '{a.spec}' are different architectures "
                            f"({k}: {u.config[k]} vs {a.config[k]}); SafeLoRA needs two versions of one model")


class Projector:
    """C·L for one weight name at a time, from the aligned/unaligned pair (V cached per module while in use)."""

    def __init__(self, aligned: str, unaligned: str):
        from ..weights import open_weights

        if not aligned:
            raise TunelensError("this repair needs the aligned reference model: pass --aligned MODEL "
                                "(e.g. the model tuned on the built-in safety set)")
        self.u, self.a = open_weights(unaligned, "unaligned"), open_weights(aligned, "aligned")
        check_same_architecture(self.u, self.a)

    def direction(self, name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        """V = W_A − W_U for the weight `name` (fp64), None where V is zero (the pair does not differ there)."""
        for who, src in (("unaligned", self.u), ("aligned", self.a)):
            s = src.shape(name)
            if s is None:
                raise TunelensError(f"tensor '{name}' of the tuned update is missing in the {who} model "
                                    f"'{src.spec}': the models are not the same architecture")
            if tuple(s) != tuple(shape):
                raise TunelensError(f"tensor '{name}' has shape {tuple(s)} in the {who} model '{src.spec}' but "
                                    f"{tuple(shape)} in the tuned update: the models are not the same architecture")
        v = self.a.weight(name) - self.u.weight(name)
        return v if bool(v.any()) else None

    @staticmethod
    def apply(v: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """C·L with C = V·Vᵀ/‖V‖_F, without forming the m×m matrix C."""
        import torch

        return v @ (v.T @ left) / torch.linalg.norm(v)


def factor_cosine(c_left: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> float | None:
    """cosine(flatten(C·L·R), flatten(L·R)) from r×r products only: ⟨X·R, Y·R⟩ = trace(Xᵀ·Y·R·Rᵀ)."""
    import torch

    g = right @ right.T
    dot = torch.trace(c_left.T @ left @ g)
    n1, n2 = torch.trace(c_left.T @ c_left @ g), torch.trace(left.T @ left @ g)
    if n1 <= 0 or n2 <= 0:
        return None
    return float(dot / torch.sqrt(n1 * n2))


def dense_cosine(x: torch.Tensor, y: torch.Tensor) -> float | None:
    import torch

    nx, ny = torch.linalg.norm(x), torch.linalg.norm(y)
    if nx == 0 or ny == 0:
        return None
    return float((x * y).sum() / (nx * ny))


def check_tau(tau: float, lo: float = -1.0, hi: float = 1.0) -> None:
    if not isinstance(tau, (int, float)) or not lo <= float(tau) <= hi:
        raise TunelensError(f"tau = {tau!r} is not a cosine threshold; give a number in [-1, 1]")


def choose(cosines: dict[str, float | None], mode: str, tau: float, k: int) -> set[str]:
    """Names to project: cos ≤ τ (threshold) or the K lowest cosines (topk). Undefined cosines never count."""
    known = {n: c for n, c in cosines.items() if c is not None}
    if mode == "threshold":
        return {n for n, c in known.items() if c <= tau}
    if mode == "topk":
        return set(sorted(known, key=lambda n: (known[n], n))[:k])
    raise TunelensError(f"safelora mode {mode!r} is not known; use 'threshold' (cos ≤ tau) or 'topk' (K lowest)")


# ------------------------------------------------------------------------------------------------ writing


def copy_adapter(src: Path, out: Path, tensors: dict[str, torch.Tensor], config: dict | None = None) -> None:
    """The tuned adapter folder copied to `out`, its weights (and config, if given) replaced atomically."""
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in (ADAPTER_WEIGHTS, "adapter_config.json"):
            shutil.copy2(f, out / f.name)
    cfg = config if config is not None else json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    write_json(out / "adapter_config.json", cfg)
    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    with atomic_open(out / ADAPTER_WEIGHTS, "wb") as f:
        f.write(blob)


def write_model(tuned_folder: Path, out: Path, replace: dict[str, torch.Tensor]) -> None:
    """A copy of a model folder with some tensors replaced, shard by shard (the shard index stays valid)."""
    from safetensors import safe_open
    from safetensors.torch import save

    from ..weights import weight_files

    out.mkdir(parents=True, exist_ok=True)
    weights = set(weight_files(tuned_folder))
    for f in tuned_folder.iterdir():
        if f.is_file() and f not in weights:
            shutil.copy2(f, out / f.name)
    for file in weights:
        with safe_open(file, "pt") as sf:
            meta = sf.metadata() or {"format": "pt"}
            tensors = {k: replace[k].contiguous() if k in replace else sf.get_tensor(k) for k in sf.keys()}
        with atomic_open(out / file.name, "wb") as fh:
            fh.write(save(tensors, metadata=meta))


def write_report(out: Path, result: RepairResult) -> None:
    write_json(out / "repair.json", {"method": result.method, "options": result.options, "kind": result.kind,
                                     "summary": result.summary, "modules": result.modules})


# ------------------------------------------------------------------------------------------------ the method


def default_unaligned(base: str, tuned: Weights) -> str:
    """The model the tuned one is an update of: an adapter's named base, else ``base``."""
    if tuned.lora is None:
        return base
    if not tuned.base_spec:
        raise ModelError(f"adapter {tuned.path} does not name its base model (base_model_name_or_path)")
    return tuned.base_spec


@register("safelora")
class SafeLoRA(Repair):
    description = ("Project tuned LoRA modules whose update leaves the alignment subspace (cos(C·ΔW, ΔW) ≤ tau, "
                   "or the K lowest) onto C = V·Vᵀ/‖V‖ with V = aligned − unaligned.")

    @dataclass
    class Options:
        aligned: str = ""  # the aligned reference (model folder or LoRA adapter on the unaligned model)
        unaligned: str | None = None  # default: the tuned adapter's base (or --base for full fine-tunes)
        mode: str = "threshold"  # threshold | topk
        tau: float = 0.5
        k: int = 10

    def run(self, base, tuned, out, opts, *, progress=True) -> RepairResult:
        import torch

        from ..weights import open_weights

        check_tau(opts.tau)
        if opts.mode == "topk" and (not isinstance(opts.k, int) or opts.k < 1):
            raise TunelensError(f"safelora k = {opts.k!r}: give the number of modules to project (an integer ≥ 1)")
        choose({}, opts.mode, opts.tau, opts.k)  # validates the mode before any reading
        tuned_w = open_weights(tuned, "tuned")
        proj = Projector(opts.aligned, opts.unaligned or default_unaligned(base, tuned_w))
        options = {"aligned": opts.aligned, "unaligned": proj.u.spec, "mode": opts.mode, "tau": opts.tau, "k": opts.k}
        if tuned_w.lora is not None:
            modules, tensors = _adapter_pass(tuned_w.lora, proj, opts)
            copy_adapter(tuned_w.path, out, tensors)
        else:
            modules, replace = _model_pass(base, tuned_w, proj, opts)
            write_model(tuned_w.path, out, replace)
        n_proj = sum(m["projected"] for m in modules)
        cos = [m["cos"] for m in modules if m["cos"] is not None]
        summary = {"modules": len(modules), "projected": n_proj,
                   "cos_min": min(cos) if cos else None, "cos_median": float(torch.tensor(cos).median()) if cos else None,
                   "cos_max": max(cos) if cos else None}
        result = RepairResult("safelora", out, "adapter" if tuned_w.lora is not None else "model", options, modules,
                              summary)
        write_report(out, result)
        return result


def _adapter_pass(adapter: LoraAdapter, proj: Projector, opts):
    """Cosines for every module, then C·L written into the chosen modules' factor."""
    found = {}
    for name, mod in adapter.modules.items():
        left, right, scale = adapter.factors(mod)
        v = proj.direction(name, (left.shape[0], right.shape[1]))
        c_left = Projector.apply(v, left.double()) if v is not None else None
        cos = factor_cosine(c_left, left.double(), right.double()) if v is not None else None
        found[name] = (mod, left, c_left, cos)
    chosen = choose({n: f[3] for n, f in found.items()}, opts.mode, opts.tau, opts.k)
    tensors = adapter.load_tensors()
    modules = []
    for name, (mod, left, c_left, cos) in found.items():
        if name in chosen:
            key = mod.a_key if mod.transposed else mod.b_key  # L = Aᵀ for transposed modules, else L = B
            new = c_left.T if mod.transposed else c_left
            tensors[key] = new.to(tensors[key].dtype)
        modules.append({"module": mod.module, "cos": cos, "projected": name in chosen})
    return modules, tensors


def _model_pass(base: str, tuned: Weights, proj: Projector, opts):
    """Full fine-tunes: Δ = tuned − base per 2-D weight (embeddings and head excluded), projected directly."""
    from ..weights import open_base

    tuned_ck, folder = tuned.ckpt, tuned.path
    base_ck = open_base(base).ckpt
    found = {}
    for name, info in tuned_ck.tensors.items():
        if len(info.shape) != 2 or "embed" in name or "lm_head" in name or info.torch_dtype is None:
            continue
        if name not in base_ck or base_ck.tensors[name].shape != info.shape:
            raise TunelensError(f"tensor '{name}' of tuned '{folder}' is missing or differently shaped in base "
                                f"'{base}': pass the model this one was tuned from as --base")
        delta = tuned_ck.read(name).double() - base_ck.read(name).double()
        if not bool(delta.any()):
            found[name] = (None, None)
            continue
        v = proj.direction(name, info.shape)
        c_delta = Projector.apply(v, delta) if v is not None else None
        found[name] = (c_delta, dense_cosine(c_delta, delta) if v is not None else None)
    chosen = choose({n: f[1] for n, f in found.items()}, opts.mode, opts.tau, opts.k)
    replace = {n: (base_ck.read(n).double() + found[n][0]).to(base_ck.tensors[n].torch_dtype) for n in chosen}
    modules = [{"module": n[: -len(".weight")] if n.endswith(".weight") else n, "cos": c, "projected": n in chosen}
               for n, (_, c) in found.items()]
    return modules, replace


__all__ = ["SafeLoRA", "Projector", "factor_cosine", "dense_cosine", "choose", "check_tau", "copy_adapter",
           "write_model", "write_report", "default_unaligned"]
