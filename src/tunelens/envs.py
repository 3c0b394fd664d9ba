"""Virtual environments that tunelens builds once and keeps under ``tunelens_home()/envs/`` (never in a clone).

``cached_env(name, install)`` returns the python of ``envs/<name>/``: when missing, it is built under a file lock
(``envs/.<name>.lock``) into a temporary folder that is renamed into place, so a killed or concurrent build never
leaves a half environment and concurrent callers build once. ``install(python)`` does the work (pip steps) in the
new environment and raises on failure. Used by the transformers-4.x portability test and the vLLM engine
(``tunelens.engines.vllm_env``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from .progress import log


def envs_dir() -> Path:
    from .models import tunelens_home

    return tunelens_home() / "envs"


def cached_env(name: str, install: Callable[[Path], None], *, python: str | None = None) -> Path:
    """The python of the cached virtual environment ``envs_dir()/name``, built once by ``install(python)``."""
    from .models.gguf import _file_lock

    envs = envs_dir()
    env = envs / name
    exe = env / "bin" / "python"
    envs.mkdir(parents=True, exist_ok=True)
    with _file_lock(envs / f".{name}.lock"):
        if exe.is_file():
            return exe
        for stale in envs.glob(f".{name}.tmp-*"):  # killed builds (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=envs))
        t0 = time.perf_counter()
        log.info(f"tunelens: building the virtual environment {env} (once)")
        try:
            subprocess.run([python or sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True,
                           timeout=300)
            install(tmp / "bin" / "python")
            tmp.rename(env)  # the venv's interpreter finds pyvenv.cfg beside it: it works from the new place
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info(f"tunelens: built {env} in {time.perf_counter() - t0:.0f} s")
    return exe


def pip(python: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """``python -m pip ARGS`` (quiet), its output captured."""
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)
