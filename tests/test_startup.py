"""Every command starts fast: importing the CLI (which lists the repair registry in `tunelens repair --help`)
must not load torch or the model libraries; the methods register without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import tunelens

HEAVY = ("torch", "transformers", "peft", "safetensors")
BUILT_IN = ("interpolate", "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "graft", "safelora",
            "safemerge")

PROBE = """
import json, sys
import tunelens.cli
import tunelens.repair
print(json.dumps({"loaded": [m for m in %r if m in sys.modules], "repairs": sorted(tunelens.repair.REPAIRS)}))
""" % (HEAVY,)


def test_cli_import_loads_no_model_libraries():
    src = str(Path(tunelens.__file__).resolve().parent.parent)  # this checkout, not an installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    env.pop("TUNELENS_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["loaded"] == [], f"import tunelens.cli loaded {found['loaded']}"
    assert set(BUILT_IN) <= set(found["repairs"])
