"""Folders tunelens writes read the same in transformers 4.x and 5.x (issue 19, item 5).

Unit tests: ``make_portable`` adds the 4.x keys, changes nothing for 5.24 (bit-identical logits, same tokenizer),
is idempotent, and reports instead of guessing what 4.x cannot express. The integration test loads such folders
in a separate virtual environment with transformers 4.x and compares logits and greedy tokens with 5.x.
"""

from __future__ import annotations

import json

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
