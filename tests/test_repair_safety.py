"""SafeLoRA and SafeMERGE on tiny random models, checked against dense reference computations."""

from __future__ import annotations

import json
import random
import shutil
import struct
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import save_random_lora
from tunelens.errors import TunelensError
from tunelens.repair import repair

MODULES = ("q_proj", "v_proj")


def _perturbed(src, out, seed, scale=0.05, names=MODULES):
    """A copy of a model folder with some weights changed (an 'aligned' model, or a full fine-tune)."""
    shutil.copytree(src, out)
    sd = load_file(out / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    for k in sd:
        if any(n in k for n in names):
            sd[k] = sd[k] + scale * torch.randn(sd[k].shape, generator=g)
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    return out


def _adapter(base_dir, out, seed, r=4, alpha=8):
    from peft import LoraConfig

    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(MODULES), init_lora_weights=False,
                     task_type="CAUSAL_LM")
    return save_random_lora(base_dir, out, cfg, seed)


def _factors(folder):
    """{module: (A, B, scale)} read straight from an adapter folder (rank/alpha patterns honoured)."""
    import re

    cfg = json.loads((folder / "adapter_config.json").read_text())
    sd = load_file(folder / "adapter_model.safetensors")
    out = {}
    for k in sd:
        if k.endswith("lora_A.weight"):
            mod = k[len("base_model.model."):-len(".lora_A.weight")]
            a, b = sd[k].double(), sd[k.replace("lora_A", "lora_B")].double()
            alpha = next((v for p, v in (cfg.get("alpha_pattern") or {}).items()
                          if re.match(rf"(.*\.)?({p})$", mod)), cfg["lora_alpha"])
            out[mod] = (a, b, alpha / a.shape[0])
    return out


def _dense_reference(u_dir, a_dir, adapter_dir):
    """Per module: the projector C and cos(C·ΔW, ΔW), straight from the definitions."""
    wu, wa = load_file(u_dir / "model.safetensors"), load_file(a_dir / "model.safetensors")
    ref = {}
    for mod, (a, b, s) in _factors(adapter_dir).items():
        v = wa[mod + ".weight"].double() - wu[mod + ".weight"].double()
        c = v @ v.T / torch.linalg.norm(v)
        dw = s * b @ a
        ref[mod] = (c, float(torch.nn.functional.cosine_similarity((c @ dw).flatten(), dw.flatten(), dim=0)))
    return ref


def _midway(ref):
    """A threshold halfway between two cosines: about half the modules fall below it, none sits on it."""
    cos = sorted(c for _, c in ref.values())
    return (cos[len(cos) // 2 - 1] + cos[len(cos) // 2]) / 2


@pytest.fixture(scope="module")
def aligned_dir(tiny_model_dir, tmp_path_factory):
    return _perturbed(tiny_model_dir, tmp_path_factory.mktemp("aligned") / "m", seed=3)


@pytest.fixture(scope="module")
def safety_adapter_dir(tiny_model_dir, tmp_path_factory):
    return _adapter(tiny_model_dir, tmp_path_factory.mktemp("safety_adapter"), seed=7)


def test_safelora_threshold_matches_dense_reference(tiny_model_dir, aligned_dir, tiny_adapter_dir, tmp_path):
    ref = _dense_reference(tiny_model_dir, aligned_dir, tiny_adapter_dir)
    tau = _midway(ref)  # about half the modules project
    res = repair(tiny_model_dir, tiny_adapter_dir, "safelora", tmp_path / "out", aligned=str(aligned_dir), tau=tau,
                 progress=False)
    assert res.kind == "adapter" and (tmp_path / "out" / "adapter_config.json").is_file()
    got = {m["module"]: m for m in res.modules}
    assert set(got) == set(ref)
    before, after = _factors(tiny_adapter_dir), _factors(tmp_path / "out")
    for mod, (c, cos) in ref.items():
        assert got[mod]["cos"] == pytest.approx(cos, abs=1e-6)
        assert got[mod]["projected"] == (cos <= tau)
        want_b = c @ before[mod][1] if cos <= tau else before[mod][1]
        torch.testing.assert_close(after[mod][1], want_b, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(after[mod][0], before[mod][0])
    assert 0 < res.summary["projected"] < len(ref)
    assert json.loads((tmp_path / "out" / "repair.json").read_text())["summary"] == res.summary


def test_safelora_topk_projects_the_k_lowest(tiny_model_dir, aligned_dir, tiny_adapter_dir, tmp_path):
    ref = _dense_reference(tiny_model_dir, aligned_dir, tiny_adapter_dir)
    res = repair(tiny_model_dir, tiny_adapter_dir, "safelora", tmp_path / "o", aligned=str(aligned_dir),
                 mode="topk", k=2, progress=False)
    lowest = set(sorted(ref, key=lambda m: ref[m][1])[:2])
    assert {m["module"] for m in res.modules if m["projected"]} == lowest


def _write_shuffled(tensors: dict, path, seed: int):
    """A valid safetensors file whose tensors are stored in a shuffled order (save_file always sorts them)."""
    names = list(tensors)
    random.Random(seed).shuffle(names)
    header, blobs, off = {}, [], 0
    for n in names:
        t = tensors[n].contiguous()
        data = t.numpy().tobytes()
        header[n] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_safelora_keys_modules_by_name_not_order(tiny_model_dir, aligned_dir, tiny_adapter_dir, tmp_path):
    shuffled_u = tmp_path / "u"
    shutil.copytree(tiny_model_dir, shuffled_u)
    _write_shuffled(load_file(tiny_model_dir / "model.safetensors"), shuffled_u / "model.safetensors", seed=1)
    shuffled_a = tmp_path / "a"
    shutil.copytree(aligned_dir, shuffled_a)
    _write_shuffled(load_file(aligned_dir / "model.safetensors"), shuffled_a / "model.safetensors", seed=2)
    from safetensors import safe_open

    with safe_open(shuffled_u / "model.safetensors", "pt") as f:  # the file really is in another order
        assert list(f.offset_keys()) != sorted(f.keys())
    plain = repair(tiny_model_dir, tiny_adapter_dir, "safelora", tmp_path / "p", aligned=str(aligned_dir),
                   unaligned=str(tiny_model_dir), progress=False)
    shuf = repair(tiny_model_dir, tiny_adapter_dir, "safelora", tmp_path / "s", aligned=str(shuffled_a),
                  unaligned=str(shuffled_u), progress=False)
    assert [(m["module"], round(m["cos"], 9)) for m in plain.modules] == \
           [(m["module"], round(m["cos"], 9)) for m in shuf.modules]
    a, b = load_file(tmp_path / "p" / "adapter_model.safetensors"), load_file(tmp_path / "s" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_safelora_zero_update_and_identical_pair_are_no_ops(tiny_model_dir, aligned_dir, tiny_adapter_dir, tmp_path):
    zero = tmp_path / "zero"
    shutil.copytree(tiny_adapter_dir, zero)
    sd = load_file(zero / "adapter_model.safetensors")
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in sd.items()}, zero / "adapter_model.safetensors")
    res = repair(tiny_model_dir, zero, "safelora", tmp_path / "z", aligned=str(aligned_dir), tau=1.0, progress=False)
    assert res.summary["projected"] == 0 and all(m["cos"] is None for m in res.modules)
    out = load_file(tmp_path / "z" / "adapter_model.safetensors")
    assert all(torch.equal(out[k], sd2) for k, sd2 in load_file(zero / "adapter_model.safetensors").items())
    # aligned == unaligned: no alignment direction anywhere, nothing to project
    res = repair(tiny_model_dir, tiny_adapter_dir, "safelora", tmp_path / "i", aligned=str(tiny_model_dir), tau=1.0,
                 progress=False)
    assert res.summary["projected"] == 0
    before = load_file(tiny_adapter_dir / "adapter_model.safetensors")
    after = load_file(tmp_path / "i" / "adapter_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_safelora_full_finetune_projects_delta(tiny_model_dir, aligned_dir, tmp_path):
    tuned = _perturbed(tiny_model_dir, tmp_path / "tuned", seed=11, names=("q_proj", "o_proj"))
    res = repair(tiny_model_dir, tuned, "safelora", tmp_path / "out", aligned=str(aligned_dir), tau=1.0,
                 progress=False)
    assert res.kind == "model"
    wu, wa = load_file(tiny_model_dir / "model.safetensors"), load_file(aligned_dir / "model.safetensors")
    wt, wo = load_file(tuned / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    projected = {m["module"] for m in res.modules if m["projected"]}
    assert projected == {m for m in (x[:-7] for x in wt) if m.endswith("q_proj")}  # o_proj: aligned == unaligned
    for name in wt:
        if name[:-7] in projected:
            v = (wa[name] - wu[name]).double()
            want = wu[name].double() + v @ v.T / torch.linalg.norm(v) @ (wt[name] - wu[name]).double()
            torch.testing.assert_close(wo[name].double(), want, atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(wo[name], wt[name])
    # identical base and tuned: the output is the model itself
    same = repair(tiny_model_dir, tiny_model_dir, "safelora", tmp_path / "same", aligned=str(aligned_dir), tau=1.0,
                  progress=False)
    assert same.summary["projected"] == 0
    w2 = load_file(tmp_path / "same" / "model.safetensors")
    assert all(torch.equal(w2[k], wu[k]) for k in wu)


def test_safelora_aligned_adapter_reference(tiny_model_dir, safety_adapter_dir, tiny_adapter_dir, tmp_path):
    """An aligned reference given as a LoRA adapter on U: V is its merged update."""
    res = repair(tiny_model_dir, tiny_adapter_dir, "safelora", tmp_path / "o", aligned=str(safety_adapter_dir),
                 tau=1.0, progress=False)
    fa = _factors(safety_adapter_dir)
    ft = _factors(tiny_adapter_dir)
    for m in res.modules:
        a, b, s = fa[m["module"]]
        v = s * b @ a
        c = v @ v.T / torch.linalg.norm(v)
        ta, tb, ts = ft[m["module"]]
        dw = ts * tb @ ta
        assert m["cos"] == pytest.approx(float((c @ dw * dw).sum() / torch.linalg.norm(c @ dw) / torch.linalg.norm(dw)),
                                         abs=1e-6)


def _dense_updates(folder):
    return {m: s * b @ a for m, (a, b, s) in _factors(folder).items()}


def test_safemerge_exact_is_weighted_sum(tiny_model_dir, aligned_dir, tiny_adapter_dir, safety_adapter_dir, tmp_path):
    ref = _dense_reference(tiny_model_dir, aligned_dir, tiny_adapter_dir)
    tau = _midway(ref)
    res = repair(tiny_model_dir, tiny_adapter_dir, "safemerge", tmp_path / "m", safety_adapter=str(safety_adapter_dir),
                 aligned=str(aligned_dir), tau=tau, progress=False)
    dt, ds, dm = _dense_updates(tiny_adapter_dir), _dense_updates(safety_adapter_dir), _dense_updates(tmp_path / "m")
    merged = {m["module"] for m in res.modules if m["merged"]}
    assert merged == {m for m, (_, c) in ref.items() if c < tau} and 0 < len(merged) < len(ref)
    for mod in dt:
        want = 0.8 * dt[mod] + 0.2 * ds[mod] if mod in merged else dt[mod]
        torch.testing.assert_close(dm[mod], want, atol=1e-6, rtol=1e-5)
    # PEFT loads it with the per-module ranks, and its merged weights are base + that update
    from tunelens.models import resolve_model

    h = resolve_model(str(tmp_path / "m"), merge_adapter=True)
    base = load_file(tiny_model_dir / "model.safetensors")
    sd = h.model.state_dict()
    for mod in dt:
        want = 0.8 * dt[mod] + 0.2 * ds[mod] if mod in merged else dt[mod]
        torch.testing.assert_close((sd[mod + ".weight"] - base[mod + ".weight"]).double(), want, atol=1e-5, rtol=1e-4)


def test_safemerge_peft_mode_matches_add_weighted_adapter(tiny_model_dir, aligned_dir, tiny_adapter_dir,
                                                          safety_adapter_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = repair(tiny_model_dir, tiny_adapter_dir, "safemerge", tmp_path / "m", safety_adapter=str(safety_adapter_dir),
                 aligned=str(aligned_dir), tau=1.0, mode="peft", progress=False)
    assert all(m["merged"] for m in res.modules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(tiny_adapter_dir),
                                       adapter_name="t")
        pm.load_adapter(str(safety_adapter_dir), adapter_name="s")
        pm.add_weighted_adapter(["t", "s"], [0.8, 0.2], "m", combination_type="linear")
    ours = _factors(tmp_path / "m")
    for name, module in pm.named_modules():
        if hasattr(module, "lora_A") and "m" in module.lora_A:
            mod = name[len("base_model.model."):]
            a, b, s = ours[mod]
            torch.testing.assert_close(a.float(), module.lora_A["m"].weight.detach(), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(b.float(), module.lora_B["m"].weight.detach(), atol=1e-6, rtol=1e-5)
            assert s == pytest.approx(module.scaling["m"])


def test_safemerge_keeps_tuned_when_no_module_drifts(tiny_model_dir, aligned_dir, tiny_adapter_dir,
                                                     safety_adapter_dir, tmp_path):
    res = repair(tiny_model_dir, tiny_adapter_dir, "safemerge", tmp_path / "m", safety_adapter=str(safety_adapter_dir),
                 aligned=str(aligned_dir), tau=-1.0, progress=False)
    assert res.summary["merged"] == 0
    before = load_file(tiny_adapter_dir / "adapter_model.safetensors")
    after = load_file(tmp_path / "m" / "adapter_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_inputs_are_clear_errors(tiny_model_dir, aligned_dir, tiny_adapter_dir, safety_adapter_dir, tmp_path):
    from tests.conftest import make_tiny_llama, make_tiny_tokenizer

    args = (tiny_model_dir, tiny_adapter_dir)
    with pytest.raises(TunelensError, match=r"tau .*\[-1, 1\]"):
        repair(*args, "safelora", tmp_path / "o", aligned=str(aligned_dir), tau=1.5, progress=False)
    with pytest.raises(TunelensError, match="mode"):
        repair(*args, "safelora", tmp_path / "o", aligned=str(aligned_dir), mode="best", progress=False)
    with pytest.raises(TunelensError, match="--aligned"):
        repair(*args, "safelora", tmp_path / "o", progress=False)
    with pytest.raises(TunelensError, match="sum to a positive"):
        repair(*args, "safemerge", tmp_path / "o", safety_adapter=str(safety_adapter_dir), aligned=str(aligned_dir),
               weights=[0.5, -0.5], progress=False)
    with pytest.raises(TunelensError, match="tau"):
        repair(*args, "safemerge", tmp_path / "o", safety_adapter=str(safety_adapter_dir), aligned=str(aligned_dir),
               tau=-2, progress=False)
    # a different architecture as the aligned model
    tok = make_tiny_tokenizer()
    other = make_tiny_llama(tok)
    other.config.hidden_size = 48
    from transformers import LlamaForCausalLM

    big = LlamaForCausalLM(other.config)
    big.save_pretrained(tmp_path / "big")
    with pytest.raises(TunelensError, match="different architectures"):
        repair(*args, "safelora", tmp_path / "o", aligned=str(tmp_path / "big"), progress=False)
    # same config, but a weight of another shape
    odd = tmp_path / "odd"
    shutil.copytree(aligned_dir, odd)
    sd = load_file(odd / "model.safetensors")
    key = next(k for k in sd if k.endswith("0.self_attn.q_proj.weight"))
    sd[key] = sd[key][:-1]
    save_file(sd, odd / "model.safetensors")
    with pytest.raises(TunelensError, match=r"q_proj.weight' has shape"):
        repair(*args, "safelora", tmp_path / "o", aligned=str(odd), progress=False)
    # an adapter target module missing in the unaligned model
    gap = tmp_path / "gap"
    shutil.copytree(tiny_model_dir, gap)
    sd = load_file(gap / "model.safetensors")
    save_file({k: v for k, v in sd.items() if "v_proj" not in k}, gap / "model.safetensors")
    with pytest.raises(TunelensError, match=r"v_proj.weight' of the tuned update is missing in the unaligned"):
        repair(*args, "safelora", tmp_path / "o", aligned=str(aligned_dir), unaligned=str(gap), progress=False)
    with pytest.raises(TunelensError, match="unknown option"):
        repair(*args, "safelora", tmp_path / "o", aligned=str(aligned_dir), alpha=0.5, progress=False)
