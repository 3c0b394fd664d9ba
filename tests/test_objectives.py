"""Training objectives beyond plain SFT on tiny models: continued pretraining (rows, errors), DPO / IPO through
TRL (every method, what it learns, kill-and-resume identical, torchrun), flip-aware SFT (the distillation keeps
the base's right answers), SFT on preference pairs, and the settings' checks."""

import json
import signal
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from test_tune import (ROOT, TORCHRUN, WORKER, _log_steps, assert_tensors_close, free_port, kill_when, load_st,
                       read_log, run_worker, worker_env, write_task)
from tunelens.cli import app
from tunelens.errors import TunelensError
from tunelens.tune import load_config
from tunelens.tune.examples import IGNORE, build_documents, build_pairs, compose
from tunelens.tune.objectives import OBJECTIVES
from tunelens.tune.trainer import tune

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_pairs(folder, n: int = 24):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"p{i}", "prompt": f"question {i} about the cats on the mat",
             "chosen": f"a kind and helpful answer number {i}", "rejected": f"go away {i}"} for i in range(n)]
    path = folder / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_docs(folder, n: int = 10):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"d{i}", "text": " ".join(["the network carries packets over fibre and radio links"] * (2 + i))}
            for i in range(n)]
    path = folder / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg_for(tiny_model_dir, out, **kw):
    settings = dict(model=str(tiny_model_dir), out=str(out), max_steps=3, batch_size=4, save_steps=50,
                    progress=False, seed=0)
    settings.update(kw)
    return load_config(**settings)


def test_builtin_objectives_are_registered_in_rank_order():
    assert list(OBJECTIVES)[:4] == ["sft", "cpt", "dpo", "ipo"]


# ---------------------------------------------------------------------------------------------- continued pretraining


def test_documents_become_rows_of_at_most_max_length_with_loss_on_every_token_but_the_first(tiny_model_dir, tmp_path):
    from tunelens.models import resolve_model

    tok = resolve_model(str(tiny_model_dir)).tokenizer
    cfg = cfg_for(tiny_model_dir, tmp_path / "o", data=[str(write_docs(tmp_path))], objective="cpt", max_length=32,
                  min_doc_tokens=4)
    rows, stats = build_documents(cfg, tok)
    assert stats.documents == 10 and stats.too_short == 0
    assert all(len(r["input_ids"]) <= 32 for r in rows)
    for r in rows:
        assert r["labels"][0] == IGNORE and r["labels"][1:] == r["input_ids"][1:]
    # every document's tokens (and its end-of-text) are in the rows exactly once, in order, no row spans two
    from tunelens.data import load_items, load_task
    from tunelens.scoring import encode

    docs = [encode(tok, it.fields["text"]) + [tok.eos_token_id] for it in load_items(load_task(cfg.data[0]), "train")]
    total = sum(len(d) for d in docs)
    assert sum(len(r["input_ids"]) for r in rows) == total
    assert sum(1 for r in rows if r["input_ids"][-1] == tok.eos_token_id) == len(docs)


def test_documents_all_under_the_minimum_are_a_clear_error(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path / "o", data=[str(write_docs(tmp_path))], objective="cpt",
                  min_doc_tokens=10_000)
    with pytest.raises(TunelensError, match="shorter than min_doc_tokens=10000"):
        tune(cfg)


def test_cpt_trains_saves_and_records_its_documents(tiny_model_dir, tmp_path):
    out = tmp_path / "cpt"
    cfg = cfg_for(tiny_model_dir, out, data=[str(write_docs(tmp_path))], objective="cpt", max_length=48,
                  learning_rate=1e-2, min_doc_tokens=4)
    tune(cfg)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["config"]["objective"] == "cpt"
    assert run["examples"]["documents"] == 10 and run["examples"]["too_short"] == 0
    assert (out / "model" / "adapter_model.safetensors").is_file()


def test_objectives_refuse_the_wrong_kind_of_task(tiny_model_dir, tmp_path):
    docs, pairs = write_docs(tmp_path / "d"), write_pairs(tmp_path / "p")
    task = write_task(tmp_path / "t")
    with pytest.raises(TunelensError, match="tune on it with --objective cpt"):
        compose(cfg_for(tiny_model_dir, tmp_path / "o", data=[str(docs)]))
    with pytest.raises(TunelensError, match="--objective cpt trains on raw documents"):
        compose(cfg_for(tiny_model_dir, tmp_path / "o", data=[str(task)], objective="cpt"), kind="text")
    with pytest.raises(TunelensError, match="preference objectives train on pairs"):
        compose(cfg_for(tiny_model_dir, tmp_path / "o", data=[str(task)], objective="dpo"), kind="pair")
    # SFT on a preference task learns its chosen replies
    convs, _ = compose(cfg_for(tiny_model_dir, tmp_path / "o", data=[str(pairs)]))
    assert {c[-1]["content"] for c in convs} == {f"a kind and helpful answer number {i}" for i in range(24)}


# ---------------------------------------------------------------------------------------------- DPO / IPO


@pytest.mark.parametrize("method", ["lora", "full", "ia3"])
def test_dpo_trains_every_method_and_saves_a_folder_diff_reads(tiny_model_dir, tmp_path, method):
    out = tmp_path / method
    tune(cfg_for(tiny_model_dir, out, data=[str(write_pairs(tmp_path))], objective="dpo", method=method,
                 learning_rate=1e-2))
    model = out / "model"
    names = {p.name for p in model.iterdir()}
    assert ("model.safetensors" if method == "full" else "adapter_model.safetensors") in names
    assert not (model / "ref").exists(), "no second (reference) adapter is saved beside the tune"
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["examples"]["n"] == 24 and run["train"]["global_step"] == 3
    assert [r["step"] for r in read_log(out)] == [1, 2, 3]
    if method != "ia3":  # diff reads LoRA adapters and whole models
        from tunelens.diff import diff_models

        summary = diff_models(str(tiny_model_dir), str(model), rank=False)
        assert summary  # the tune is read as a change of the base


def test_dpo_raises_the_chosen_replies_over_the_rejected_ones(tiny_model_dir, tmp_path):
    """What DPO is for: on its training pairs, the margin log p(chosen) - log p(rejected) grows relative to the base
    (the implicit reward), measured with the preference suite's own scorer."""
    from tunelens.audit.preference import implicit_reward, pair_scores
    from tunelens.data import load_items, load_task
    from tunelens.models import resolve_model

    pairs = write_pairs(tmp_path)
    out = tmp_path / "dpo"
    tune(cfg_for(tiny_model_dir, out, data=[str(pairs)], objective="dpo", learning_rate=2e-2, max_steps=12,
                 beta=0.5))
    spec = load_task(str(pairs))
    items = load_items(spec, "train")
    base = pair_scores(resolve_model(str(tiny_model_dir)), spec, items)
    tuned = pair_scores(resolve_model(str(out / "model")), spec, items)
    wins = [implicit_reward(b, t) for b, t in zip(base, tuned)]
    assert sum(wins) / len(wins) >= 0.9, wins


def test_ipo_is_dpo_with_its_own_loss(tiny_model_dir, tmp_path):
    out = tmp_path / "ipo"
    tune(cfg_for(tiny_model_dir, out, data=[str(write_pairs(tmp_path))], objective="ipo", learning_rate=1e-2))
    losses = [r["loss"] for r in read_log(out)]
    # IPO's loss at the start (margin 0) is (1 / (2 beta))^2 = 25 with beta 0.1; DPO's is log 2
    assert losses[0] == pytest.approx(25.0, rel=1e-3)


def test_dpo_safety_mix_draws_the_builtin_safety_pairs(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path / "o", data=[str(write_pairs(tmp_path))], objective="dpo", safety_mix=0.25)
    pairs, counts = compose(cfg, kind="pair", extras={"safety": "pair"})
    assert counts["safety-preferences"] == 8 and len(pairs) == 32
    from tunelens.models import resolve_model

    rows, stats = build_pairs(cfg, resolve_model(str(tiny_model_dir)).tokenizer)
    assert len(rows) == 32 and rows[0]["chosen"][0]["role"] == "assistant"


def test_dpo_kill_and_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    base = dict(model=str(tiny_model_dir), data=[str(write_pairs(tmp_path / "data"))], objective="dpo", max_steps=8,
                batch_size=4, save_steps=3, save_total_limit=2, seed=1234, learning_rate=1e-2, progress=False)
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    run_worker({**base, "out": str(out_a)}, tmp_path / "a.log")
    proc = kill_when({**base, "out": str(out_b), "step_sleep": 0.4}, tmp_path / "b.log", out_b, checkpoint=3, step=4)
    assert proc.returncode == -signal.SIGKILL
    assert not (out_b / "model").exists() and 4 <= max(_log_steps(out_b)) < 8
    run_worker({**base, "out": str(out_b), "resume": True}, tmp_path / "b2.log")
    la, lb = read_log(out_a), read_log(out_b)
    assert [r["step"] for r in lb] == list(range(1, 9))
    for ra, rb in zip(la, lb):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4), ra["step"]
    wa = load_st(out_a / "model" / "adapter_model.safetensors")
    wb = load_st(out_b / "model" / "adapter_model.safetensors")
    assert any(wa[k].abs().max() > 0 for k in wa if "lora_B" in k)
    assert_tensors_close(wa, wb, 1e-5, "DPO adapter: uninterrupted vs killed + resumed")


@pytest.mark.parametrize("objective", ["cpt", "dpo"])
def test_torchrun_two_processes_for_each_objective(tiny_model_dir, tmp_path, objective):
    if not TORCHRUN:
        pytest.skip("torchrun is not installed")
    data = write_docs(tmp_path) if objective == "cpt" else write_pairs(tmp_path)
    out = tmp_path / "out"
    spec = dict(model=str(tiny_model_dir), data=[str(data)], out=str(out), objective=objective, max_steps=3,
                batch_size=2, save_steps=2, seed=0, learning_rate=1e-2, progress=False, dump_weights=True,
                max_length=48, min_doc_tokens=4)
    log = tmp_path / "torchrun.log"
    with open(log, "w") as f:
        proc = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                               "--master_port", str(free_port()), str(WORKER), json.dumps(spec)],
                              cwd=ROOT, env=worker_env(), stdout=f, stderr=subprocess.STDOUT, timeout=400)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    r0, r1 = load_st(out / "rank0.safetensors"), load_st(out / "rank1.safetensors")
    assert_tensors_close(r0, r1, 1e-6, f"{objective}: rank 0 vs rank 1 final trainable weights")
    assert json.loads((out / "run.json").read_text())["train"]["global_step"] == 3


# ---------------------------------------------------------------------------------------------- flip-aware SFT


def test_flip_aware_tuning_stays_closer_to_the_base_on_what_it_got_right(tiny_model_dir, tmp_path):
    """Same data, seed and steps; with a strong compat weight the tune's next-token distribution at the reply
    positions of the training examples stays closer to the base's (the distillation term is the only
    difference)."""
    import torch.nn.functional as F

    from tunelens.models import resolve_model
    from tunelens.tune.examples import build_examples

    task = write_task(tmp_path / "t")
    common = dict(data=[str(task)], max_steps=12, learning_rate=5e-3, method="full", compat_alpha=1.0)
    tune(cfg_for(tiny_model_dir, tmp_path / "plain", **common))
    tune(cfg_for(tiny_model_dir, tmp_path / "compat", compat_weight=20.0, **common))
    base = resolve_model(str(tiny_model_dir))
    rows, _ = build_examples(cfg_for(tiny_model_dir, tmp_path / "x", **common), base.tokenizer)

    def kl_to_base(folder):
        model = resolve_model(str(folder)).model
        total = 0.0
        with torch.no_grad():
            for r in rows[:16]:
                ids = torch.tensor([r["input_ids"]])
                at = [i - 1 for i, t in enumerate(r["labels"]) if t != IGNORE]  # positions predicting the reply
                lb = F.log_softmax(base.model(ids).logits[0, at], -1)
                lt = F.log_softmax(model(ids).logits[0, at], -1)
                total += float((lb.exp() * (lb - lt)).sum(-1).mean())
        return total

    plain, compat = kl_to_base(tmp_path / "plain" / "model"), kl_to_base(tmp_path / "compat" / "model")
    assert compat < 0.5 * plain, (compat, plain)
    run = json.loads((tmp_path / "compat" / "run.json").read_text())
    assert run["config"]["compat_weight"] == 20.0


def test_flip_aware_loss_is_ce_plus_weighted_kl_to_the_adapter_off_model(tiny_model_dir, tmp_path):
    """The loss by hand: CE over the reply + λ (α + 1[base right]) KL(p_base ‖ p_tuned) summed over reply tokens
    over the batch's reply tokens, p_base the model with its (random, nonzero) LoRA switched off; one row's reply
    is the base's own greedy continuation, so the base is right there and that row weighs α + 1."""
    import torch.nn.functional as F
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, TrainingArguments

    from tunelens.models import resolve_model
    from tunelens.tune.objectives.sft import FlipAwareTrainer
    from tunelens.tune.trainer import CompletionCollator, completion_loss

    from conftest import save_random_lora

    adapter = save_random_lora(tiny_model_dir, tmp_path / "lora", LoraConfig(r=4, init_lora_weights=False,
                                                                            target_modules="all-linear"), seed=3)
    base = resolve_model(str(tiny_model_dir))
    tok = base.tokenizer
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter, is_trainable=True)
    prompts = [tok.encode(f"hello number {i} the cat") for i in range(3)]
    rows = []
    for i, ids in enumerate(prompts):
        if i == 0:  # the base's greedy continuation: the base is right on this row
            reply = base.model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)[0, len(ids):].tolist()
        else:
            reply = tok.encode(" dog mat")
        rows.append({"input_ids": ids + reply, "labels": [IGNORE] * len(ids) + reply})
    batch = CompletionCollator(tok.pad_token_id)(rows)
    weight, alpha = 2.0, 0.5
    trainer = FlipAwareTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True,
                                                                   report_to="none"),
                               train_dataset=[], weight=weight, alpha=alpha)
    model.eval()  # no dropout: the hand computation below runs the same forward passes
    with torch.no_grad():
        got = float(trainer.compute_loss(model, dict(batch)))
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs)
        with model.disable_adapter():
            ref = model(**inputs).logits
    labels = batch["labels"]
    k = out.logits.shape[1]
    targets = labels[:, labels.shape[1] - k + 1:]
    mask = targets != IGNORE
    n = mask.sum()
    expect = float(completion_loss(out, labels))
    lb, lt = F.log_softmax(ref[:, :-1].float(), -1), F.log_softmax(out.logits[:, :-1].float(), -1)
    kl = (lb.exp() * (lb - lt)).sum(-1)
    right = torch.tensor([bool(((lb[r].argmax(-1) == targets[r]) | ~mask[r]).all()) for r in range(3)])
    assert right.tolist() == [True, False, False]
    expect += weight * float(((alpha + right.float())[:, None] * kl * mask).sum() / n)
    assert got == pytest.approx(expect, rel=1e-5)
    assert float(kl[mask].max()) > 1e-3  # the adapter is not a no-op: the check has something to weigh


def test_flip_aware_base_right_is_the_audits_choice_ranking(tiny_model_dir, tmp_path):
    """On a classification task a training row counts as 'base right' exactly when the base's task scoring (what
    `tunelens eval` and the audit report) ranks its label first — not when the base would greedily write the label
    token for token, which a chat model rarely does, so the term would hold nothing (it did not, on the demo task,
    before this). A tune records the counts in run.json, and with alpha 0 the distillation weighs those rows."""
    from conftest import write_pets_task
    from tunelens.data import load_task
    from tunelens.evaluate import evaluate
    from tunelens.models import resolve_model
    from tunelens.tune.examples import build_examples
    from tunelens.tune.objectives.sft import base_right

    task = write_pets_task(tmp_path, 40)
    cfg = cfg_for(tiny_model_dir, tmp_path / "o", data=[str(task)], compat_weight=1.0, max_steps=4)
    handle = resolve_model(str(tiny_model_dir))
    rows, _ = build_examples(cfg, handle.tokenizer, choices=True)
    assert rows and all("_choice" in r for r in rows)
    assert not any("_choice" in r for r in build_examples(cfg, handle.tokenizer)[0])
    flags = base_right(handle.model, handle.tokenizer, rows)
    ev = evaluate(handle, load_task(str(task)), split=cfg.split, progress=False, summarize=False)
    truth = {rec["prompt"]: int(rec["correct"]) for rec in ev.records}
    assert flags == [truth[r["_choice"][0]] for r in rows]
    assert 0 < sum(flags) < len(flags)  # both kinds present: the check tells them apart
    tune(cfg)
    compat = json.loads((tmp_path / "o" / "run.json").read_text())["compat"]
    assert compat["rows"] == compat["with_choices"] == len(rows)
    assert compat["base_right_by_choice"] == sum(flags)
    assert compat["seen_rows"] == 4 * 4 and 0 < compat["distilled_rows"] < compat["seen_rows"]


def test_flip_aware_full_tuning_uses_a_frozen_copy_of_the_base(tiny_model_dir, tmp_path):
    task = write_task(tmp_path / "t")
    out = tmp_path / "full"
    tune(cfg_for(tiny_model_dir, out, data=[str(task)], method="full", compat_weight=1.0, learning_rate=1e-3))
    assert (out / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["--compat-weight", "-1"], "compat_weight must be a number >= 0"),
    (["--objective", "dpoo"], "did you mean 'dpo'"),
    (["--objective", "dpo", "--replay", "0.1"], "--replay mixes chats"),
    (["--objective", "cpt", "--compat-weight", "1"], "--compat-weight is for --objective sft"),
    (["--beta", "0"], "beta must be a number > 0"),
])
def test_bad_objective_settings_exit_2_with_one_line(tiny_model_dir, tmp_path, args, message):
    r = CliRunner().invoke(app, ["tune", "--model", str(tiny_model_dir), "--data", str(write_pairs(tmp_path)),
                                 "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
