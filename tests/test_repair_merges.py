"""Merge-style repairs (linear, task arithmetic, TIES, DARE, interpolate, graft) on tiny random Llama checkpoints:
against mergekit's own output, as no-ops, from a LoRA adapter, on bad input, and streamed tensor by tensor."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file

from tunelens.diff.graft import eligible, save_mask, top_mask
from tunelens.errors import TunelensError
from tunelens.repair import repair
from tunelens.repair.dare import keep_mask

TOL = 1e-5
MERGES = ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "interpolate"]


def _weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _save(model, src, dst, **kwargs):
    """save_pretrained plus the tokenizer files of ``src``."""
    model.save_pretrained(dst, **kwargs)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "chat_template")):
            shutil.copy(f, dst)
    return dst


def _perturbed(src, dst, seed: int, scale: float = 0.02, keep=("model.norm.weight",), **save_kwargs):
    """A copy of the model in ``src`` with Gaussian noise added to every tensor except ``keep``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in keep:
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return _save(model, src, dst, **save_kwargs)


@pytest.fixture(scope="module")
def tuned_a(tiny_model_dir, tmp_path_factory):
    return _perturbed(tiny_model_dir, tmp_path_factory.mktemp("tuned_a"), seed=11)


@pytest.fixture(scope="module")
def tuned_b(tiny_model_dir, tmp_path_factory):
    return _perturbed(tiny_model_dir, tmp_path_factory.mktemp("tuned_b"), seed=12)


def _close(a: dict, b: dict, tol: float = TOL):
    assert set(a) == set(b)
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= tol, worst


# ---------------------------------------------------------------------------------------------------- mergekit


def _mergekit(out, method: str, models: list[tuple], base=None, **parameters) -> dict:
    """mergekit's merge (Python API, CPU, float32) of ``models`` = [(path, {weight, density...})]."""
    with warnings.catch_warnings():  # mergekit's own numpy deprecation noise
        warnings.simplefilter("ignore", DeprecationWarning)
        pytest.importorskip("mergekit")
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge

    cfg = {"merge_method": method, "dtype": "float32",
           "models": [{"model": str(p), "parameters": params} for p, params in models]}
    if base is not None:
        cfg["base_model"] = str(base)
    if parameters:
        cfg["parameters"] = parameters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_merge(MergeConfiguration.model_validate(cfg), str(out),
                  MergeOptions(device="cpu", quiet=True, write_model_card=False, copy_tokenizer=False))
    return _weights(out)


def test_linear_matches_mergekit(tiny_model_dir, tuned_a, tuned_b, tmp_path):
    ours = repair(tiny_model_dir, tuned_a, "linear", tmp_path / "ours", progress=False,
                  base_weight=0.3, weights=[0.5, 0.2], models=[str(tuned_b)])
    theirs = _mergekit(tmp_path / "mk", "linear", [(tiny_model_dir, {"weight": 0.3}), (tuned_a, {"weight": 0.5}),
                                                   (tuned_b, {"weight": 0.2})])
    _close(_weights(ours.out), theirs)
    assert ours.summary["changed"] == ours.summary["tensors"] - 1  # model.norm.weight is the same in all three


def test_task_arithmetic_matches_mergekit(tiny_model_dir, tuned_a, tuned_b, tmp_path):
    ours = repair(tiny_model_dir, tuned_a, "task_arithmetic", tmp_path / "ours", progress=False,
                  scale=0.7, weights=[0.6, 0.4], models=[str(tuned_b)])
    theirs = _mergekit(tmp_path / "mk", "task_arithmetic", [(tuned_a, {"weight": 0.6}), (tuned_b, {"weight": 0.4})],
                       base=tiny_model_dir, **{"lambda": 0.7})
    _close(_weights(ours.out), theirs)


@pytest.mark.parametrize("density,normalize", [(0.3, True), (0.8, False)])
def test_ties_matches_mergekit(tiny_model_dir, tuned_a, tuned_b, tmp_path, density, normalize):
    ours = repair(tiny_model_dir, tuned_a, "ties", tmp_path / "ours", progress=False, density=density,
                  weights=[0.7, 0.5], models=[str(tuned_b)], normalize=normalize)
    theirs = _mergekit(tmp_path / "mk", "ties", [(tuned_a, {"weight": 0.7, "density": density}),
                                                 (tuned_b, {"weight": 0.5, "density": density})],
                       base=tiny_model_dir, normalize=normalize)
    _close(_weights(ours.out), theirs)
    # each update keeps max(1, ⌊density·numel⌋) entries of every changed tensor
    q = next(m for m in ours.modules if m["tensor"].endswith("layers.0.self_attn.q_proj.weight"))
    assert q["kept"] == 2 * int(density * 32 * 32) and q["considered"] == 2 * 32 * 32


def test_interpolate_matches_mergekit_linear(tiny_model_dir, tuned_a, tmp_path):
    ours = repair(tiny_model_dir, tuned_a, "interpolate", tmp_path / "ours", progress=False, alpha=0.25)
    theirs = _mergekit(tmp_path / "mk", "linear", [(tiny_model_dir, {"weight": 0.75}), (tuned_a, {"weight": 0.25})])
    _close(_weights(ours.out), theirs)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_matches_mergekit_given_the_same_masks(tiny_model_dir, tuned_a, tuned_b, tmp_path, monkeypatch, method):
    """mergekit draws DARE's masks from torch's global RNG, so its masks cannot be made to equal ours by seeding;
    here mergekit's Bernoulli draw is replaced by our per-(seed, tensor, model) mask, and everything around it
    (mergekit's L1 rescale, weights, sign election, sum) is compared."""
    pytest.importorskip("mergekit")
    import mergekit.sparsify as sp

    base, a, b = _weights(tiny_model_dir), _weights(tuned_a), _weights(tuned_b)
    deltas = [(name, i, t[name] - base[name]) for i, t in enumerate((a, b)) for name in base]
    density, seed = 0.6, 3

    def bernoulli(tensor, density, rescale_norm=None):
        name, i, _ = next(d for d in deltas if d[2].shape == tensor.shape and torch.equal(d[2], tensor))
        mask = keep_mask(seed, name, i, tensor.shape, density).to(tensor.dtype)
        return sp.rescaled_masked_tensor(tensor, mask, rescale_norm)

    monkeypatch.setattr(sp, "bernoulli", bernoulli)
    ours = repair(tiny_model_dir, tuned_a, method, tmp_path / "ours", progress=False, density=density, seed=seed,
                  rescale="l1", weights=[0.8, 0.4], models=[str(tuned_b)], scale=0.9)
    theirs = _mergekit(tmp_path / "mk", method, [(tuned_a, {"weight": 0.8, "density": density}),
                                                 (tuned_b, {"weight": 0.4, "density": density})],
                       base=tiny_model_dir, **{"lambda": 0.9})
    _close(_weights(ours.out), theirs)


# ---------------------------------------------------------------------------------------------------- DARE


def test_dare_statistics(tiny_model_dir, tuned_a, tmp_path):
    base, tuned = _weights(tiny_model_dir), _weights(tuned_a)
    r = repair(tiny_model_dir, tuned_a, "dare_linear", tmp_path / "d1", progress=False, density=0.3, seed=7)
    out = _weights(r.out)
    n = r.summary["considered"]
    assert n == sum(t.numel() for t in base.values())  # a full checkpoint: every tensor has an update, maybe 0
    assert abs(r.summary["kept_fraction"] - 0.3) < 0.02  # ~31k Bernoulli(0.3) draws: sd 0.003
    name = "model.layers.1.mlp.up_proj.weight"
    mask = keep_mask(7, name, 0, base[name].shape, 0.3)
    delta = tuned[name] - base[name]
    # kept entries rescaled by 1/(1 - p), dropped entries at the base
    assert torch.allclose(out[name][mask], (base[name] + delta / 0.3)[mask], atol=TOL)
    assert torch.equal(out[name][~mask], base[name][~mask])
    # deterministic: same seed -> same model; another seed -> other masks
    again = _weights(repair(tiny_model_dir, tuned_a, "dare_linear", tmp_path / "d2", progress=False, density=0.3,
                            seed=7).out)
    assert all(torch.equal(out[k], again[k]) for k in out)
    other = _weights(repair(tiny_model_dir, tuned_a, "dare_linear", tmp_path / "d3", progress=False, density=0.3,
                            seed=8).out)
    assert not torch.equal(out[name], other[name])


@pytest.mark.parametrize("method,ref", [("dare_linear", "task_arithmetic"), ("dare_ties", "ties")])
def test_dare_without_drop_is_exact(tiny_model_dir, tuned_a, tuned_b, tmp_path, method, ref):
    common = {"weights": [0.6, 0.9], "models": [str(tuned_b)], "normalize": True}
    d = repair(tiny_model_dir, tuned_a, method, tmp_path / "d", progress=False, density=1.0, **common)
    extra = {"density": 1.0} if ref == "ties" else {}
    t = repair(tiny_model_dir, tuned_a, ref, tmp_path / "t", progress=False, **common, **extra)
    _close(_weights(d.out), _weights(t.out), tol=0.0)


# ---------------------------------------------------------------------------------------------------- graft


def _eligible_deltas(base, tuned):
    return {k: tuned[k] - base[k] for k in base if eligible(k)}


def test_graft_top_sparsity_equals_dense_top_mask(tiny_model_dir, tuned_a, tmp_path):
    base, tuned = _weights(tiny_model_dir), _weights(tuned_a)
    deltas = _eligible_deltas(base, tuned)
    masks = top_mask(deltas, 0.1)
    r = repair(tiny_model_dir, tuned_a, "graft", tmp_path / "g", progress=False, sparsity=0.1)
    out = _weights(r.out)
    for k in base:
        want = base[k] + masks[k] * deltas[k] if k in masks else base[k]
        assert torch.allclose(out[k], want, atol=TOL), k
    n = sum(d.numel() for d in deltas.values())
    assert r.summary["kept"] == round(0.1 * n) == sum(int(m.sum()) for m in masks.values())
    # the same mask saved as a `tunelens graft` mask file gives the same model
    path = save_mask(tmp_path / "mask-s0.1.safetensors", masks, {"sparsity": 0.1})
    r2 = repair(tiny_model_dir, tuned_a, "graft", tmp_path / "g2", progress=False, mask=str(path))
    _close(_weights(r2.out), out, tol=0.0)
    assert torch.equal(out["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_graft_threshold_ties_keep_exactly_k(tiny_model_dir, tmp_path):
    """All updates of equal magnitude: the k-th largest value is shared by every entry, and exactly k are kept."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        _save(model, tiny_model_dir, tmp_path / "b")
        for p in model.parameters():
            p.add_(0.125)
        _save(model, tiny_model_dir, tmp_path / "t")
    r = repair(tmp_path / "b", tmp_path / "t", "graft", tmp_path / "g", progress=False, sparsity=0.37)
    n = sum(m["considered"] for m in r.modules if "considered" in m)
    assert r.summary["kept"] == round(0.37 * n)


# ---------------------------------------------------------------------------------------------------- no-op, LoRA

NOOP_OPTIONS = {"graft": {"sparsity": 0.2}}


@pytest.mark.parametrize("method", MERGES + ["graft"])
def test_identical_models_give_the_base(tiny_model_dir, tmp_path, method):
    same = tmp_path / "same"
    shutil.copytree(tiny_model_dir, same)
    r = repair(tiny_model_dir, same, method, tmp_path / "out", progress=False, **NOOP_OPTIONS.get(method, {}))
    base, out = _weights(tiny_model_dir), _weights(r.out)
    assert set(base) == set(out) and all(torch.equal(base[k], out[k]) for k in base)
    assert r.summary["changed"] == 0 and r.kind == "model"
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (r.out / f).read_bytes() == (tiny_model_dir / f).read_bytes()


@pytest.fixture(scope="module")
def merged_adapter_dir(tiny_adapter_dir, tmp_path_factory):
    """The tiny LoRA adapter merged into its base by peft (merge_and_unload), saved as a full model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("merged_adapter")
    cfg = json.loads((tiny_adapter_dir / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PeftModel.from_pretrained(base, tiny_adapter_dir).merge_and_unload().save_pretrained(out)
    return out


@pytest.mark.parametrize("method", MERGES + ["graft"])
def test_lora_adapter_equals_merged_model(tiny_model_dir, tiny_adapter_dir, merged_adapter_dir, tmp_path, method):
    opts = {"graft": {"sparsity": 0.05}, "ties": {"density": 0.3}, "dare_ties": {"density": 0.5, "seed": 1},
            "dare_linear": {"density": 0.5}}.get(method, {})
    from_adapter = repair(tiny_model_dir, tiny_adapter_dir, method, tmp_path / "a", progress=False, **opts)
    from_merged = repair(tiny_model_dir, merged_adapter_dir, method, tmp_path / "m", progress=False, **opts)
    _close(_weights(from_adapter.out), _weights(from_merged.out))
    changed = {m["tensor"] for m in from_adapter.modules if m["changed"]}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("method,options,match", [
    ("ties", {"weights": [0.0]}, "sum to a positive"),
    ("task_arithmetic", {"weights": [1.0, -2.0], "models": ["SAME"]}, "sum to a positive"),
    ("ties", {"weights": [1.0, 1.0]}, "2 value.*1 model"),
    ("ties", {"density": 0.0}, r"density must be in \(0, 1\]"),
    ("dare_linear", {"density": 1.5}, r"density must be in \(0, 1\]"),
    ("dare_ties", {"rescale": "l3"}, "rescale must be one of"),
    ("linear", {"base_weight": -1.0}, "sum to a positive"),
    ("interpolate", {"alpha": float("nan")}, "alpha must be finite"),
    ("graft", {}, "exactly one of option mask"),
    ("graft", {"sparsity": 2}, r"sparsity must be in \(0, 1\]"),
    ("ties", {"dropout": 0.1}, "unknown option.*dropout.*valid"),
])
def test_bad_options(tiny_model_dir, tuned_a, tmp_path, method, options, match):
    options = {k: ([str(tuned_a) if m == "SAME" else m for m in v] if k == "models" else v)
               for k, v in options.items()}
    with pytest.raises(TunelensError, match=match):
        repair(tiny_model_dir, tuned_a, method, tmp_path / "out", progress=False, **options)
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_names_tensor_and_shapes(tiny_model_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.intermediate_size = 48
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "other")
    with pytest.raises(TunelensError, match=r"mlp\.down_proj\.weight' has shape 32x64 in base and 32x48"):
        repair(tiny_model_dir, tmp_path / "other", "ties", tmp_path / "out", progress=False)


def test_different_model_type_is_refused(tiny_model_dir, tuned_a, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tuned_a, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TunelensError, match="model_type 'llama'.*'mistral'"):
        repair(tiny_model_dir, tuned_a, "linear", tmp_path / "out", progress=False, models=[str(other)])


def test_graft_mask_of_another_model_is_refused(tiny_model_dir, tuned_a, tmp_path):
    bad = save_mask(tmp_path / "mask.safetensors", {"model.layers.0.mlp.up_proj.weight": torch.ones(3, 3) > 0})
    with pytest.raises(TunelensError, match=r"up_proj\.weight' is \(3, 3\) in the mask"):
        repair(tiny_model_dir, tuned_a, "graft", tmp_path / "out", progress=False, mask=str(bad))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TunelensError, match="not readable"):
        repair(tiny_model_dir, tuned_a, "graft", tmp_path / "out", progress=False,
               mask=str(tmp_path / "junk.safetensors"))


def test_output_folder_checks(tiny_model_dir, tuned_a, tmp_path):
    with pytest.raises(TunelensError, match="one of the input models"):
        repair(tiny_model_dir, tuned_a, "interpolate", tuned_a, progress=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(TunelensError, match="not a model folder"):
        repair(tiny_model_dir, tuned_a, "interpolate", tmp_path / "notes", progress=False)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    # an existing model folder is replaced whole; no temporary folders are left beside it
    out = tmp_path / "cand"
    repair(tiny_model_dir, tuned_a, "interpolate", out, progress=False, alpha=1.0)
    repair(tiny_model_dir, tuned_a, "interpolate", out, progress=False, alpha=0.0)
    _close(_weights(out), _weights(tiny_model_dir), tol=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cand", "notes"]


# ---------------------------------------------------------------------------------------------------- streaming


def test_multi_shard_merge_streams_tensor_by_tensor(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import tunelens.weights.checkpoint as stream
    import tunelens.repair.stream_merge as sm

    base_dir, tuned_dir = tmp_path / "base", tmp_path / "tuned"
    _save(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_model_dir, base_dir, max_shard_size="40KB")
    _perturbed(base_dir, tuned_dir, seed=5, max_shard_size="40KB")
    assert len(list(base_dir.glob("*.safetensors"))) > 2

    reads = []
    real_read = stream.Checkpoint.read

    def spy(self, name, r0=None, r1=None, touch=False):
        t = real_read(self, name, r0, r1, touch)
        reads.append((name, t.numel()))
        return t

    monkeypatch.setattr(stream.Checkpoint, "read", spy)
    monkeypatch.setattr(stream, "SLAB_ELEMS", 256)  # rows of 32 floats: 8 rows per read
    monkeypatch.setattr(sm, "SHARD_BYTES", 30_000)  # and write several output shards
    ref = repair(base_dir, tuned_dir, "task_arithmetic", tmp_path / "ta", progress=False, scale=0.5)
    biggest = max(n for _, n in reads)
    assert biggest <= 256 and len(reads) > 2 * len(ref.modules)  # row slabs, never a whole model or tensor
    out_files = sorted(p.name for p in (tmp_path / "ta").glob("*.safetensors"))
    assert len(out_files) > 2 and (tmp_path / "ta" / "model.safetensors.index.json").is_file()

    reads.clear()
    repair(base_dir, tuned_dir, "ties", tmp_path / "ties", progress=False, density=0.5)
    largest_tensor = max(t.numel() for t in _weights(base_dir).values())
    assert max(n for _, n in reads) <= largest_tensor  # whole-tensor methods: one tensor at a time

    # the sharded output loads with from_pretrained and equals the one-shard merge
    monkeypatch.undo()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ta").state_dict()
    single = repair(base_dir, tuned_dir, "task_arithmetic", tmp_path / "one", progress=False, scale=0.5)
    assert (single.out / "model.safetensors").is_file()
    want = _weights(single.out)
    assert all(torch.equal(loaded[k], want[k]) for k in want)


def test_keeps_base_dtype_and_finds_adapter_base(tiny_model_dir, tiny_adapter_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunelens.repair import get

    half = _save(AutoModelForCausalLM.from_pretrained(tiny_model_dir).to(torch.bfloat16), tiny_model_dir,
                 tmp_path / "bf16")
    tuned = _perturbed(half, tmp_path / "bf16_tuned", seed=3, scale=0.05)
    r = repair(half, tuned, "ties", tmp_path / "out", progress=False, density=0.5)
    out = _weights(r.out)
    assert {t.dtype for t in out.values()} == {torch.bfloat16} and r.summary["changed"] > 0
    assert AutoModelForCausalLM.from_pretrained(r.out).dtype == torch.bfloat16
    # Repair.run with no base: a LoRA adapter's base comes from its adapter_config
    cls = get("interpolate")
    res = cls().run(None, str(tiny_adapter_dir), tmp_path / "a", cls.Options(alpha=1.0), progress=False)
    assert res.summary["base"] == str(tiny_model_dir.resolve())
    assert {m["tensor"] for m in res.modules if m["changed"]} == {
        f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "qv"}
