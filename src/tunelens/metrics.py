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


# ----------------------------------------------------------------------------- numbers and units

_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
# spelling -> canonical unit (a plural, an abbreviation or a British/American spelling all become one word)
_UNIT_SPELLINGS = {
    "km": ("kilometre", "kilometres", "kilometer", "kilometers", "km", "kms"),
    "m": ("metre", "metres", "meter", "meters"),
    "cm": ("centimetre", "centimetres", "centimeter", "centimeters", "cm", "cms"),
    "mm": ("millimetre", "millimetres", "millimeter", "millimeters", "mm"),
    "kg": ("kilogram", "kilograms", "kilogramme", "kilogrammes", "kilo", "kilos", "kg", "kgs"),
    "g": ("gram", "grams", "gramme", "grammes"),
    "l": ("litre", "litres", "liter", "liters"),
    "ml": ("millilitre", "millilitres", "milliliter", "milliliters", "ml"),
    "mile": ("mile", "miles", "mi"),
    "yard": ("yard", "yards", "yd", "yds"),
    "foot": ("foot", "feet", "ft"),
    "inch": ("inch", "inches"),
    "pint": ("pint", "pints", "pt", "pts"),
    "gallon": ("gallon", "gallons", "gal"),
    "cup": ("cup", "cups"),
    "ounce": ("ounce", "ounces", "oz"),
    "pound": ("pound", "pounds", "lb", "lbs"),
    "tonne": ("tonne", "tonnes", "ton", "tons"),
    "second": ("second", "seconds", "sec", "secs"),
    "minute": ("minute", "minutes", "min", "mins"),
    "hour": ("hour", "hours", "hr", "hrs"),
    "day": ("day", "days"),
    "week": ("week", "weeks", "wk", "wks"),
    "month": ("month", "months"),
    "year": ("year", "years", "yr", "yrs"),
    "degree": ("degree", "degrees", "deg"),
    "percent": ("percent", "%"),
    "point": ("point", "points"),
    "fahrenheit": ("fahrenheit",),
    "celsius": ("celsius", "centigrade"),
}
_UNITS = {s: c for c, spellings in _UNIT_SPELLINGS.items() for s in spellings}
_PHRASES = [(re.compile(p), r) for p, r in (
    (r"\bper cent\b", "percent"),
    (r"\b(?:miles|mi) (?:per|an|a) hour\b", "mph"),
    (r"\b(?:kilometres|kilometers|km) (?:per|an|a) hour\b|\bkm ?/ ?h\b|\bkph\b", "kmh"),
    (r"°\s*f\b", " degree fahrenheit"),
    (r"°\s*c\b", " degree celsius"),
    (r"°", " degree"),
    (r"%", " percent"),
)]
_DIGIT_GROUPS = re.compile(r"(?<![\d.])(\d{1,3})((?:,\d{3})+)(?![\d,]*\d)")
_GLUED_UNIT = re.compile(r"(\d)([a-z%°]+)\b")
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?!\w)|[^\W_]+(?:[-'’][^\W_]+)*|[^\w\s]+|_+")


def _word_value(t: str) -> tuple[str, int] | None:
    """("unit", 0-19) / ("tens", 20..90 or a hyphenated 21..99) / ("scale", 100/1000/10**6) of a number word."""
    if t in _SMALL:
        return "unit", _SMALL[t]
    if t in _TENS:
        return "tens", _TENS[t]
    parts = t.split("-")
    if len(parts) == 2 and parts[0] in _TENS and parts[1] in _SMALL and 0 < _SMALL[parts[1]] < 10:
        return "tens", _TENS[parts[0]] + _SMALL[parts[1]]
    if t in _SCALES:
        return "scale", _SCALES[t]
    return None


def _number_words(tokens: list[str]) -> list[str]:
    """Runs of number words ("one hundred and fifty", "twenty-one", "a thousand") -> their digits."""
    out, i = [], 0
    while i < len(tokens):
        j, total, cur, seen = i, 0, 0, False
        if tokens[i] == "a" and i + 1 < len(tokens) and tokens[i + 1] in _SCALES:  # "a hundred"
            j, cur = i + 1, 1
        while j < len(tokens):
            kind = _word_value(tokens[j])
            low = cur % 100
            if kind is None:
                if (tokens[j] == "and" and seen and low == 0 and j + 1 < len(tokens)
                        and (_word_value(tokens[j + 1]) or ("",))[0] in ("unit", "tens")):
                    j += 1  # "one hundred and five"
                    continue
                break
            what, v = kind
            if what == "unit" and not (low == 0 or (low >= 20 and low % 10 == 0 and 0 < v < 10)):
                break  # "five six" and "eleven twelve" are two numbers; "twenty one" is one
            if what == "tens" and low != 0:
                break
            if what == "scale":
                if not (seen or cur) or (v == 100 and cur % 1000 >= 100):
                    break
                if v == 100:
                    cur = (cur or 1) * 100
                else:
                    total, cur = total + (cur or 1) * v, 0
            else:
                cur += v
            seen = True
            j += 1
        if seen:
            out.append(str(total + cur))
            i = j
        else:
            out.append(tokens[i])
            i += 1
    return out


def normalize_numbers(text: str) -> str:
    """One spelling for numbers and units, so "twelve" matches "12" and "seven kilometres" matches "7 km".

    Lowercases; "1,500" -> "1500"; number words zero to ninety-nine with hundred, thousand and million
    ("one hundred and fifty" -> "150", "twenty-one" -> "21", "a thousand" -> "1000"); digits glued to a unit
    are split ("7km" -> "7 km"); unit spellings (plural, abbreviation, metre/meter, %, °) -> one canonical word
    ("kilometres" -> "km", "feet" -> "foot", "%" -> "percent", "miles per hour" -> "mph"). Words that are not
    numbers or units are kept; the result is space-joined tokens, ready for normalize_answer.
    """
    s = text.lower()
    s = _DIGIT_GROUPS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    s = _GLUED_UNIT.sub(lambda m: m.group(1) + " " + m.group(2) if m.group(2) in _UNITS or m.group(2) in (
        "kmh", "mph") else m.group(0), s)
    for pattern, repl in _PHRASES:
        s = pattern.sub(repl, s)
    tokens = _number_words(_TOKEN.findall(s))
    return " ".join(_UNITS.get(t, t) for t in tokens)
