"""Model folders that transformers 4.x reads the same as 5.x.

Why: transformers 5 writes a few keys under new names, and 4.x does not fail on them, it quietly does something
else. A 5.x ``config.json`` keeps the RoPE base only in ``rope_parameters: {rope_theta: ...}``; 4.57 ignores that key
and falls back to rope_theta 10000, so a folder tunelens wrote gives different logits and greedy answers in a
4.x process, with no warning. And a 5.x ``tokenizer_config.json`` names ``tokenizer_class: TokenizersBackend``,
a class 4.x lacks, so the tokenizer does not load at all.

``make_portable(folder)`` adds the 4.x spellings beside the 5.x ones, as the inverse of what 5.24 does when it
reads a legacy config (``RotaryEmbeddingConfigMixin.convert_rope_params_to_dict``: ``rope_scaling`` becomes
``rope_parameters``, top-level ``rope_theta`` / ``partial_rotary_factor`` are folded into it):

* ``rope_theta`` (and ``partial_rotary_factor``) at top level, from ``rope_parameters``;
* for a rope type other than ``default``, the 4.x ``rope_scaling`` dict (``rope_parameters`` without those two),
  adjusted where 4.57 computes a value differently (yarn needs ``factor`` spelled out; longrope takes its original
  context length from a top-level ``original_max_position_embeddings`` and then derives ``factor`` from it);
* ``torch_dtype`` beside ``dtype`` (4.56+ reads ``dtype``; older 4.x only ``torch_dtype``);
* ``tokenizer_class: PreTrainedTokenizerFast`` instead of ``TokenizersBackend``: in 5.x the two names are one
  class, and 4.x's ``PreTrainedTokenizerFast`` reads the same ``tokenizer.json``.

5.x prefers ``rope_parameters`` (or rebuilds the very same dict from ``rope_scaling`` + ``rope_theta``), so the added
keys change nothing for it: tests check that 5.24 loads a patched folder bit-identically, and that 4.57 then gives the
same logits and greedy tokens. What cannot be said in 4.x terms (per-layer rope parameters, a rope type or key 4.57
does not know, a longrope whose factor 4.57 would recompute differently) is not guessed: the folder is left as
5.x wrote it and ``make_portable`` returns a one-line note naming the versions that can read it, for the caller to
log as a warning. Writes are atomic (:func:`tunelens.io.write_json`) and a second call changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..io import write_json
from ..progress import log

READABLE_BY = "transformers 4.57+ and 5.x"  # what the cross-version test checks; older 4.x is not tested
NEEDS_5 = "transformers >= 5"

# Keys transformers 4.57 reads in rope_scaling, per rope type (its _validate_*_parameters), beside rope_type.
_ROPE_KEYS_4X = {
    "linear": {"factor"},
    "dynamic": {"factor", "original_max_position_embeddings"},
    "yarn": {"factor", "attention_factor", "beta_fast", "beta_slow", "original_max_position_embeddings", "mscale",
             "mscale_all_dim", "truncate"},
    "longrope": {"short_factor", "long_factor", "attention_factor", "factor", "original_max_position_embeddings"},
    "llama3": {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"},
}
_TOP_LEVEL = ("rope_theta", "partial_rotary_factor")  # 4.x reads these from the config, not from rope_scaling


def make_portable(folder) -> str | None:
    """Add the transformers 4.x spellings to ``folder``'s config.json and tokenizer_config.json (those present).
    Returns None when the folder now reads the same in 4.57+ and 5.x, else a one-line note saying why not and
    which versions can read it."""
    folder = Path(folder)
    problems = []
    config_path = folder / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        patched, problem = _portable_config(config)
        if problem:
            problems.append(problem)
        elif patched != config:
            write_json(config_path, patched)
    tok_path = folder / "tokenizer_config.json"
    if tok_path.is_file():
        tok = json.loads(tok_path.read_text(encoding="utf-8"))
        if tok.get("tokenizer_class") == "TokenizersBackend":
            if (folder / "tokenizer.json").is_file():
                write_json(tok_path, {**tok, "tokenizer_class": "PreTrainedTokenizerFast"})
            else:
                problems.append("its tokenizer class TokenizersBackend has no tokenizer.json to fall back on")
    if not problems:
        return None
    return f"model folder {folder} is readable by {NEEDS_5} only: " + "; ".join(problems)


def warn_unportable(note: str | None) -> None:
    """Log a note of :func:`make_portable` as a warning: the user learns which versions can read the folder."""
    if note:
        log.warning(f"tunelens: {note}")


def _portable_config(config: dict) -> tuple[dict, str | None]:
    """(config with the 4.x keys added, None) or (config unchanged, why it cannot be expressed for 4.x)."""
    out = dict(config)
    if out.get("dtype") is not None and "torch_dtype" not in out:
        out["torch_dtype"] = out["dtype"]
    rope = config.get("rope_parameters")
    if not rope:
        return out, None
    if not isinstance(rope, dict) or any(isinstance(v, dict) for v in rope.values()):
        return config, "its rope_parameters are per layer type, which transformers 4.x spells per model"
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    for key in _TOP_LEVEL:
        if rope.get(key) is not None:
            out[key] = rope[key]
    if rope_type == "default":
        extra = set(rope) - {"rope_type", "type", *_TOP_LEVEL}
        return (config, f"its default rope has keys transformers 4.x does not read: {sorted(extra)}") if extra \
            else (out, None)
    known = _ROPE_KEYS_4X.get(rope_type)
    if known is None:
        return config, f"its rope type '{rope_type}' does not exist in transformers 4.x"
    scaling = {k: v for k, v in rope.items() if k not in _TOP_LEVEL and k != "type"}
    scaling["rope_type"] = rope_type
    extra = set(scaling) - known - {"rope_type"}
    if extra:
        return config, f"its {rope_type} rope has keys transformers 4.x does not read: {sorted(extra)}"
    max_pos = config.get("max_position_embeddings")
    original = scaling.get("original_max_position_embeddings")
    if rope_type == "yarn" and scaling.get("factor") is None:
        # 5.x derives a missing yarn factor from the context lengths; 4.x requires it
        scaling["factor"] = max_pos / original
    if rope_type == "longrope":
        # 4.57 takes the original context length from the top level and then sets factor = max / original;
        # without that key it uses max_position_embeddings and rope_scaling's factor
        factor = scaling.get("factor")
        if factor is None or (original and factor == max_pos / original):
            out["original_max_position_embeddings"] = original
        elif original != max_pos or config.get("original_max_position_embeddings"):
            return config, (f"its longrope factor {factor} differs from max/original context "
                            f"{max_pos}/{original}, which transformers 4.x would use instead")
    out["rope_scaling"] = scaling
    return out, None
