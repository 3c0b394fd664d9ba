"""Hugging Face Hub ids: a local snapshot of only the files tunelens reads, from the cache when offline.

Kept apart because it is the one part of loading that touches the network, and every way it can fail (no such
repo, gated, offline and not cached) must end as one actionable line.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError
from .common import _quiet


def _env_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_error(spec: str) -> ModelError:
    return ModelError(
        f"model '{spec}' is not a local folder or file, and could not be fetched from the Hugging Face Hub "
        f"(offline?). Download it on a machine with access (`huggingface-cli download {spec} --local-dir DIR`) "
        f"and pass DIR."
    )


def _hub_snapshot(spec: str, *, allow_pickle: bool = False, tokenizer_only: bool = False) -> Path:
    """Local snapshot folder of a hub repo: only config, tokenizer, code and (safetensors) weight files.
    Offline (HF_HUB_OFFLINE=1, or the network is unreachable) it is taken from the local cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    patterns = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]
    if not tokenizer_only:
        patterns.append("*.safetensors")
        if allow_pickle:
            patterns += ["*.bin", "*.pt", "*.pth"]
    attempts = [True] if _env_offline() else [False, True]
    for local_only in attempts:
        try:
            with _quiet():
                return Path(snapshot_download(spec, allow_patterns=patterns, local_files_only=local_only))
        except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as e:
            if isinstance(e, GatedRepoError) or "401" in str(e):
                raise ModelError(
                    f"model '{spec}' is not a local folder or file, and the Hugging Face Hub refused access to it "
                    f"(private or gated: log in with `huggingface-cli login`, or download it and pass its folder)"
                ) from None
            raise ModelError(
                f"model '{spec}' is not a local folder or file, "
                f"and the Hugging Face Hub has no repository by that name"
            ) from None
        except Exception:  # network unreachable, not cached, ...: retry from the cache, then give up
            continue
    raise _hub_error(spec)
