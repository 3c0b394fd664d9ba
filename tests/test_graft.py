"""Grafting (skill localization): mask selection, the endpoints (s=1 -> tuned, s=0 -> base), mask files, the
LoRA path, the mask optimisation and the CLI, on the tiny model."""

import json

import pytest
import torch

from tunelens.diff.graft import (eligible, gain_recovered, graft, load_mask, save_mask, sparsity_tag,
                                 top_mask)

ROWS = [
    {"question": "Sky colour?", "choices": ["blue", "green"], "answer": 0},
    {"question": "Grass colour?", "choices": ["blue", "green"], "answer": 1},
    {"question": "Snow colour?", "choices": ["white", "black"], "answer": 0},
    {"question": "Coal colour?", "choices": ["white", "black"], "answer": 1},
]


@pytest.fixture
def task(tmp_path):
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    p = tmp_path / "task.yaml"
    p.write_text("name: colours\ntype: multiple_choice\ndata: mc.jsonl\n")
    return p


@pytest.fixture(scope="module")
def tuned_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model tuned a few SGD steps on the colour task (every tensor changes, embeddings included)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelens.data import load_items, load_task, to_chat
    from tunelens.tune.examples import tokenize_chat

    d = tmp_path_factory.mktemp("task")
    (d / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    spec = load_task({"name": "colours", "type": "multiple_choice", "data": str(d / "mc.jsonl")})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(5):
        for it in load_items(spec, "train"):
            ids, lab, _ = tokenize_chat(tok, to_chat(spec, it), 128)
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([lab])).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    out = tmp_path_factory.mktemp("tuned")
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _logits(folder, text="Sky colour? blue"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    m = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return m(**tok(text, return_tensors="pt")).logits


def test_eligible_names():
    assert eligible("model.layers.0.self_attn.q_proj.weight")
    assert eligible("transformer.h.11.mlp.c_fc.weight")
    assert not eligible("model.embed_tokens.weight")
    assert eligible("model.embed_tokens.weight", include_embeddings=True)
    assert not eligible("model.norm.weight") and not eligible("lm_head.weight")


def test_top_mask_is_global_top_k():
    torch.manual_seed(0)
    deltas = {"a": torch.randn(10, 7), "b": torch.randn(13), "c": torch.randn(3, 3, 2)}
    flat = torch.cat([d.reshape(-1).abs() for d in deltas.values()])
    n = flat.numel()
    for s in (0.0, 0.05, 0.3, 1.0):
        m = top_mask(deltas, s)
        k = round(s * n)
        got = torch.cat([m[x].reshape(-1) for x in deltas])
        assert int(got.sum()) == k
        if 0 < k < n:
            thr = flat.sort(descending=True).values[k - 1]
            assert bool((flat[got] >= thr).all()) and bool((flat[~got] <= thr).all())


def test_mask_file_round_trips(tmp_path):
    masks = {"x.weight": torch.rand(5, 4) > 0.5, "y.bias": torch.zeros(3, dtype=torch.bool)}
    save_mask(tmp_path / "m.safetensors", masks, {"sparsity": 0.1})
    back = load_mask(tmp_path / "m.safetensors")
    assert set(back) == set(masks) and all(torch.equal(back[k], masks[k]) for k in masks)


def test_gain_recovered():
    assert gain_recovered(0.5, 0.75, 0.7) == pytest.approx(0.8)
    assert gain_recovered(0.5, 0.5, 0.7) is None
    assert gain_recovered(0.6, 0.4, 0.5) == pytest.approx(0.5)


def test_endpoints_and_saved_models(tiny_model_dir, tuned_dir, task, tmp_path):
    r = graft(tiny_model_dir, tuned_dir, task, [0.0, 1.0], steps=0, examples=4, out=tmp_path, save_model=True,
              select_limit=4)
    s0, s1 = r["results"]
    assert s0["kept"] == 0 and s1["kept"] == r["eligible"]["entries"] and s1["kept_fraction"] == 1.0
    assert s0["score"]["graft"] == s0["score"]["base"]
    assert s0["selection_score"] is None and s0["best_step"] == 0  # no mask steps: nothing to select between
    assert r["loss"]["tuned"] < r["loss"]["base"]  # the tune lowered its own task's loss
    assert s0["loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert s1["loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert r["notes"] and "embed_tokens" in r["notes"][0]  # the tune changed the (tied) embeddings too
    from safetensors.torch import load_file

    base, tuned = load_file(tiny_model_dir / "model.safetensors"), load_file(tuned_dir / "model.safetensors")
    g0 = load_file(tmp_path / f"model-s{sparsity_tag(0.0)}" / "model.safetensors")
    g1 = load_file(tmp_path / f"model-s{sparsity_tag(1.0)}" / "model.safetensors")
    for name in base:
        assert torch.equal(g0[name], base[name])
        assert torch.equal(g1[name], tuned[name] if eligible(name) else base[name]), name
    m1 = load_mask(tmp_path / "mask-s1.safetensors")
    assert all(bool(m.all()) for m in m1.values()) and all(eligible(k) for k in m1)
    assert json.loads((tmp_path / "graft.json").read_text())["schema"] == "tunelens.graft/1"


def test_full_graft_equals_tuned_logits(tiny_model_dir, tmp_path, task):
    """When only block tensors changed, the s=1 graft is the tuned model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if eligible(n):
                p.add_(0.05 * torch.randn_like(p))
    tuned = tmp_path / "tuned"
    m.save_pretrained(tuned)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tuned)
    r = graft(tiny_model_dir, tuned, task, [1.0], steps=0, examples=2, out=tmp_path / "o", save_model=True,
              select_limit=2)
    assert r["notes"] == []
    assert torch.allclose(_logits(tmp_path / "o" / "model-s1"), _logits(tuned), atol=1e-6)
    assert r["results"][0]["score"]["graft"] == r["results"][0]["score"]["tuned"]


def test_lora_adapter_equals_merged_model(tiny_model_dir, tiny_adapter_dir, task, tmp_path):
    from tunelens.models import resolve_model

    h = resolve_model(tiny_adapter_dir, merge_adapter=True)
    merged = tmp_path / "merged"
    h.model.save_pretrained(merged)
    h.tokenizer.save_pretrained(merged)
    kw = dict(steps=1, examples=4, select_limit=4, seed=1)
    ra = graft(None, tiny_adapter_dir, task, [0.01], out=tmp_path / "a", **kw)
    rm = graft(tiny_model_dir, merged, task, [0.01], out=tmp_path / "m", **kw)
    a, m = load_mask(tmp_path / "a" / "mask-s0.01.safetensors"), load_mask(tmp_path / "m" / "mask-s0.01.safetensors")
    assert set(a) == set(m) and all(torch.equal(a[k], m[k]) for k in a)
    for k in ("score", "ece", "kept", "loss_gamma_base"):
        assert ra["results"][0][k] == pytest.approx(rm["results"][0][k], abs=1e-5), k
    changed = {k for k, v in a.items() if v.any()}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)  # only the adapted weights


def test_optimisation_moves_the_mask_and_lowers_the_loss(tiny_model_dir, tuned_dir, task):
    r = graft(tiny_model_dir, tuned_dir, task, [0.05], steps=3, lr=1e7, examples=4, select_limit=4)
    h = r["results"][0]["history"]
    assert h[2]["loss"] < h[1]["loss"]  # one step on S lowers the relaxed task loss
    assert any(x["kept"] != h[0]["kept"] for x in h[1:])  # the rounded mask moved away from γ_base


def test_cli_writes_graft_json(tiny_model_dir, tuned_dir, task, tmp_path):
    from typer.testing import CliRunner

    from tunelens.cli import app

    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["graft", "--base", str(tiny_model_dir), "--tuned", str(tuned_dir), "--task",
                                 str(task), "--sparsity", "1e-3,1e-2", "--steps", "1", "--examples", "4",
                                 "--select-limit", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "graft.json").read_text())
    assert [x["sparsity"] for x in res["results"]] == [1e-3, 1e-2]
    assert (out / "mask-s0.001.safetensors").is_file() and (out / "mask-s0.01.safetensors").is_file()
    bad = CliRunner().invoke(app, ["graft", "--base", str(tiny_model_dir), "--tuned", str(tuned_dir), "--task",
                                   str(task), "--sparsity", "abc", "--out", str(out)])
    assert bad.exit_code == 2 and "sparsity" in bad.output


def test_minibatch_steps_are_seeded_and_differ_from_full_batch(tiny_model_dir, tuned_dir, task):
    kw = dict(steps=2, lr=1e7, examples=6, select_limit=4, seed=3)
    calls = []
    a = graft(tiny_model_dir, tuned_dir, task, [0.05], batch_size=2, progress=lambda *p: calls.append(p),
              **kw)["results"][0]["history"]
    assert calls == [(1, 2), (2, 2)]
    b = graft(tiny_model_dir, tuned_dir, task, [0.05], batch_size=2, **kw)["results"][0]["history"]
    full = graft(tiny_model_dir, tuned_dir, task, [0.05], batch_size=6, **kw)["results"][0]["history"]
    assert [x["loss"] for x in a[1:]] == [x["loss"] for x in b[1:]]  # same seed, same minibatches
    assert a[1]["loss"] != pytest.approx(full[1]["loss"], abs=1e-7)  # a 2-example batch is not the 6-example pool
