"""Learning curves (sample efficiency): tune on growing fractions of the data, fit a saturating law.

Fractions are nested subsets (the same seeded order, cut at each size). Two laws are fitted to
validation score s(n) against training examples n:
    power:  s(n) = a - b * n^(-c)        (saturates at a)
    log:    s(n) = a + b * ln(n)
The law is fitted on all but the largest fraction and its error on the held-out largest one is
reported; predictions (2x and 4x the data, data needed for a target score) come from a refit on all.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np

from ..errors import TunelensError
from ..io import write_json
from .config import CurveSettings as _C  # the defaults: `tunelens curve`'s


def _power(n, a, b, c):
    return a - b * np.power(n, -c)


def _log(n, a, b):
    return a + b * np.log(n)


def fit_law(n: np.ndarray, s: np.ndarray, law: str = "power"):
    """Least-squares parameters of `law`; returns (predict(n), params)."""
    from scipy.optimize import curve_fit

    n, s = np.asarray(n, float), np.asarray(s, float)
    if law == "log" or len(n) < 3:
        b, a = np.polyfit(np.log(n), s, 1)
        return (lambda x: _log(np.asarray(x, float), a, b)), {"law": "log", "a": a, "b": b}
    ceiling = 1.0 if s.max() <= 1.0 else 2 * s.max()  # scores in [0, 1] saturate at or below 1
    try:
        p0 = (min(ceiling, s.max() + 0.05), max(s.max() - s.min(), 1e-3) * n.min() ** 0.5, 0.5)
        with warnings.catch_warnings():  # an exact 3-point fit has no covariance; we don't use it
            warnings.simplefilter("ignore")
            (a, b, c), _ = curve_fit(_power, n, s, p0=p0, bounds=([0, 0, 0], [ceiling, np.inf, 3]), maxfev=20000)
    except (RuntimeError, ValueError):
        return fit_law(n, s, "log")
    return (lambda x: _power(np.asarray(x, float), a, b, c)), {"law": "power", "a": a, "b": b, "c": c}


def examples_for(target: float, params: dict, n_max: float = 1e9) -> float | None:
    """Training examples the fitted law needs to reach `target` (None if it never does)."""
    if params["law"] == "power":
        a, b, c = params["a"], params["b"], params["c"]
        if target >= a or b <= 0 or c <= 0:
            return None
        n = (b / (a - target)) ** (1 / c)
    else:
        if params["b"] <= 0:
            return None
        n = math.exp((target - params["a"]) / params["b"])
    return n if n <= n_max else None


def summarize(sizes: list[int], scores: list[float], target: float | None = None, law: str = "power") -> dict:
    n, s = np.array(sizes, float), np.array(scores, float)
    out: dict = {"points": [{"examples": int(a), "score": float(b)} for a, b in zip(sizes, scores)]}
    if len(n) >= 3:
        pred_held, p_held = fit_law(n[:-1], s[:-1], law)
        out["holdout"] = {"examples": int(n[-1]), "predicted": float(pred_held(n[-1])), "actual": float(s[-1]),
                          "abs_error": float(abs(pred_held(n[-1]) - s[-1])), "fit": _plain(p_held)}
    predict, params = fit_law(n, s, law)
    out["fit"] = _plain(params)
    out["predicted"] = {"2x": float(predict(2 * n[-1])), "4x": float(predict(4 * n[-1]))}
    if target is not None:
        need = examples_for(target, params)
        out["target"] = {"score": target, "examples_needed": None if need is None else float(need)}
    return out


def _plain(params: dict) -> dict:
    return {k: v if isinstance(v, str) else float(v) for k, v in params.items()}


def learning_curve(cfg, fractions: list[float], eval_task: str | None = _C.eval_task, metric: str = _C.metric,
                   target: float | None = _C.target, split: str = _C.split) -> dict:
    """Tune on each fraction of the training set (nested), evaluate on `split`, fit and predict."""
    from ..data import load_task
    from ..evaluate import evaluate
    from ..models import resolve_model
    from .examples import compose
    from .trainer import tune

    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise TunelensError("fractions must be in (0, 1], e.g. 0.1,0.25,0.5,1.0")
    fractions = sorted(set(fractions))
    n_all = len(compose(cfg)[0])
    spec = load_task(eval_task or (cfg.data[0] if cfg.data else cfg.mix[0].rpartition(":")[0]))
    root = Path(cfg.out)
    sizes, scores, runs = [], [], []
    for f in fractions:
        n = max(1, round(f * n_all))
        sub = dataclasses.replace(cfg, max_examples=n, out=str(root / f"frac-{f:g}"), resume=True)
        final = Path(sub.out) / "model"
        if not final.exists():
            tune(sub)
        result = evaluate(resolve_model(str(final)), spec, split=split, progress=cfg.progress)
        if metric not in result.metrics:
            raise TunelensError(f"metric '{metric}' not produced for task '{spec.name}'; "
                                f"available: {', '.join(result.metrics)}")
        sizes.append(n)
        scores.append(result.metrics[metric]["value"])
        runs.append({"fraction": f, "examples": n, "model": str(final), "metrics": result.metrics})
    summary = {"task": spec.name, "metric": metric, "split": split, "runs": runs,
               **summarize(sizes, scores, target)}
    write_json(root / "curve.json", summary)
    return summary
