"""`tunelens diff`: streamed statistics against direct dense computation, shards, LoRA vs merged, overlap, errors."""

from __future__ import annotations

import csv
import json
import math
import threading
import warnings
import xml.etree.ElementTree as ET

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tunelens.cli import app
from tunelens.diff import diff_models
from tunelens.diff import stats as S
from tunelens.weights import checkpoint
from tunelens.errors import ModelError, TunelensError

from conftest import make_tiny_llama, make_tiny_tokenizer

SVG = "{http://www.w3.org/2000/svg}"

UP = "model.layers.0.mlp.up_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"


def _save(folder, tensors: dict):
    """A minimal safetensors model folder (config.json makes it a model folder for resolve_path)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    return folder


def _expected(w: torch.Tensor, t: torch.Tensor) -> dict:
    """Every per-tensor statistic, computed directly on the dense tensors."""
    w, t = w.float(), t.float()
    d = t - w
    e = {
        "numel": d.numel(),
        "changed": int((d != 0).sum()),
        "changed_abs": int((d.abs() > 1e-5).sum()),
        "changed_rel": int((d.abs() > 1e-3 * w.abs()).sum()),
        "changed_bf16": int((w.bfloat16() != t.bfloat16()).sum()),
        "delta_fro": float(d.double().norm()),
        "base_fro": float(w.double().norm()),
        "cosine": float(torch.nn.functional.cosine_similarity(w.double().flatten(), t.double().flatten(), dim=0)),
    }
    if d.ndim == 2:
        e["rank"] = int(torch.linalg.matrix_rank(d))
        sv = torch.linalg.svdvals(d).double()
        energy = sv.square().cumsum(0) / sv.square().sum() if sv.abs().sum() > 0 else None
        for q, key in ((0.9, "energy90"), (0.99, "energy99")):
            e[key] = 0 if energy is None else int(torch.searchsorted(energy, torch.tensor(q - 1e-12,
                                                                                      dtype=torch.float64))) + 1
    return e


def _check_row(row: dict, exp: dict):
    for k, v in exp.items():
        if isinstance(v, float):
            assert row[k] == pytest.approx(v, rel=1e-5, abs=1e-9), (row["name"], k)
        else:
            assert row[k] == v, (row["name"], k)


def _rows(result: dict) -> dict:
    return {r["name"]: r for r in result["tensors"]}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny Llama and a copy with known updates: rank-3 in one q_proj, 25 sparse entries in one down_proj,
    sub-tolerance (1e-6) changes in one layernorm; everything else unchanged."""
    root = tmp_path_factory.mktemp("diff_pair")
    tok = make_tiny_tokenizer()
    model = make_tiny_llama(tok)
    model.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layers = model.model.layers
        layers[0].self_attn.q_proj.weight += 0.05 * torch.randn(32, 3, generator=g) @ torch.randn(3, 32, generator=g)
        flat = layers[1].mlp.down_proj.weight.view(-1)
        flat[torch.randperm(flat.numel(), generator=g)[:25]] += 0.01
        layers[1].input_layernorm.weight += 1e-6
    model.save_pretrained(root / "tuned")
    model.save_pretrained(root / "tuned_sharded", max_shard_size="20KB")
    return root


def test_statistics_match_dense_computation(pair, tmp_path):
    result = diff_models(str(pair / "base"), str(pair / "tuned"), out=tmp_path / "out")
    base, tuned = load_file(pair / "base" / "model.safetensors"), load_file(pair / "tuned" / "model.safetensors")
    rows = _rows(result)
    assert set(rows) == set(base)
    for name in base:
        _check_row(rows[name], _expected(base[name], tuned[name]))
    q = rows["model.layers.0.self_attn.q_proj.weight"]
    assert q["rank"] == 3 and q["rank_frac"] == pytest.approx(3 / 32) and 1 <= q["energy90"] <= 3
    assert rows["model.layers.1.mlp.down_proj.weight"]["changed_abs"] == 25
    ln = rows["model.layers.1.input_layernorm.weight"]
    assert ln["changed"] == 32 and ln["changed_abs"] == 0 and ln["changed_bf16"] == 0 and ln["rank"] is None
    emb = rows["model.embed_tokens.weight"]
    assert emb["changed"] == 0 and emb["cosine"] == 1.0 and emb["rank"] == 0
    # aggregates: sums over tensors
    total = result["summary"]
    assert total["numel"] == sum(t.numel() for t in base.values())
    assert total["changed_abs"] == sum(r["changed_abs"] for r in rows.values())
    assert total["delta_fro"] == pytest.approx(math.sqrt(sum(r["delta_fro"] ** 2 for r in rows.values())))
    heat = result["aggregates"]["heatmap"]
    assert heat["layers"] == [0, 1] and "q_proj" in heat["modules"]
    assert heat["values"][0][heat["modules"].index("q_proj")] == pytest.approx(q["rel_fro"])
    by_layer = {g["layer"]: g for g in result["aggregates"]["by_layer"]}
    assert by_layer[1]["changed_abs"] == 25 and by_layer[None]["changed"] == 0
    # files
    out = tmp_path / "out"
    saved = json.loads((out / "diff.json").read_text())
    assert saved["schema"] == "tunelens.diff/1" and saved["summary"]["changed_abs"] == total["changed_abs"]
    with open(out / "diff_tensors.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(base) and {"frac_changed_bf16", "rank", "energy99"} <= set(csv_rows[0])
    svg = ET.parse(out / "heatmap.svg").getroot()  # well-formed, one cell per value, the value as its tooltip
    cells = [r for r in svg.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(cells) == sum(v is not None for line in heat["values"] for v in line)
    q_title = f"layer 0 · q_proj: {q['rel_fro']:.6g}"
    assert q_title in [r.find(f"{SVG}title").text for r in cells]
    assert (out / "heatmap.csv").read_text().splitlines()[0].startswith("layer,")


def test_diff_writes_its_files_without_a_plotting_library(pair, tmp_path):
    """The heatmap is hand-written SVG (report/svg.py): a diff streams gigabytes at read speed, then must not
    spend a third of a second importing matplotlib to draw a grid."""
    import subprocess
    import sys

    probe = ("import json, sys\nfrom tunelens.diff import diff_models\n"
             "diff_models(sys.argv[1], sys.argv[2], out=sys.argv[3])\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')))")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", probe, str(pair / "base"), str(pair / "tuned"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (out / "heatmap.svg").is_file() and (out / "diff.json").is_file()


def test_sharded_checkpoint_same_result(pair):
    assert (pair / "tuned_sharded" / "model.safetensors.index.json").is_file()
    assert len(list((pair / "tuned_sharded").glob("*.safetensors"))) > 1
    a = _rows(diff_models(str(pair / "base"), str(pair / "tuned")))
    b = _rows(diff_models(str(pair / "base"), str(pair / "tuned_sharded")))
    assert a == b


def test_small_slabs_chunks_and_two_workers_same_result(pair, monkeypatch):
    a = _rows(diff_models(str(pair / "base"), str(pair / "tuned"), workers=1))
    monkeypatch.setattr(S, "CHUNK", 37)
    monkeypatch.setattr(checkpoint, "SLAB_ELEMS", 200)
    b = _rows(diff_models(str(pair / "base"), str(pair / "tuned"), workers=2))
    for name, ra in a.items():
        for k, v in ra.items():
            assert b[name][k] == (pytest.approx(v, rel=1e-6, abs=1e-12) if isinstance(v, float) else v), (name, k)


def test_lora_path_equals_merged_weights(tiny_model_dir, tiny_adapter_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                           str(tiny_adapter_dir)).merge_and_unload()
        merged.save_pretrained(tmp_path / "merged")
    dense = _rows(diff_models(str(tiny_model_dir), str(tmp_path / "merged")))
    lora_result = diff_models(None, str(tiny_adapter_dir))  # base taken from adapter_config
    lora = _rows(lora_result)
    assert lora_result["tuned"]["kind"] == "peft_adapter" and set(lora) == set(dense)
    adapted = [n for n in lora if n.endswith(("q_proj.weight", "v_proj.weight"))]
    assert len(adapted) == 4
    for name, d in dense.items():
        r = lora[name]
        if name not in adapted:
            assert r["changed"] == d["changed"] == 0
            continue
        assert r["delta_fro"] == pytest.approx(d["delta_fro"], rel=1e-4)
        assert r["rel_fro"] == pytest.approx(d["rel_fro"], rel=1e-4)
        assert r["cosine"] == pytest.approx(d["cosine"], abs=1e-6)
        assert (r["rank"], r["energy90"], r["energy99"]) == (d["rank"], d["energy90"], d["energy99"])
        assert r["rank"] <= 4
        assert abs(r["changed_abs"] - d["changed_abs"]) <= 0.01 * r["numel"]
    # the factor-form norm is scale·B·A with scale = lora_alpha / r
    ad = load_file(tiny_adapter_dir / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    delta = (8 / 4) * ad[f"{key}.lora_B.weight"] @ ad[f"{key}.lora_A.weight"]
    assert lora["model.layers.0.self_attn.q_proj.weight"]["delta_fro"] == pytest.approx(float(delta.norm()), rel=1e-5)


def test_lora_factor_spectrum_is_exact():
    g = torch.Generator().manual_seed(3)
    from tunelens.diff.lora import FactorDelta

    left, right = torch.randn(40, 5, generator=g), torch.randn(5, 30, generator=g)
    right[4] = right[3]  # rank 4
    fac = FactorDelta(left, right, scale=0.5)
    dense = 0.5 * left.double() @ right.double()
    assert torch.allclose(fac.svals()[:5].sort(descending=True).values, torch.linalg.svdvals(dense)[:5], atol=1e-9)
    assert fac.fro2() == pytest.approx(float(dense.square().sum()), rel=1e-9)
    assert S.spectrum_stats(fac.svals(), (40, 30))["rank"] == 4
    assert torch.allclose(fac.rows(10, 13), dense[10:13].float(), atol=1e-5)


def test_overlap_hand_computed(tmp_path):
    w = torch.rand(4, 5) + 1.0
    t1, t2 = w.clone(), w.clone()
    t1.view(-1)[[0, 1, 2, 3]] += 0.5  # I1 = {0, 1, 2, 3}
    t2.view(-1)[[2, 3, 4]] -= 0.5  # I2 = {2, 3, 4}
    t2.view(-1)[5] += 1e-6  # changed, but below the 1e-5 threshold: not in I2
    base = _save(tmp_path / "base", {UP: w, NORM: torch.ones(5)})
    a = _save(tmp_path / "a", {UP: t1, NORM: torch.ones(5)})
    b = _save(tmp_path / "b", {UP: t2, NORM: torch.ones(5)})
    r = diff_models(str(base), str(a), other=str(b), out=tmp_path / "out")
    row = _rows(r)[UP]
    assert (row["changed_abs"], row["other_changed_abs"], row["overlap"]) == (4, 3, 2)
    assert row["o1"] == pytest.approx(2 / 4) and row["o2"] == pytest.approx(2 / 3)
    assert row["chance_o1"] == pytest.approx(3 / 20) and row["chance_o2"] == pytest.approx(4 / 20)
    overall = r["overlap"]["overall"]
    assert overall["o1"] == pytest.approx(0.5) and overall["chance_o1"] == pytest.approx(3 / 25)
    header = (tmp_path / "out" / "diff_tensors.csv").read_text().splitlines()[0]
    assert "o1" in header.split(",")
    same = diff_models(str(base), str(a), other=str(a))["overlap"]["overall"]
    assert same["o1"] == same["o2"] == 1.0


def test_bf16_rounding_hides_tiny_fp32_changes(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = (torch.randint(16, 64, (8, 16), generator=g) / 32.0) * torch.where(torch.rand(8, 16, generator=g) < 0.5, -1, 1)
    assert torch.equal(w.bfloat16().float(), w)  # exactly representable in bf16, |w| in [0.5, 2)
    t = w + 1e-4  # far below half a bf16 ulp (>= 2^-9): rounds back to w
    t[:4] += 0.05  # these rows change in bf16 too
    _save(tmp_path / "base", {UP: w})
    _save(tmp_path / "tuned", {UP: t})
    row = _rows(diff_models(str(tmp_path / "base"), str(tmp_path / "tuned")))[UP]
    assert row["frac_changed"] == 1.0 and row["frac_changed_abs"] == 1.0
    assert row["frac_changed_bf16"] == 0.5
    _check_row(row, _expected(w, t))


def test_bf16_checkpoints(tmp_path):
    w = torch.randn(16, 8).bfloat16()
    t = w.clone()
    t[3, 2] += 1.0
    _save(tmp_path / "base", {UP: w})
    _save(tmp_path / "tuned", {UP: t})
    row = _rows(diff_models(str(tmp_path / "base"), str(tmp_path / "tuned")))[UP]
    _check_row(row, _expected(w, t))
    assert row["changed_bf16"] == row["changed"] == 1


def test_mismatched_architectures(tmp_path):
    base = _save(tmp_path / "base", {UP: torch.ones(4, 4), NORM: torch.ones(4)})
    extra = _save(tmp_path / "extra", {UP: torch.ones(4, 4), NORM: torch.ones(4),
                                       "model.layers.1.x.weight": torch.ones(2)})
    shape = _save(tmp_path / "shape", {UP: torch.ones(4, 5), NORM: torch.ones(4)})
    with pytest.raises(TunelensError, match="base and tuned have different architectures: .*only in tuned"):
        diff_models(str(base), str(extra))
    with pytest.raises(TunelensError, match=r"different architectures: tensor '.*up_proj.weight' has shape 4x4 in "
                                            r"base and 4x5 in tuned"):
        diff_models(str(base), str(shape))
    with pytest.raises(TunelensError, match="base and other have different architectures"):
        diff_models(str(base), str(base), other=str(shape))


def test_head_in_one_model_only_is_a_note(tmp_path):
    base = _save(tmp_path / "base", {UP: torch.ones(4, 4), "lm_head.weight": torch.ones(3, 4)})
    tuned = _save(tmp_path / "tuned", {UP: torch.ones(4, 4) * 2})
    r = diff_models(str(base), str(tuned))
    assert [t["name"] for t in r["tensors"]] == [UP]
    assert any("lm_head.weight" in n and "skipped" in n for n in r["notes"])


@pytest.mark.parametrize("where", ["base", "tuned"])
def test_nan_weights_named(tmp_path, where):
    good, bad = torch.ones(6, 4), torch.ones(6, 4)
    bad[2, 1] = float("nan")
    base = _save(tmp_path / "base", {UP: bad if where == "base" else good, NORM: torch.ones(4)})
    tuned = _save(tmp_path / "tuned", {UP: bad if where == "tuned" else good, NORM: torch.ones(4)})
    with pytest.raises(ModelError, match=rf"{where}: weight tensor '{UP}' contains NaN or Inf"):
        diff_models(str(base), str(tuned))
    assert not any(t.name == "tunelens-diff-reader" for t in threading.enumerate())  # the reader was stopped


def test_unreadable_checkpoints(tmp_path):
    base = _save(tmp_path / "base", {UP: torch.ones(4, 4)})
    bad = _save(tmp_path / "bad", {UP: torch.ones(4, 4)})
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        diff_models(str(base), str(bad))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    torch.save({UP: torch.ones(4, 4)}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickle weights only"):
        diff_models(str(base), str(pickled))


def test_base_required_for_full_checkpoints(pair):
    with pytest.raises(TunelensError, match="pass the base model"):
        diff_models(None, str(pair / "tuned"))


def test_same_bits_and_names():
    a = torch.randn(10).half()
    b = a.clone()
    assert S.same_bits(a, b) and S.same_bits(a[1:], b[1:])
    b[7] = -b[7]
    assert not S.same_bits(a, b)
    assert S.parse_name("model.layers.3.self_attn.q_proj.weight") == (3, "q_proj")
    assert S.parse_name("model.layers.12.self_attn.q_proj.bias") == (12, "q_proj.bias")
    assert S.parse_name("transformer.h.0.attn.c_attn.weight") == (0, "c_attn")
    assert S.parse_name("model.embed_tokens.weight") == (None, "embed_tokens")
    assert S.parse_name("lm_head.weight") == (None, "lm_head")


def test_cli_diff(pair, tmp_path):
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["diff", "--base", str(pair / "base"), "--tuned", str(pair / "tuned"),
                                 "--out", str(out), "--no-rank"])
    assert r.exit_code == 0, r.output
    assert "changed:" in r.output and "q_proj" in r.output
    saved = json.loads((out / "diff.json").read_text())
    assert saved["options"]["rank"] is False and all(t["rank"] is None for t in saved["tensors"])
    r = CliRunner().invoke(app, ["diff", "--tuned", str(pair / "tuned"), "--out", str(out)])
    assert r.exit_code == 2 and "pass the base model" in r.output and "Traceback" not in r.output


def test_lora_embedding_rslora_alpha_pattern_modules_to_save(tiny_model_dir, tmp_path):
    """Embedding LoRA (Δ = (B·A)ᵀ), rsLoRA scaling, a per-module alpha and a fully saved module all match the
    merged weights."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    config = LoraConfig(r=3, lora_alpha=6, target_modules=["embed_tokens", "down_proj"], use_rslora=True,
                        alpha_pattern={"layers.1.mlp.down_proj": 2}, modules_to_save=["post_attention_layernorm"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "modules_to_save" in name:
                    p.add_(0.1)
        peft_model.save_pretrained(tmp_path / "adapter")
        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                           str(tmp_path / "adapter")).merge_and_unload()
        merged.save_pretrained(tmp_path / "merged")
    dense = _rows(diff_models(str(tiny_model_dir), str(tmp_path / "merged")))
    lora = _rows(diff_models(str(tiny_model_dir), str(tmp_path / "adapter")))
    changed = [n for n, d in dense.items() if d["changed"]]
    assert {"model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight",
            "model.layers.0.post_attention_layernorm.weight"} <= set(changed)
    for name, d in dense.items():
        r = lora[name]
        assert r["delta_fro"] == pytest.approx(d["delta_fro"], rel=1e-4, abs=1e-9), name
        assert (r["rank"], r["energy90"], r["energy99"]) == (d["rank"], d["energy90"], d["energy99"]), name


# ---------------------------------------------------------------------------------------------- the C kernel


def test_the_one_pass_kernel_is_built():
    """setup.py builds it as optional (an install without a compiler still works, on the torch path): this is
    where an install that lost it fails."""
    assert S.FAST is not None, "tunelens.diff._fastdiff did not build: reinstall with a C compiler (pip install -e .)"


def _specials(dtype, n, seed):
    """Random weights around 0.02 with zeros, -0, subnormals and large values mixed in."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g) * 0.02
    tiny = torch.finfo(dtype).tiny
    w[:: 97] = 0.0
    w[1:: 101] = -0.0
    w[2:: 89] = tiny / 4 * torch.rand(len(w[2::89]), generator=g)  # subnormal in the dtype
    w[3:: 83] = 3e4 if dtype == torch.float16 else 1e30
    return w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("keep", [False, True])
def test_the_kernel_matches_the_torch_path(dtype, keep, monkeypatch):
    """The slow reference (the torch path, the kernel off) pinned to the C kernel: counts and Δ exact, sums to
    fp32 rounding; slabs of odd sizes split between two workers, one slab bit-identical."""
    monkeypatch.setattr(S, "CHUNK", 4096)
    n = 3 * 4096 * 2 + 1234  # not a multiple of a chunk, a block or a lane
    w = _specials(dtype, n, 0)
    g = torch.Generator().manual_seed(1)
    t = w.float().clone()
    hit = torch.rand(n, generator=g) < 0.3
    t[hit] += torch.randn(int(hit.sum()), generator=g) * torch.tensor([1e-7, 1e-5, 1e-3])[
        torch.randint(0, 3, (int(hit.sum()),), generator=g)]
    t = t.to(dtype)
    t[: n // 3] = w[: n // 3]  # the first slab below is bit-identical
    bounds = [0, n // 3, n // 3 + 777, n]
    results = []
    for fast in (S.FAST, None):
        monkeypatch.setattr(S, "FAST", fast)
        ws = S.Workspace(2)
        acc = S.DeltaAccumulator(ws, keep=n if keep else None, bf16_exact=dtype == torch.bfloat16)
        for a, b in zip(bounds, bounds[1:]):
            acc.update(w[a:b], t_src=t[a:b])
        ws.close()
        results.append((acc.result(), acc.keep))
    (got, kept), (want, kept_ref) = results
    for key in ("numel", "changed", "changed_abs", "changed_rel", "changed_bf16"):
        assert got[key] == want[key], key
    assert want["changed"] > 0 and want["changed_bf16"] < want["changed"] or dtype == torch.bfloat16
    for key in ("ww", "wd", "dd"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-12), key
    if keep:
        assert torch.equal(kept, kept_ref) and torch.equal(kept, t.float() - w.float())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_kernel_converts_every_16_bit_pattern_like_torch(dtype, monkeypatch):
    """All 65536 bit patterns (NaNs, infinities, subnormals included) as w, against shifted copies as t: Δ and
    every count as the torch path computes them."""
    monkeypatch.setattr(S, "CHUNK", 1 << 16)
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    for t in (torch.zeros_like(bits), bits.roll(1), bits.roll(7)):
        results = []
        for fast in (S.FAST, None):
            monkeypatch.setattr(S, "FAST", fast)
            acc = S.DeltaAccumulator(S.Workspace(1), keep=bits.numel())
            acc.update(bits, t_src=t)
            results.append((acc.result(), acc.keep))
        (got, kept), (want, kept_ref) = results
        assert [got[k] for k in ("changed", "changed_abs", "changed_rel", "changed_bf16")] == \
            [want[k] for k in ("changed", "changed_abs", "changed_rel", "changed_bf16")]
        assert torch.equal(kept.isnan(), kept_ref.isnan())
        assert torch.equal(kept[~kept.isnan()], kept_ref[~kept_ref.isnan()])
