"""A model's weights by name, whatever form it was saved in, read one tensor (or row slab) at a time.

Diff, graft and every repair ask a fine-tune the same questions: what are your rows of tensor X, how do they
differ from the base's, do you fit this base? A full checkpoint answers with its stored rows; a LoRA adapter with
Δ = scale·B·A for the modules it adapts (kept as factors, so norms and singular values are exact), with the
weights it stores whole (modules_to_save) or beside its factors (saved base layers, tuned = stored + Δ), and
with "unchanged" everywhere else. ``Weights`` is that one answer, so the consumers cannot drift apart, and no
more than the current tensor is ever held.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from ..errors import ModelError, TunelensError
from .checkpoint import Checkpoint
from .lora import FactorDelta, LoraAdapter

__all__ = ["Weights", "open_weights", "open_base", "check_fits", "same_model"]

# tensors that may legitimately exist in one checkpoint only: untied/tied output heads, non-persistent buffers
_OPTIONAL = re.compile(r"(^|\.)(lm_head|embed_out|output)\.weight$|rotary_emb\.inv_freq$|\.attn\.(masked_)?bias$")


@dataclass(eq=False)
class Weights:
    """One model's tensors: a full checkpoint (``ckpt``) or a LoRA adapter (``lora``) over some base."""

    role: str  # how messages name it: "tuned", "other", "model 1 (...)", "base", ...
    spec: str
    kind: str  # as models.resolve_path classifies the spec
    path: Path
    ckpt: Checkpoint | None = None
    lora: LoraAdapter | None = None

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "path": str(self.path)}

    @property
    def base_spec(self) -> str | None:
        """The base model an adapter's config names (None for full checkpoints, or when it names none)."""
        return self.lora.base_spec if self.lora else None

    @cached_property
    def config(self) -> dict:
        """config.json of the model ({} when absent or unreadable); an adapter's is its base's."""
        if self.lora is not None:
            return self.base.config
        try:
            cfg = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return cfg if isinstance(cfg, dict) else {}

    @cached_property
    def base(self) -> "Weights":
        """The base an adapter names, opened on first use (what ``weight`` adds the update to)."""
        if not self.base_spec:
            raise ModelError(f"adapter {self.path} does not name its base model (base_model_name_or_path)")
        return open_weights(self.base_spec, "base")

    # -------------------------------------------------------------------------------------- the update, by rows

    def factor(self, name: str) -> FactorDelta | None:
        """The update of ``name`` in factor form, for the modules a LoRA adapter adapts (else None)."""
        mod = self.lora.modules.get(name) if self.lora else None
        return FactorDelta(*self.lora.factors(mod)) if mod else None

    def _stored(self, name: str) -> str | None:
        """The adapter key holding a whole tuned (or saved base-layer) tensor for ``name``."""
        return self.lora.replaced.get(name) or self.lora.base_layers.get(name)

    def rows(self, name: str, r0: int, r1: int, fac: FactorDelta | None):
        """('t', tuned rows) | ('d', Δ rows) | (None, None) when this model leaves the tensor unchanged (or, as a
        full checkpoint, does not have it: a tied head)."""
        if self.ckpt is not None:
            return ("t", self.ckpt.read(name, r0, r1, touch=True)) if name in self.ckpt else (None, None)
        stored = self._stored(name)
        if stored is None:
            return ("d", fac.rows(r0, r1)) if fac is not None else (None, None)
        t = self.lora.ckpt.read(stored, r0, r1, touch=True)
        return "t", (t.float() + fac.rows(r0, r1)) if fac is not None else t

    def exact_factors(self, name: str) -> bool:
        """The update of ``name`` is exactly scale·B·A (no weight stored in the adapter replaces the base one)."""
        return self.lora is not None and name in self.lora.modules and name not in self.lora.base_layers

    def stored_dtype(self, name: str) -> str | None:
        """dtype of the tuned tensor as stored (None when it is computed here, in fp32, or unchanged)."""
        if self.ckpt is not None:
            return self.ckpt.tensors[name].dtype
        key = self.lora.replaced.get(name) or (self.lora.base_layers.get(name) if name not in self.lora.modules
                                               else None)
        return self.lora.ckpt.tensors[key].dtype if key else None

    def reads(self, name: str) -> bool:
        """Whether ``rows`` reads stored bytes for ``name`` (for progress totals)."""
        return self.ckpt is not None or self._stored(name) is not None

    # -------------------------------------------------------------------------------------- whole tensors

    def shape(self, name: str) -> tuple[int, ...] | None:
        if self.ckpt is not None:
            info = self.ckpt.tensors.get(name)
            return info.shape if info else None
        stored = self._stored(name)
        return self.lora.ckpt.tensors[stored].shape if stored else self.base.shape(name)

    def weight(self, name: str) -> torch.Tensor:
        """The whole tuned tensor in fp64 (an adapter's: its base's, or its stored one, plus scale·L·R)."""
        if self.ckpt is not None:
            return self.ckpt.read(name).double()
        stored = self._stored(name)
        w = self.lora.ckpt.read(stored).double() if stored else self.base.weight(name)
        mod = self.lora.modules.get(name)
        if mod is not None:
            left, right, scale = self.lora.factors(mod)
            w = w + scale * (left.double() @ right.double())
        return w


def open_weights(spec, role: str = "model") -> Weights:
    """The weights of any model spec tunelens resolves (folder, sharded folder, .gguf/'default' via its cached
    conversion, hub id, PEFT LoRA adapter); headers only, no tensor is read."""
    from ..models import resolve_path

    kind, path = resolve_path(spec)
    w = Weights(role, str(spec), kind, path)
    if kind == "peft_adapter":
        w.lora = LoraAdapter(path)
    else:
        w.ckpt = Checkpoint(path)
    return w


def open_base(spec) -> Weights:
    """The base of a comparison or merge: a full checkpoint, never an adapter."""
    from ..models import resolve_path

    kind, path = resolve_path(spec)
    if kind == "peft_adapter":
        raise ModelError(f"the base model must be a full checkpoint, not an adapter ({path})")
    return Weights("base", str(spec), kind, path, ckpt=Checkpoint(path))


def same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.strip() == b.strip()


# ---------------------------------------------------------------------------------------------------- fit


def check_fits(base: Checkpoint, side: Weights, notes: list[str]) -> None:
    """Raise unless ``side`` is a fine-tune of ``base``'s architecture (same tensors and shapes, or an adapter
    whose updates fit them); tensors only one side may have are noted."""
    if side.ckpt is not None:
        _check_full(base, side, notes)
    else:
        _check_lora(base, side)


def _show(names: list[str], k: int = 3) -> str:
    return ", ".join(sorted(names)[:k]) + (", ..." if len(names) > k else "")


def _fmt(shape) -> str:
    return "x".join(str(s) for s in shape) or "scalar"


def _check_full(base: Checkpoint, side: Weights, notes: list[str]) -> None:
    bn, tn = set(base.tensors), set(side.ckpt.tensors)
    only_b, only_t = sorted(bn - tn), sorted(tn - bn)
    bad_b = [n for n in only_b if not _OPTIONAL.search(n)]
    bad_t = [n for n in only_t if not _OPTIONAL.search(n)]
    if bad_b or bad_t:
        parts = []
        if bad_b:
            parts.append(f"{len(bad_b)} tensor(s) only in base ({_show(bad_b)})")
        if bad_t:
            parts.append(f"{len(bad_t)} only in {side.role} ({_show(bad_t)})")
        raise TunelensError(f"base and {side.role} have different architectures: " + "; ".join(parts))
    for n in only_b:
        notes.append(f"'{n}' is only in base (tied or non-persistent in {side.role}): skipped")
    for n in only_t:
        notes.append(f"'{n}' is only in {side.role} (tied or non-persistent in base): skipped")
    for n in sorted(bn & tn):
        sb, st = base.tensors[n].shape, side.ckpt.tensors[n].shape
        if sb != st:
            raise TunelensError(f"base and {side.role} have different architectures: tensor '{n}' has shape "
                                f"{_fmt(sb)} in base and {_fmt(st)} in {side.role}")


def _check_lora(base: Checkpoint, side: Weights) -> None:
    ad = side.lora
    for name, mod in ad.modules.items():
        if name not in base:
            raise TunelensError(f"adapter {ad.folder} does not fit the base: it changes '{mod.module}', which the "
                                f"base has no weight for ({name})")
        a, b = ad.ckpt.tensors[mod.a_key].shape, ad.ckpt.tensors[mod.b_key].shape
        if len(a) != 2 or len(b) != 2:
            raise TunelensError(f"adapter {ad.folder}: LoRA factors of '{mod.module}' are not matrices "
                                f"(conv layers are not supported)")
        shape = (a[1], b[0]) if mod.transposed else (b[0], a[1])
        if tuple(base.tensors[name].shape) != shape:
            raise TunelensError(f"adapter {ad.folder} does not fit the base (different architectures): "
                                f"'{mod.module}' is {_fmt(base.tensors[name].shape)} in the base, the adapter "
                                f"makes a {_fmt(shape)} update")
    for name, key in ad.replaced.items():
        if name not in base or base.tensors[name].shape != ad.ckpt.tensors[key].shape:
            raise TunelensError(f"adapter {ad.folder} does not fit the base (different architectures): it "
                                f"replaces '{name}', which the base lacks or shapes differently")
    for name, key in ad.base_layers.items():
        if name not in base or base.tensors[name].shape != ad.ckpt.tensors[key].shape:
            raise TunelensError(f"adapter {ad.folder} does not fit the base (different architectures): its saved "
                                f"'{name}' is {_fmt(ad.ckpt.tensors[key].shape)}, the base's "
                                f"{_fmt(base.tensors[name].shape) if name in base else 'missing'} (resized "
                                f"vocabulary?)")
