"""tunelens.weights: one reader of a base and its fine-tunes. Sharded and single-file checkpoints read the same,
a LoRA adapter's update is what PEFT merges, and lora_scale is PEFT's scale. Tiny random models only."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from conftest import save_random_lora
from tunelens.weights import LoraAdapter, checkpoint, lora_scale, open_base, open_weights, unit_alpha

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sharded_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model saved again in several safetensors shards (with an index)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny_sharded")
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(out, max_shard_size="40KB")
    return out


@pytest.fixture(scope="module")
def rslora_adapter_dir(tiny_model_dir, tmp_path_factory):
    """An rsLoRA adapter with a per-module alpha, on linear layers and on the (tied) embedding, whose base
    embedding PEFT saves beside its factors."""
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=6, use_rslora=True, alpha_pattern={"up_proj": 3},
                        target_modules=["q_proj", "up_proj", "embed_tokens"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    return save_random_lora(tiny_model_dir, tmp_path_factory.mktemp("rslora_adapter"), config, seed=2)


def _merged(base_dir, adapter_dir) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir))
        return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


def _tuned(w, name: str) -> torch.Tensor:
    """A fine-tune's tensor rebuilt slab by slab from ``rows`` (tuned rows, or the base plus Δ rows)."""
    base = open_base(w.base_spec) if w.lora is not None else None
    info = (base or w).ckpt.tensors[name]
    fac = w.factor(name)
    parts = []
    for r0, r1 in info.slabs():
        kind, rows = w.rows(name, r0, r1, fac)
        if kind is None:
            rows = base.ckpt.read(name, r0, r1)
        elif kind == "d":
            rows = base.ckpt.read(name, r0, r1).float() + rows
        parts.append(rows.float().reshape(-1))
    return torch.cat(parts).view(info.shape)


def test_single_and_sharded_folders_give_identical_tensors(tiny_model_dir, sharded_dir, monkeypatch):
    monkeypatch.setattr(checkpoint, "SLAB_ELEMS", 100)  # several slabs per matrix
    one, many = open_weights(tiny_model_dir), open_weights(sharded_dir)
    assert len({i.file for i in many.ckpt.tensors.values()}) > 1
    assert list(one.ckpt.tensors) and set(one.ckpt.tensors) == set(many.ckpt.tensors)
    for name, info in one.ckpt.tensors.items():
        assert many.shape(name) == info.shape and many.stored_dtype(name) == info.dtype
        assert torch.equal(_tuned(one, name), _tuned(many, name)), name
        assert torch.equal(one.weight(name), many.weight(name)), name


@pytest.mark.parametrize("adapter", ["tiny_adapter_dir", "rslora_adapter_dir"])
def test_lora_update_equals_merged_minus_base(adapter, tiny_model_dir, request, monkeypatch):
    adapter_dir = request.getfixturevalue(adapter)
    monkeypatch.setattr(checkpoint, "SLAB_ELEMS", 100)
    merged = _merged(tiny_model_dir, adapter_dir)
    base = open_base(tiny_model_dir)
    w = open_weights(adapter_dir, "tuned")
    assert w.kind == "peft_adapter" and w.base_spec == str(tiny_model_dir)
    changed = 0
    for name in base.ckpt.tensors:
        want = merged[name] - base.weight(name).float()
        got = _tuned(w, name) - base.weight(name).float()
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), name
        assert torch.allclose(w.weight(name).float() - base.weight(name).float(), want, atol=1e-5, rtol=1e-5), name
        fac = w.factor(name)
        if fac is not None:
            dense = (fac.left @ fac.right) * fac.scale
            assert torch.allclose(dense, want, atol=1e-5, rtol=1e-5), name
            assert fac.fro2() == pytest.approx(float(want.double().pow(2).sum()), rel=1e-5)
            changed += 1
    assert changed == len(w.lora.modules) and changed >= 2
    assert bool(w.lora.base_layers) == (adapter == "rslora_adapter_dir")  # the saved-embedding path is covered


def test_lora_scale_plain_and_rslora():
    assert lora_scale(8, 4) == 2.0
    assert lora_scale(8, 4, rslora=True) == 4.0
    assert lora_scale(6, 3, rslora=True) == pytest.approx(6 / math.sqrt(3))
    for r in (1, 3, 4, 24):
        for rs in (False, True):
            assert lora_scale(unit_alpha(r, rs), r, rs) == 1.0


def test_lora_scale_matches_peft(rslora_adapter_dir, tiny_adapter_dir, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for folder in (tiny_adapter_dir, rslora_adapter_dir):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(folder))
        peft_scales = {n[len("base_model.model."):]: m.scaling["default"] for n, m in model.named_modules()
                       if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling}
        ad = LoraAdapter(folder)
        assert ad.modules and {m.module for m in ad.modules.values()} == set(peft_scales)
        for mod in ad.modules.values():
            _, _, scale = ad.factors(mod)
            assert scale == pytest.approx(peft_scales[mod.module], rel=1e-12), mod.module


def test_old_import_names_are_the_same_objects():
    import tunelens.diff.lora as old_lora
    import tunelens.diff.stream as old_stream
    import tunelens.weights as W

    assert old_lora.lora_scale is W.lora_scale and old_lora.LoraAdapter is W.LoraAdapter
    assert old_lora.FactorDelta is W.FactorDelta and old_stream.Checkpoint is W.Checkpoint
