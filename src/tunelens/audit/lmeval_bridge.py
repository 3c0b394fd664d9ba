"""lm-evaluation-harness bridge: run an lm-eval multiple-choice task for both models with logged
samples, and hand its per-sample log-likelihoods to the audit as an ordinary choice task, so the
task, compatibility and calibration suites compare base and tuned on it item by item.
"""

from __future__ import annotations

import math
import time

from ..data import TaskSpec
from ..errors import TunelensError
from ..evaluate import EvalResult, choice_metrics
from .core import AuditContext


def _records(samples: list[dict]) -> list[dict]:
    out = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        logps = [float(r[0]) for r in s["filtered_resps"]]
        target = s["target"]
        args = s.get("arguments") or []  # one (context, continuation) pair per choice
        m = max(logps)
        w = [math.exp(lp - m) for lp in logps]
        p_choices = [x / sum(w) for x in w]
        pred = max(range(len(logps)), key=logps.__getitem__)
        answer = _answer_index(target[0] if isinstance(target, list) else target, [str(a[1]) for a in args])
        out.append({"id": f"doc-{s['doc_id']}", "source": "lm-eval", "prompt": str(args[0][0]) if args else "",
                    "choices": [str(a[1]) for a in args] or [str(i) for i in range(len(logps))],
                    "answer": answer, "pred": pred, "correct": pred == answer, "logprob": logps,
                    "token_logprobs": [], "p_vocab": [math.exp(lp) for lp in logps], "p_choices": p_choices,
                    "confidence": p_choices[pred]})
    return out


def _answer_index(target, choices: list[str]) -> int:
    if isinstance(target, int) or (isinstance(target, str) and target.strip().isdigit()):
        return int(target)
    stripped = [c.strip() for c in choices]
    if str(target).strip() in stripped:
        return stripped.index(str(target).strip())
    raise TunelensError(f"cannot map lm-eval target {target!r} to one of the choices")


def require_lm_eval() -> None:
    """lm-evaluation-harness is the optional extra `lmeval`: without it, one line saying how to get it."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise TunelensError("--lm-eval needs the optional extra 'lmeval' (lm-evaluation-harness), which is not "
                            "installed: pip install 'tunelens[lmeval]'") from None


def run_lm_eval(handle, task: str, include_path: str | None = None, limit: int | None = None,
                batch_size: int = 16) -> list[dict]:
    """Per-sample choice records of `handle` on lm-eval `task` (a multiple_choice task)."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=handle.model, tokenizer=handle.tokenizer, batch_size=batch_size, device="cpu")
    res = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=include_path),
                          limit=limit, bootstrap_iters=0, log_samples=True, verbosity="ERROR")
    if res is None or task not in res.get("samples", {}):
        raise TunelensError(f"lm-eval task '{task}' produced no samples")
    samples = res["samples"][task]
    if not samples or len(samples[0]["filtered_resps"]) < 2:
        raise TunelensError(f"lm-eval task '{task}' is not a multiple-choice task; only those can be bridged")
    return _records(samples)


def add_lm_eval_task(ctx: AuditContext, task: str, include_path: str | None = None) -> TaskSpec:
    """Evaluate both models on the lm-eval task and register the results as a task of the audit."""
    spec = TaskSpec(name=f"lm-eval:{task}", type="multiple_choice", data=f"lm-eval:{task}")
    results = {}
    for role, h in ctx.models():
        t0 = time.perf_counter()
        records = run_lm_eval(h, task, include_path, ctx.limit, ctx.batch_size)
        results[role] = EvalResult(records, choice_metrics(records, "multiple_choice", ctx.n_boot, ctx.seed),
                                   {"model": {"name": h.name}, "task": {"name": spec.name},
                                    "timing": {"seconds": time.perf_counter() - t0}})
    ids_b = [r["id"] for r in results["base"].records]
    if ids_b != [r["id"] for r in results["tuned"].records]:
        raise TunelensError(f"lm-eval task '{task}' gave different samples for the two models")
    ctx.cache[("bridged", spec.name)] = results  # eval_both serves these (lm-eval chose the items)
    ctx.tasks.append(spec)
    return spec
