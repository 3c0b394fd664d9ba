"""Metrics for evaluating language models: classification, extractive QA, generation, calibration, bootstrap CIs.

Everything here is deterministic and pure python/numpy (BLEU delegates to sacrebleu).
Empty inputs raise ValueError; the evaluate layer turns that into a user-facing error.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Sequence

import numpy as np
import sacrebleu


def _nonempty(xs, what: str):
    if len(xs) == 0:
        raise ValueError(f"{what}: got no items; cannot compute a metric on empty input")
    return xs


def _as_refs(refs, what: str) -> list[str]:
    # a bare string is one reference, not a sequence of one-character references
    refs = [refs] if isinstance(refs, str) else list(refs)
    return _nonempty(refs, f"{what} references")


# ----------------------------------------------------------------------------- classification

def accuracy(correct: Sequence[bool | int]) -> float:
    return float(np.mean(np.asarray(_nonempty(correct, "accuracy"), dtype=float)))


def macro_f1(pred: Sequence[str | int], gold: Sequence[str | int], labels: Sequence | None = None) -> float:
    """Unweighted mean of per-label F1. Labels that are neither predicted nor gold are skipped."""
    _nonempty(gold, "macro_f1")
    if len(pred) != len(gold):
        raise ValueError(f"macro_f1: {len(pred)} predictions but {len(gold)} gold labels")
    if labels is None:
        labels = sorted(set(gold) | set(pred), key=str)
    pc, gc = Counter(pred), Counter(gold)
    tp = Counter(g for p, g in zip(pred, gold) if p == g)
    f1s = []
    for lab in labels:
        if pc[lab] == 0 and gc[lab] == 0:
            continue
        precision = tp[lab] / pc[lab] if pc[lab] else 0.0
        recall = tp[lab] / gc[lab] if gc[lab] else 0.0
        f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    if not f1s:
        raise ValueError("macro_f1: none of the given labels occur in predictions or gold")
    return float(np.mean(f1s))


# ----------------------------------------------------------------------------- extractive QA (SQuAD)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(pred: str, refs: Sequence[str]) -> float:
    p = normalize_answer(pred)
    return float(max(p == normalize_answer(r) for r in _as_refs(refs, "exact_match")))


def _f1_tokens(p: list[str], r: list[str]) -> float:
    if not p or not r:
        return float(p == r)  # SQuAD v2: two empty answers agree, one empty scores 0
    same = sum((Counter(p) & Counter(r)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, refs: Sequence[str]) -> float:
    p = normalize_answer(pred).split()
    return max(_f1_tokens(p, normalize_answer(r).split()) for r in _as_refs(refs, "token_f1"))


# ----------------------------------------------------------------------------- generation

def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, refs: Sequence[str]) -> float:
    """ROUGE-L F1 (beta=1) on whitespace tokens of normalize_answer'd text, max over references."""
    p = normalize_answer(pred).split()
    best = 0.0
    for ref in _as_refs(refs, "rouge_l"):
        r = normalize_answer(ref).split()
        if not p or not r:
            best = max(best, float(p == r))
            continue
        lcs = _lcs(p, r)
        if lcs:
            best = max(best, 2 * lcs / (len(p) + len(r)))  # = 2PR/(P+R) with P=lcs/|p|, R=lcs/|r|
    return best


def bleu(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu defaults) in [0, 1]. refs[i] holds the references of preds[i]; counts may differ."""
    _nonempty(preds, "bleu")
    if len(preds) != len(refs):
        raise ValueError(f"bleu: {len(preds)} predictions but {len(refs)} reference lists")
    refs = [_as_refs(r, f"bleu item {i}") for i, r in enumerate(refs)]
    # sacrebleu wants reference *streams* (one list per reference slot); None marks a missing reference
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(max(map(len, refs)))]
    return sacrebleu.corpus_bleu(list(preds), streams).score / 100


def sentence_bleu(pred: str, refs: Sequence[str]) -> float:
    """Sentence BLEU with sacrebleu's defaults for it (exp smoothing, effective order), in [0, 1]."""
    return sacrebleu.sentence_bleu(pred, _as_refs(refs, "sentence_bleu")).score / 100


# ----------------------------------------------------------------------------- calibration

def ece(confidences: Sequence[float], correct: Sequence[bool | int], n_bins: int = 10) -> float:
    """Expected calibration error over equal-width bins (lo, hi] on [0, 1]; the first bin also holds 0."""
    conf = np.asarray(_nonempty(confidences, "ece"), dtype=float)
    corr = np.asarray(correct, dtype=float)
    if conf.shape != corr.shape:
        raise ValueError(f"ece: {len(conf)} confidences but {len(corr)} correctness values")
    if np.any((conf < 0) | (conf > 1)) or np.any(np.isnan(conf)):
        raise ValueError("ece: confidences must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" gives edges[i-1] < c <= edges[i]; clip puts c == 0 into the first bin
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        m = bins == b
        total += m.sum() / len(conf) * abs(corr[m].mean() - conf[m].mean())
    return float(total)


def brier(probs: Sequence[Sequence[float]], answers: Sequence[int]) -> float:
    """Multi-class Brier score: mean over items of sum_c (1[c == answer] - p_c)^2. Range [0, 2]."""
    _nonempty(answers, "brier")
    try:
        p = np.asarray(probs, dtype=float)
    except ValueError as e:
        raise ValueError("brier: every item needs the same number of class probabilities") from e
    a = np.asarray(answers)
    if p.ndim != 2 or len(p) != len(a):
        raise ValueError(f"brier: expected {len(a)} rows of class probabilities, got shape {p.shape}")
    if np.any((a < 0) | (a >= p.shape[1])):
        raise ValueError(f"brier: answers must be class indices in [0, {p.shape[1]})")
    onehot = np.eye(p.shape[1])[a]
    return float(np.mean(np.sum((onehot - p) ** 2, axis=1)))


# ----------------------------------------------------------------------------- bootstrap

def _percentiles(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of stat(values), resampling items with replacement.

    `stat` receives the resampled values array (1-D, same length as values) and returns a float.
    For statistics that need more than one array per item (macro-F1, paired deltas) use bootstrap_ci_paired.
    """
    v = np.asarray(_nonempty(values, "bootstrap_ci"), dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    if stat is np.mean:
        stats = v[idx].mean(axis=1)
    else:
        stats = np.array([stat(v[row]) for row in idx], dtype=float)
    return _percentiles(stats, alpha)


def bootstrap_ci_paired(fn: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, alpha: float = 0.05,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI where fn(idx) computes the statistic on items idx (an int array of length n).

    Resampling indices rather than values keeps items paired, e.g. pred/gold for macro-F1 or
    base/tuned scores on the same items for a delta. Same seed + n gives the same indices as bootstrap_ci.
    """
    if n <= 0:
        raise ValueError("bootstrap_ci_paired: got no items; cannot compute a metric on empty input")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return _percentiles(np.array([fn(row) for row in idx], dtype=float), alpha)


def metric_entry(point: float, lo: float, hi: float) -> dict:
    return {"value": float(point), "ci95": [float(lo), float(hi)]}
