"""LoRA adapters as weight updates: Δ = scale·B·A per module, without building every dense Δ at once.

Diff, graft and the repairs all need an adapter's update, and PEFT's scale rule (alpha / r, alpha / √r with
rsLoRA, per-module alpha_pattern) must be applied the same way by each: ``lora_scale`` is the one place it is
written, and ``LoraAdapter`` the one parser of an adapter folder's factors.

Each update is kept in factor form Δ = scale·L·R (L: m×r, R: r×n; L = B, R = A for linear layers, and
L = Aᵀ, R = Bᵀ for embeddings and fan_in_fan_out layers, whose Δ is (B·A)ᵀ). From the factors alone:
‖Δ‖²_F = scale²·trace((LᵀL)(RRᵀ)), and with L = Q₁R₁, Rᵀ = Q₂R₂ (thin QR) Δ = scale·Q₁(R₁R₂ᵀ)Q₂ᵀ, so the
singular values of Δ are those of the r×r core R₁R₂ᵀ — exactly, in fp64. The dense rows of Δ are built a slab
at a time, only for the elementwise measures.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError
from .checkpoint import Checkpoint

_PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                     r"(?:\.(?!weight$)[^.]+)?(?:\.weight)?$")


@dataclass(frozen=True)
class LoraModule:
    module: str  # e.g. model.layers.0.self_attn.q_proj
    a_key: str
    b_key: str
    transposed: bool  # Δ = (B·A)ᵀ: embeddings and fan_in_fan_out (Conv1D) layers
    alpha: float
    use_rslora: bool

    @property
    def weight_name(self) -> str:
        return f"{self.module}.weight"

    def scale(self, rank: int) -> float:
        """PEFT's LoRA scale at this rank: alpha / r, or alpha / √r with rsLoRA (the one place it is written)."""
        return lora_scale(self.alpha, rank, self.use_rslora)


def lora_scale(alpha: float, rank: int, rslora: bool = False) -> float:
    """ΔW = scale·B·A with scale = alpha / r (alpha / √r for rsLoRA), as PEFT computes it."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def unit_alpha(rank: int, rslora: bool = False) -> float:
    """The lora_alpha at which ``lora_scale`` is 1 for this rank (for factors that carry their own scale)."""
    return math.sqrt(rank) if rslora else float(rank)


class LoraAdapter:
    """A PEFT LoRA adapter folder: which base weights it changes, and how."""

    def __init__(self, folder: Path):
        from ..models import adapter_config, named_base

        self.folder = Path(folder)
        cfg = adapter_config(self.folder)
        peft_type = str(cfg.get("peft_type") or "LORA").upper()
        if peft_type != "LORA":
            raise ModelError(f"diff understands LoRA adapters only; {self.folder} is a {peft_type} adapter")
        variant = "use_dora" if cfg.get("use_dora") else next(
            (k for k in ("target_parameters", "layer_replication", "use_bdlora", "use_qalora") if cfg.get(k)), None)
        if variant:
            raise ModelError(f"{self.folder} is a LoRA variant ({variant}) whose update is not scale·B·A per module, "
                             f"which diff does not support; merge it (merge_and_unload) and diff the merged model")
        self.config = cfg
        self.base_spec = named_base(self.folder, cfg)  # the base its config names, None when it names none
        self.ckpt = Checkpoint(self.folder, stem="adapter_model")
        self.modules: dict[str, LoraModule] = {}  # base weight name -> module
        self.replaced: dict[str, str] = {}  # base tensor name -> adapter key (modules_to_save: full new weights)
        # base weights saved with the adapter (PEFT saves targeted embeddings): tuned = stored weight + scale·B·A
        self.base_layers: dict[str, str] = {}
        self._parse(cfg)

    def _parse(self, cfg: dict) -> None:
        factors: dict[str, dict[str, str]] = {}
        for key in self.ckpt.tensors:
            name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
            if "lora_magnitude_vector" in name:
                raise ModelError(f"{self.folder} is a DoRA adapter (lora_magnitude_vector): not supported by diff")
            m = _FACTOR.match(name)
            if m and not name.endswith(".bias"):
                factors.setdefault(m["module"], {})[m["kind"]] = key
            elif "lora_" in name or "trainable_tokens" in name:
                raise ModelError(f"{self.folder}: adapter tensor '{key}' is of a kind diff does not support")
            elif ".base_layer." in name:
                self.base_layers[name.replace(".base_layer.", ".")] = key
            else:
                self.replaced[name] = key
        fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
        alpha_pattern = cfg.get("alpha_pattern") or {}
        for module, parts in factors.items():
            emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
            prefix = "lora_embedding_" if emb else "lora_"
            a, b = parts.get(prefix + "A"), parts.get(prefix + "B")
            if not a or not b:
                raise ModelError(f"{self.folder}: module '{module}' has only one of its two LoRA factors")
            alpha = float(next((v for p, v in alpha_pattern.items() if re.match(rf"(.*\.)?({p})$", module)),
                               cfg.get("lora_alpha", 8)))
            self.modules[f"{module}.weight"] = LoraModule(module, a, b, emb or fan_in_fan_out, alpha,
                                                          bool(cfg.get("use_rslora")))
        if not self.modules and not self.replaced:
            raise ModelError(f"{self.folder}: the adapter holds no LoRA weights")

    def load_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the adapter, as stored (adapters are small: for rewriting them whole)."""
        from safetensors.torch import load_file

        out = {}
        for f in {info.file for info in self.ckpt.tensors.values()}:
            out.update(load_file(f))
        return out

    def factors(self, mod: LoraModule) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(L, R, scale) in fp32 with Δ = scale·L·R."""
        a = self.ckpt.read(mod.a_key).float()
        b = self.ckpt.read(mod.b_key).float()
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ModelError(f"{self.folder}: LoRA factors of '{mod.module}' have shapes {tuple(a.shape)} and "
                             f"{tuple(b.shape)}, which do not multiply (conv layers are not supported)")
        for key, t in ((mod.a_key, a), (mod.b_key, b)):
            if not bool(torch.isfinite(t).all()):
                raise ModelError(f"adapter {self.folder}: tensor '{key}' contains NaN or Inf values "
                                 f"(corrupt adapter or diverged training)")
        r = a.shape[0]
        scale = mod.scale(r)
        return (a.T, b.T, scale) if mod.transposed else (b, a, scale)


class FactorDelta:
    """One module's update in factor form: dense rows on demand, and exact norm / singular values."""

    def __init__(self, left: torch.Tensor, right: torch.Tensor, scale: float):
        self.left, self.right, self.scale = left.contiguous(), right.contiguous(), scale

    @property
    def shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[1]

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        return (self.left[r0:r1] @ self.right).mul_(self.scale)

    def fro2(self) -> float:
        l64, r64 = self.left.double(), self.right.double()
        return self.scale ** 2 * float(torch.trace((l64.T @ l64) @ (r64 @ r64.T)))

    def svals(self) -> torch.Tensor:
        _, r_left = torch.linalg.qr(self.left.double())
        _, r_right = torch.linalg.qr(self.right.double().T)
        return torch.linalg.svdvals(r_left @ r_right.T) * abs(self.scale)
