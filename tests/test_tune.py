"""tunelens.tune on tiny models: the loss, every method, mixtures, truncation, bad input, kill + resume, torchrun,
accelerate launch.

Everything runs on the 2-layer tiny Llama of conftest (CPU, a few seconds per test). The kill/resume and torchrun
tests run tests/tune_worker.py in subprocesses; the accelerate test runs the tunelens CLI as a user does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_llama, make_tiny_tokenizer
from tunelens.errors import TunelensError
from tunelens.tune.config import load_config
from tunelens.tune.examples import (
    IGNORE,
    REPLAY_TASK,
    SAFETY_TASK,
    _chats,
    build_examples,
    compose,
    parse_mix,
)
from tunelens.tune.trainer import CompletionCollator, completion_loss, tune

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("tune_worker.py")
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
TORCHRUN = VENV_BIN / "torchrun" if (VENV_BIN / "torchrun").exists() else shutil.which("torchrun")
ACCELERATE = VENV_BIN / "accelerate" if (VENV_BIN / "accelerate").exists() else shutil.which("accelerate")

ANIMALS = ("cat", "dog")


# ---------------------------------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_task(folder: Path, name: str = "t", n: int = 20, labels=ANIMALS, words: int = 1) -> Path:
    """A classification task YAML + jsonl with n rows per label; texts of varied length (`words` scales them)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        for lab in labels:
            filler = " ".join(["the quick brown fox"] * (words * (1 + i % 4)))
            rows.append({"text": f"{filler} and the {lab} sat on the mat {name}{i}", "label": lab})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = folder / f"{name}.yaml"
    spec.write_text(f"name: {name}\ntype: classification\ndata: {name}.jsonl\ntemplate: 'Animal? {{text}}'\n")
    return spec


@pytest.fixture
def task(tmp_path) -> Path:
    return write_task(tmp_path / "data")


def tiny_cfg(tiny_model_dir, task, out, **kw):
    settings = dict(model=str(tiny_model_dir), data=[str(task)], out=str(out), max_steps=4, batch_size=4,
                    save_steps=50, progress=False, seed=0)
    settings.update(kw)
    return load_config(**settings)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_st(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_tensors_close(a: dict, b: dict, atol: float, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: different tensor names"
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, f"{what}: max abs difference {worst:.3g} > {atol}"


def worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_worker(spec: dict, log: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    with open(log, "w") as f:
        proc = subprocess.run([PYTHON, str(WORKER), json.dumps(spec)], cwd=ROOT, env=worker_env(), stdout=f,
                              stderr=subprocess.STDOUT, timeout=timeout)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{log.read_text()[-4000:]}"
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------- 1. the loss


def _batch(tok, task, n=6):
    rows, _ = build_examples(load_config(data=[str(task)]), tok)
    rows = sorted(rows, key=lambda r: r["length"])
    picked = [rows[0], rows[len(rows) // 3], rows[2 * len(rows) // 3], rows[-1], rows[1], rows[-2]][:n]
    batch = CompletionCollator(tok.pad_token_id)(picked)
    lengths = {len(r["input_ids"]) for r in picked}
    assert len(lengths) > 1, "the batch must mix lengths so that left padding is exercised"
    assert batch["logits_to_keep"] < batch["input_ids"].shape[1], "logits_to_keep should skip prompt positions"
    assert (batch["attention_mask"][:, 0] == 0).any() and (batch["attention_mask"][:, -1] == 1).all()
    return batch


@pytest.mark.parametrize("peft", [False, True], ids=["plain", "lora"])
def test_completion_loss_matches_full_logits_hf_loss(task, peft):
    tok = make_tiny_tokenizer()
    model = make_tiny_llama(tok)
    if peft:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(3)
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules="all-linear", init_lora_weights=False))
    model.eval()
    b = _batch(tok, task)
    with torch.no_grad():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], logits_to_keep=b["logits_to_keep"])
        assert out.logits.shape[1] == b["logits_to_keep"]
        ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        got = completion_loss(out, b["labels"])
        # what Trainer passes: the label count over labels[..., 1:]
        n_items = (b["labels"][:, 1:] != IGNORE).sum()
        got_n = completion_loss(out, b["labels"], num_items_in_batch=n_items)
    assert math.isfinite(float(ref)) and float(ref) > 0
    assert abs(float(got) - float(ref)) <= 1e-5, (float(got), float(ref))
    assert abs(float(got_n) - float(ref)) <= 1e-5, (float(got_n), float(ref))


# ---------------------------------------------------------------------------------------------------- 2. methods


@pytest.mark.parametrize("method", ["lora", "full", "prompt-tuning", "ia3"])
def test_each_method_trains_and_saves(tiny_model_dir, task, tmp_path, method):
    from tunelens.models import resolve_model

    out = tmp_path / "out"
    cfg = tiny_cfg(tiny_model_dir, task, out, method=method, num_virtual_tokens=4, save_steps=2)
    final = tune(cfg)
    assert final == out / "model" and final.is_dir()
    names = {p.name for p in final.iterdir()}
    if method == "full":
        assert {"config.json", "model.safetensors"} <= names, names
        assert "adapter_config.json" not in names
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names, names
        assert "model.safetensors" not in names

    handle = resolve_model(str(final))
    assert handle.kind == ("hf_folder" if method == "full" else "peft_adapter")
    with torch.no_grad():
        logits = handle.model(input_ids=torch.tensor([handle.tokenizer.encode("the cat sat")])).logits
    assert torch.isfinite(logits).all()

    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for r in log:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert isinstance(r["learning_rate"], float) and r["learning_rate"] >= 0
        assert r["tokens_per_second"] > 0
    assert any(r["learning_rate"] > 0 for r in log)

    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert run["config"]["method"] == method
    assert {"tunelens", "torch", "transformers", "peft"} <= run["versions"].keys()
    files = {Path(p).resolve(): h for p, h in run["data_files"].items()}
    data_file = task.with_suffix(".jsonl")
    assert files == {task.resolve(): sha256(task), data_file.resolve(): sha256(data_file)}
    assert run["examples"]["n"] == 40 and run["train"]["global_step"] == 4

    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2", "checkpoint-4"]


def test_tokens_per_second_across_epoch_boundary(tiny_model_dir, tmp_path):
    task = write_task(tmp_path / "data", n=10)  # 20 examples, batch 4: 5 steps an epoch
    out = tmp_path / "out"
    tune(tiny_cfg(tiny_model_dir, task, out, max_steps=6))
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert all(r["tokens_per_second"] > 0 for r in log), [(r["step"], r["tokens_per_second"]) for r in log]


def test_lora_training_reduces_loss(tiny_model_dir, task, tmp_path):
    out = tmp_path / "out"
    tune(tiny_cfg(tiny_model_dir, task, out, method="lora", learning_rate=1e-2, max_steps=30, save_steps=100,
                  lora_dropout=0.0))
    losses = [r["loss"] for r in read_log(out)]
    assert len(losses) == 30
    first, last = losses[0], losses[-1]
    # The tiny model starts near ln(vocab) ~ 6.0. Its frozen tied embeddings are small (std 0.02), which bounds the
    # logits LoRA can reach: the loss floors near 5.4. Step-to-step noise is ~0.05, so a 0.3 drop means learning.
    assert last < first - 0.3, f"loss did not fall: first {first:.3f}, last {last:.3f}"
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3


# ---------------------------------------------------------------------------------------------------- 3. mixtures


def test_optimizer_choice_reaches_the_trainer(tiny_model_dir, task, tmp_path):
    """optim=sgd trains with plain SGD: its checkpointed state has no Adam moments."""
    out = tmp_path / "run"
    tune(tiny_cfg(tiny_model_dir, task, out, max_steps=1, save_steps=1, optim="sgd", learning_rate=0.1))
    state = torch.load(next((out / "checkpoints").glob("checkpoint-*")) / "optimizer.pt", weights_only=True)
    group = state["param_groups"][0]
    assert group["initial_lr"] == 0.1 and "momentum" in group and "betas" not in group
    assert not any("exp_avg" in per for per in state["state"].values())
    assert json.loads((out / "run.json").read_text())["config"]["optim"] == "sgd"


@pytest.mark.parametrize("entries, message", [
    (["a.yaml:-0.5"], "negative"),
    (["a.yaml:0", "b.yaml:0.0"], "sum to 0"),
    (["a.yaml"], "TASK:WEIGHT"),
    ([":0.5"], "TASK:WEIGHT"),
    (["a.yaml:lots"], "not a number"),
])
def test_parse_mix_errors(entries, message):
    with pytest.raises(TunelensError, match=message):
        parse_mix(entries)


def test_parse_mix_keeps_colons_in_paths():
    assert parse_mix(["C:/tasks/a.yaml:0.6", "b.yaml:0.4"]) == [("C:/tasks/a.yaml", 0.6), ("b.yaml", 0.4)]


def _user_texts(convs) -> list[str]:
    return [next(m["content"] for m in c if m["role"] == "user") for c in convs]


def test_compose_mixture_ratio(tmp_path):
    a, b = write_task(tmp_path, "a", n=20), write_task(tmp_path, "b", n=20)  # 40 items each
    cfg = load_config(mix=[f"{a}:0.75", f"{b}:0.25"], seed=1)
    convs, counts = compose(cfg)
    assert len(convs) == 80
    sources = Counter(re.search(r"on the mat ([ab])\d+$", u).group(1) for u in _user_texts(convs))
    from_a, from_b = sources["a"], sources["b"]
    assert from_a + from_b == len(convs)
    assert abs(from_a - 60) <= 1 and abs(from_b - 20) <= 1, (from_a, from_b)
    assert counts == {str(a): from_a, str(b): from_b}


@pytest.mark.parametrize("key, builtin", [("safety_mix", SAFETY_TASK), ("replay", REPLAY_TASK)])
def test_compose_builtin_fraction(task, key, builtin):
    convs, counts = compose(load_config(data=[str(task)], **{key: 0.2}))
    pool = {json.dumps(c, sort_keys=True) for c in _chats(builtin, "train")}
    extra = [c for c in convs if json.dumps(c, sort_keys=True) in pool]
    assert len(convs) == 40 + counts[builtin]
    assert counts[builtin] == len(extra) > 0
    assert abs(len(extra) - 0.2 * len(convs)) <= 1, (len(extra), len(convs))
    assert all("sat on the mat" not in u for u in _user_texts(extra))


def test_compose_seeded(tmp_path):
    a, b = write_task(tmp_path, "a", n=10), write_task(tmp_path, "b", n=10)
    kw = dict(mix=[f"{a}:0.6", f"{b}:0.4"], safety_mix=0.1, replay=0.1)
    one, c1 = compose(load_config(seed=7, **kw))
    two, c2 = compose(load_config(seed=7, **kw))
    other, _ = compose(load_config(seed=8, **kw))
    assert one == two and c1 == c2
    assert other != one


# ---------------------------------------------------------------------------------------------------- 4. truncation


@pytest.mark.parametrize("max_length", [50, 3])  # lengths run 41..61
def test_truncation_counts_and_keeps_examples(task, max_length):
    tok = make_tiny_tokenizer()
    full_rows, full_stats = build_examples(load_config(data=[str(task)], max_length=10_000), tok)
    rows, stats = build_examples(load_config(data=[str(task)], max_length=max_length), tok)
    assert full_stats.truncated == 0
    assert len(rows) == len(full_rows) == 40
    too_long = sum(1 for r in full_rows if r["length"] > max_length)
    assert 0 < too_long
    assert max_length < 10 or too_long < len(rows), "some examples should fit"
    assert stats.truncated == too_long
    for r, full in zip(rows, full_rows):
        assert len(r["input_ids"]) == len(r["labels"]) == r["length"] <= max_length
        completion = [t for t in r["labels"] if t != IGNORE]
        full_completion = [t for t in full["labels"] if t != IGNORE]
        assert completion, "truncation must keep completion tokens"
        assert r["labels"][0] == IGNORE, "at least one prompt token is kept"
        # completion is cut from the right only when it does not fit on its own
        assert completion == full_completion[: max_length - 1]
        # the kept tokens are the tail of the prompt followed by the head of the completion
        n_prompt = len(r["labels"]) - len(completion)
        full_prompt = full["input_ids"][: len(full["input_ids"]) - len(full_completion)]
        assert r["input_ids"][:n_prompt] == full_prompt[-n_prompt:]


def test_truncated_examples_train(tiny_model_dir, task, tmp_path):
    out = tmp_path / "out"
    tune(tiny_cfg(tiny_model_dir, task, out, max_length=45, max_steps=2))
    run = json.loads((out / "run.json").read_text())
    assert run["examples"]["n"] == 40 and run["examples"]["truncated"] > 0
    assert run["status"] == "finished"


# ---------------------------------------------------------------------------------------------------- 5. bad input


def test_empty_dataset_is_an_error(tiny_model_dir, tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    spec = tmp_path / "e.yaml"
    spec.write_text("name: e\ntype: classification\ndata: e.jsonl\n")
    with pytest.raises(TunelensError, match="no items"):
        tune(tiny_cfg(tiny_model_dir, spec, tmp_path / "out"))
    assert not (tmp_path / "out" / "model").exists()


def test_no_usable_examples_is_an_error(task):
    tok = make_tiny_tokenizer()  # a template that renders no assistant text: every completion is empty
    tok.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' %}<|im_start|>{{ m['role'] }}\n"
                         "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}")
    with pytest.raises(TunelensError, match="no usable training examples"):
        build_examples(load_config(data=[str(task)]), tok)


def test_out_folder_guards(tiny_model_dir, task, tmp_path):
    out = tmp_path / "out"
    tune(tiny_cfg(tiny_model_dir, task, out, max_steps=2))
    before = (out / "run.json").read_text()

    with pytest.raises(TunelensError, match="different tuning run.*--overwrite"):
        tune(tiny_cfg(tiny_model_dir, task, out, max_steps=2, lora_r=4))
    with pytest.raises(TunelensError, match="finished run.*--overwrite"):
        tune(tiny_cfg(tiny_model_dir, task, out, max_steps=2))
    assert (out / "run.json").read_text() == before, "a refused run must not touch the folder"

    tune(tiny_cfg(tiny_model_dir, task, out, max_steps=3, lora_r=4, overwrite=True))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["config"]["lora_r"] == 4
    assert [r["step"] for r in read_log(out)] == [1, 2, 3], "overwrite must start a fresh log"


def test_rerun_of_unfinished_run_without_resume(tiny_model_dir, task, tmp_path):
    out = tmp_path / "out"
    tune(tiny_cfg(tiny_model_dir, task, out, max_steps=3, save_steps=2))
    shutil.rmtree(out / "model")  # as if killed after its last step
    try:
        tune(tiny_cfg(tiny_model_dir, task, out, max_steps=3, save_steps=2))
    except TunelensError as e:  # refusing is fine too, if it says how to go on
        assert "--resume" in str(e)
        return
    assert [r["step"] for r in read_log(out)] == [1, 2, 3], "a fresh start must not append to the old log"


def test_unknown_config_key_suggests_closest(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text("method: lora\nlora_rank: 8\ndata: [t.yaml]\n")
    with pytest.raises(TunelensError, match=r"unknown setting 'lora_rank'.*did you mean 'lora_r'") as e:
        load_config(path)
    assert str(path) in str(e.value)
    with pytest.raises(TunelensError, match=r"'learning_rat'.*'learning_rate'"):
        load_config(data=["t.yaml"], learning_rat=1e-3)
    with pytest.raises(TunelensError, match=r"did you mean 'ia3'"):
        load_config(data=["t.yaml"], method="ia4")
    with pytest.raises(TunelensError, match=r"unknown optimizer 'sgdd'; did you mean 'sgd'"):
        load_config(data=["t.yaml"], optim="sgdd")
    path.write_text("method: lora\nlora_r: 8\ndata: [t.yaml]\n")
    assert load_config(path, lora_alpha=4).lora_r == 8


@pytest.mark.parametrize("key, value, expected", [
    ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
    ("batch_size", True, "batch_size must be an integer >= 1, got true (a boolean)"),
    ("batch_size", 8.0, "batch_size must be an integer >= 1, got 8.0"),
    ("learning_rate", -1.0, "learning_rate must be a number > 0, got -1.0"),
    ("lora_r", 0, "lora_r must be an integer >= 1, got 0"),
    ("max_steps", -3, "max_steps must be -1 (train by epochs) or an integer >= 1, got -3"),
    ("max_steps", 0, "max_steps must be -1 (train by epochs) or an integer >= 1, got 0"),
    ("max_steps", "two", "max_steps must be -1 (train by epochs) or an integer >= 1, got 'two' (a string)"),
    ("max_examples", -2, "max_examples must be an integer >= 1, got -2"),
    ("grad_accum", 0, "grad_accum must be an integer >= 1"),
    ("epochs", 0, "epochs must be a number > 0, got 0"),
    ("epochs", float("nan"), "epochs must be a number > 0, got nan"),
    ("save_steps", 0, "save_steps must be an integer >= 1"),
    ("max_length", 0, "max_length must be an integer >= 1"),
    ("lora_alpha", 0, "lora_alpha must be a number > 0"),
    ("lora_dropout", 1.0, "lora_dropout must be a number in [0, 1), got 1.0"),
    ("num_virtual_tokens", 0, "num_virtual_tokens must be an integer >= 1"),
    ("warmup_ratio", -0.1, "warmup_ratio must be a number in [0, 1)"),
    ("weight_decay", -0.1, "weight_decay must be a number >= 0"),
    ("save_total_limit", 0, "save_total_limit must be an integer >= 1"),
    ("logging_steps", 0, "logging_steps must be an integer >= 1"),
    ("replay", "x", "replay must be a number in [0, 1), got 'x' (a string)"),
    ("seed", -1, "seed must be an integer >= 0"),
    ("packing", "yes", "packing must be true or false, got 'yes' (a string)"),
    ("data", 5, "data must be a list of strings"),
    ("lr_scheduler", "cosin", "unknown lr_scheduler 'cosin'; did you mean 'cosine'?"),
])
def test_bad_setting_values_name_the_key_value_and_range(key, value, expected):
    """A value that would fail deep inside training, or quietly do something else (max_steps -3 trained a whole
    epoch, max_examples -2 sliced the set from the end), is one line naming the setting, the range and the value."""
    with pytest.raises(TunelensError) as e:
        load_config(**{"data": ["t.yaml"], key: value})
    assert str(e.value).startswith(expected) and e.value.exit_code == 2


def test_bad_values_in_the_config_file_name_file_and_line(tmp_path):
    """From a file, the error says where: the file and the key's line; a flag that overrides the key is not
    blamed on the file, and a YAML syntax error names the line too."""
    path = tmp_path / "tune.yaml"
    path.write_text("data: [t.yaml]\n\nbatch_size: 0\nlora_r: 4\n")
    with pytest.raises(TunelensError, match=rf"^{re.escape(str(path))}:3: batch_size must be an integer >= 1, got 0$"):
        load_config(path)
    with pytest.raises(TunelensError, match=r"^lora_r must be an integer >= 1, got 0$"):
        load_config(path, batch_size=2, lora_r=0)
    path.write_text("data: [t.yaml]\nmax_steps: [1\nbatch_size: 2\n")
    with pytest.raises(TunelensError, match=rf"^{re.escape(str(path))}:3: invalid YAML: "):
        load_config(path)


# ---------------------------------------------------------------------------------------------------- 6. kill + resume


def kill_when(spec: dict, log: Path, out: Path, checkpoint: int, step: int, timeout: float = 240):
    """Start the worker on `spec` and SIGKILL it once checkpoint-`checkpoint` is in place and step `step` is
    logged; fails the test if it ends or stalls first. Returns the killed process."""
    with open(log, "w") as f:
        proc = subprocess.Popen([PYTHON, str(WORKER), json.dumps(spec)], cwd=ROOT, env=worker_env(), stdout=f,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not ((out / "checkpoints" / f"checkpoint-{checkpoint}").is_dir()
                   and max(_log_steps(out), default=0) >= step):
            if proc.poll() is not None:
                pytest.fail(f"the run ended ({proc.returncode}) before it could be killed:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the run did not reach checkpoint-{checkpoint} in time")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


def _log_steps(out: Path) -> list[int]:
    try:
        text = (out / "train_log.jsonl").read_text()
    except FileNotFoundError:
        return []
    steps = []
    for line in text.splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):  # a line being written
            pass
    return steps


def test_kill_and_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    task = write_task(tmp_path / "data")  # 40 examples, batch 4: 10 steps an epoch, so 12 steps cross an epoch
    base = dict(model=str(tiny_model_dir), data=[str(task)], max_steps=12, batch_size=4, save_steps=3,
                save_total_limit=2, seed=1234, learning_rate=5e-3, progress=False)  # lora_dropout 0.05: RNG matters
    out_a, out_b = tmp_path / "a", tmp_path / "b"

    run_worker({**base, "out": str(out_a)}, tmp_path / "a.log")

    # b: slow steps, killed once checkpoint-6 is in place and step 7 is logged (so the log runs past the checkpoint)
    proc = kill_when({**base, "out": str(out_b), "step_sleep": 0.3}, tmp_path / "b.log", out_b, checkpoint=6, step=7)
    assert proc.returncode == -signal.SIGKILL
    assert not (out_b / "model").exists(), "killed before finishing"
    killed_steps = _log_steps(out_b)
    assert 7 <= max(killed_steps) < 12

    # nothing half-written is visible: every checkpoint folder is complete, staging folders are hidden
    ckpts = sorted((out_b / "checkpoints").iterdir())
    visible = [p for p in ckpts if not p.name.startswith(".")]
    assert visible and all(p.name.startswith("checkpoint-") for p in visible)
    assert "checkpoint-6" in {p.name for p in visible}
    for ck in visible:
        names = {p.name for p in ck.iterdir()}
        need = {"trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_config.json",
                "adapter_model.safetensors"}
        assert need <= names, f"{ck.name} is incomplete: missing {sorted(need - names)}"
        state = json.loads((ck / "trainer_state.json").read_text())
        assert state["global_step"] == int(ck.name.split("-")[1])
        load_st(ck / "adapter_model.safetensors")
    for p in out_b.iterdir():
        assert p.name.startswith(".") or p.name in {"checkpoints", "run.json", "train_log.jsonl"}, p.name
    run = json.loads((out_b / "run.json").read_text())
    assert run["status"] == "running"

    run_worker({**base, "out": str(out_b), "resume": True}, tmp_path / "b2.log")

    log_a, log_b_rows = read_log(out_a), read_log(out_b)
    assert [r["step"] for r in log_a] == list(range(1, 13))
    assert [r["step"] for r in log_b_rows] == list(range(1, 13)), "one line per step, no duplicates after resume"
    for ra, rb in zip(log_a, log_b_rows):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4), f"step {ra['step']}: {ra['loss']} vs {rb['loss']}"
        assert rb["learning_rate"] == pytest.approx(ra["learning_rate"], rel=1e-6, abs=1e-12)
    assert json.loads((out_b / "run.json").read_text())["status"] == "finished"
    assert json.loads((out_b / "run.json").read_text())["train"]["global_step"] == 12

    wa = load_st(out_a / "model" / "adapter_model.safetensors")
    wb = load_st(out_b / "model" / "adapter_model.safetensors")
    assert any("lora_B" in k and wa[k].abs().max() > 0 for k in wa), "lora_B starts at 0: training must move it"
    assert_tensors_close(wa, wb, 1e-5, "final adapter: uninterrupted vs killed + resumed")


# ---------------------------------------------------------------------------------------------------- 7. torchrun


@pytest.fixture(scope="module")
def torchrun_run(tiny_model_dir, tmp_path_factory):
    if not TORCHRUN:
        pytest.skip("torchrun is not installed")
    tmp = tmp_path_factory.mktemp("torchrun")
    task = write_task(tmp / "data")
    out = tmp / "out"
    spec = dict(model=str(tiny_model_dir), data=[str(task)], out=str(out), max_steps=4, batch_size=2, save_steps=2,
                seed=0, learning_rate=1e-2, progress=False, dump_weights=True)
    log = tmp / "torchrun.log"
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                               "--master_port", str(free_port()), str(WORKER), json.dumps(spec)],
                              cwd=ROOT, env=worker_env(), stdout=f, stderr=subprocess.STDOUT, timeout=400)
    return dict(out=out, log=log, returncode=proc.returncode, seconds=time.monotonic() - t0, spec=spec)


def test_torchrun_two_processes_stay_in_sync(torchrun_run):
    out, text = torchrun_run["out"], torchrun_run["log"].read_text()
    assert torchrun_run["returncode"] == 0, text[-4000:]
    assert "WORKER_DONE rank=0" in text and "WORKER_DONE rank=1" in text
    assert (out / "rank0.safetensors").is_file() and (out / "rank1.safetensors").is_file()
    r0, r1 = load_st(out / "rank0.safetensors"), load_st(out / "rank1.safetensors")
    assert r0 and any("lora_" in k for k in r0)
    assert_tensors_close(r0, r1, 1e-6, "rank 0 vs rank 1 final trainable weights")
    i0, i1 = load_st(out / "rank0-init.safetensors"), load_st(out / "rank1-init.safetensors")
    assert_tensors_close(i0, i1, 0.0, "rank 0 vs rank 1 initial trainable weights")
    assert any(not torch.equal(r0[k], i0[k]) for k in r0), "training did not change the adapter"
    # the saved adapter is rank 0's weights
    saved = load_st(out / "model" / "adapter_model.safetensors")
    assert len(saved) == len(r0)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["train"]["global_step"] == 4
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4], "only rank 0 logs"


def test_torchrun_checkpoints_hold_every_rank(torchrun_run):
    out = torchrun_run["out"]
    assert torchrun_run["returncode"] == 0
    for ck in (out / "checkpoints").glob("checkpoint-*"):
        names = {p.name for p in ck.iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "trainer_state.json"} <= names, names
    assert not [p.name for p in out.iterdir() if p.name.startswith(".staging")]


# ---------------------------------------------------------------------------------------------------- 8. accelerate launch


@pytest.fixture(scope="module")
def accelerate_run(torchrun_run, tmp_path_factory):
    """The documented command, `accelerate launch --config_file examples/accelerate/multi_cpu.yaml -m tunelens
    tune ...`, with the torchrun run's settings and data file: both are 2 processes under torch.distributed.run,
    so the saved adapters should agree."""
    if not ACCELERATE:
        pytest.skip("accelerate's launcher is not installed")
    spec = torchrun_run["spec"]
    out = tmp_path_factory.mktemp("accelerate") / "out"
    log = out.parent / "accelerate.log"
    cmd = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "examples" / "accelerate" / "multi_cpu.yaml"),
           "-m", "tunelens", "tune", "--model", spec["model"], "--data", spec["data"][0], "--out", str(out),
           "--max-steps", str(spec["max_steps"]), "--batch-size", str(spec["batch_size"]),
           "--save-steps", str(spec["save_steps"]), "--seed", str(spec["seed"]), "--lr", str(spec["learning_rate"]),
           "--no-progress"]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=worker_env(), stdout=f, stderr=subprocess.STDOUT, timeout=400)
    return dict(out=out, log=log, returncode=proc.returncode, cmd=cmd)


def test_accelerate_multi_cpu_matches_torchrun(accelerate_run, torchrun_run):
    out, text = accelerate_run["out"], accelerate_run["log"].read_text()
    assert accelerate_run["returncode"] == 0, text[-4000:]
    assert torchrun_run["returncode"] == 0, torchrun_run["log"].read_text()[-4000:]
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert [ck.name for ck in ckpts] == ["checkpoint-2", "checkpoint-4"]
    for ck in ckpts:  # two processes trained: each saved its RNG state
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in ck.iterdir()}, ck
    saved = load_st(out / "model" / "adapter_model.safetensors")
    reference = load_st(torchrun_run["out"] / "model" / "adapter_model.safetensors")
    assert_tensors_close(saved, reference, 1e-6, "accelerate launch vs torchrun saved adapter")
    assert any("lora_B" in k and saved[k].abs().max() > 0 for k in saved), "lora_B starts at 0: training must move it"
    names = {p.name for p in (out / "model").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names, names
    assert "training_args.bin" not in names, "the model folder holds the model and tokenizer only"
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["train"]["global_step"] == 4
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4], "only rank 0 logs"


def test_accelerate_output_is_read_by_diff_and_repair(accelerate_run, tiny_model_dir, tmp_path):
    from tunelens.diff import diff_models
    from tunelens.models import resolve_model
    from tunelens.repair import repair

    assert accelerate_run["returncode"] == 0, accelerate_run["log"].read_text()[-4000:]
    final = accelerate_run["out"] / "model"
    result = diff_models(str(tiny_model_dir), str(final), out=tmp_path / "diff")
    assert result["tensors"] and result["summary"]["delta_fro"] > 0
    assert (tmp_path / "diff" / "diff.json").is_file()
    repaired = repair(str(tiny_model_dir), str(final), "interpolate", tmp_path / "repair", progress=False, alpha=0.5)
    handle = resolve_model(str(repaired.out))
    with torch.no_grad():
        logits = handle.model(input_ids=torch.tensor([handle.tokenizer.encode("the cat sat")])).logits
    assert torch.isfinite(logits).all()


def test_resume_passes_over_a_damaged_checkpoint_and_names_it(tiny_model_dir, task, tmp_path, capsys):
    """A damaged newest checkpoint (here: garbage in optimizer.pt) used to end --resume in 60 lines of
    traceback. It is named and passed over for the one before (resuming is exact, so the result is the same
    run); when every checkpoint is damaged, one line says so. Nothing is unpickled to find out."""
    out = tmp_path / "out"
    tune(tiny_cfg(tiny_model_dir, task, out, max_steps=4, save_steps=2, save_total_limit=3))
    shutil.rmtree(out / "model")  # as if killed after its last checkpoint
    (out / "checkpoints" / "checkpoint-4" / "optimizer.pt").write_bytes(b"garbage")
    tune(tiny_cfg(tiny_model_dir, task, out, max_steps=4, save_steps=2, save_total_limit=3, resume=True))
    err = capsys.readouterr().err
    assert "checkpoint-4 is damaged (optimizer.pt is not a torch archive)" in err and "resuming from checkpoint-2" in err
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4] and (out / "model").is_dir()
    shutil.rmtree(out / "model")
    for c in (out / "checkpoints").iterdir():
        (c / "scheduler.pt").write_bytes(b"")
    with pytest.raises(TunelensError, match=r"cannot resume: .*checkpoint-4 is damaged .*checkpoint-2 is damaged"):
        tune(tiny_cfg(tiny_model_dir, task, out, max_steps=4, save_steps=2, save_total_limit=3, resume=True))
