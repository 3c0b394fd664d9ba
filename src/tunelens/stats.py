"""Statistics an audit may look at as often as it likes: anytime-valid confidence sequences for a finite pool,
the decisions read off them, and the fixed-n companions a reader expects beside them.

Why not a bootstrap interval checked after every chunk: an interval valid for one fixed n, checked again and
again with "stop as soon as it excludes 0", makes a false claim far more often than 5% (the simulation in
tests/test_stats.py shows it). A confidence sequence holds for every n at once, so the audit may stop as soon as
the answer is clear and still keep its error rate.

The construction is the hedged betting confidence sequence for sampling without replacement (Waudby-Smith &
Ramdas, "Confidence sequences for sampling without replacement", NeurIPS 2020; the betting form of
"Estimating means of bounded random variables by betting", JRSS-B 2023). Values are mapped to [0, 1]. For each
candidate pool mean m on a grid, two gamblers bet that the next value lies above (+) or below (−) the mean of
the items not yet drawn, which under m is (N·m − S_{t−1}) / (N − t + 1). Their hedged capital
K_t(m) = ½Π(1 + λ⁺_i(X_i − μ_i(m))) + ½Π(1 − λ⁻_i(X_i − μ_i(m))) is a nonnegative martingale when m is the
true pool mean, so by Ville's inequality it ever reaches 1/α with probability ≤ α. The sequence at t is the set
of m whose capital never reached 1/α up to t, intersected with the pool means still possible given the sum drawn
(the remaining items' mean must lie in [0, 1]); it shrinks to the exact pool mean when the pool is exhausted.
Bets are the predictable plug-in λ_t = √(2 log(2/α) / (σ̂²_{t−1} · t · log(1 + t))), capped at c/μ and
c/(1 − μ) so the capital stays positive (c = ½).

What the guarantee assumes: each next item is a uniformly random one of those not yet drawn. So the audit draws
its pool in a seeded uniformly random order (data.order.draw_order), not along the stratified order its limits
use: the theorem covers uniform draws only (a stratified order kept coverage in simulation, 99% over strata with
unequal effects, but that is a measurement, not a guarantee). The pool itself is stratified: the whole split, or
the first `limit` items of its stratified order. The estimand is the pool's mean delta; the fixed-n bootstrap
interval beside it speaks for the population the pool stands for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
CAP = 0.5  # c: bets at most half the way to ruin
GRID = 2001


def grid_for(n_pool: int, extra=(), points: int | None = None) -> np.ndarray:
    """Candidate pool means in [0, 1]: `points` evenly spaced (default: GRID, and at least 2N+1, the resolution
    of a pool mean of paired binary deltas), plus the `extra` points a decision is read at (0, ±margin, the
    draws' edges). A decision reads only its region's points, so the extra points matter more than `points`."""
    g = np.linspace(0.0, 1.0, points or max(GRID, 2 * n_pool + 1))
    return np.unique(np.concatenate([g, np.clip(np.asarray(extra, float).ravel(), 0.0, 1.0)]))


def max_log_capital(x, n_pool: int, grid: np.ndarray, alpha: float = ALPHA, at=None):
    """max_{s≤t} log K_s(m) for each m of `grid`, after the draws `x` (values in [0, 1], in draw order) from a
    pool of `n_pool`. Leading dimensions of `x` (shape (..., t)) are independent runs; the result is
    (..., len(grid)). +inf marks a mean the draws make impossible. `at`: a list of draw counts; then a list of
    such arrays, one after each of those draws (the looks of a simulation)."""
    x = np.asarray(x, dtype=float)
    lead, t_max = x.shape[:-1], x.shape[-1]
    if t_max > n_pool:
        raise ValueError(f"{t_max} draws from a pool of {n_pool}")
    looks = sorted(set(at or [t_max]))
    m = grid.reshape((1,) * len(lead) + (-1,))
    log_plus = np.zeros(lead + (grid.size,))
    log_minus = np.zeros_like(log_plus)
    best = np.zeros_like(log_plus)
    s = np.zeros(lead + (1,))  # sum of draws so far
    sig2 = np.full(lead + (1,), 0.25)
    sq = np.full(lead + (1,), 0.25)  # ¼ + Σ (X_i − μ̂_i)²
    log_stop = math.log(2 / alpha)
    out = []
    for t in range(1, t_max + 1):
        xt = x[..., t - 1 : t]
        mu = (n_pool * m - s) / (n_pool - t + 1)  # mean of the items not yet drawn, if the pool mean is m
        # a mean the draws allow lies in [0, 1]; the tolerance keeps float error at the last draws (N·m − S is
        # exactly 0 or 1 there) from ruling out the true mean
        feasible = (mu >= -1e-9) & (mu <= 1 + 1e-9)
        mu = np.clip(mu, 0.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.sqrt(2 * log_stop / (sig2 * t * math.log(1 + t)))
            lam_p = np.minimum(lam, np.where(mu > 0, CAP / mu, np.inf))
            lam_m = np.minimum(lam, np.where(mu < 1, CAP / (1 - mu), np.inf))
            log_plus += np.log1p(np.where(feasible, lam_p * (xt - mu), 0.0))
            log_minus += np.log1p(np.where(feasible, -lam_m * (xt - mu), 0.0))
        cap = np.logaddexp(log_plus, log_minus) - math.log(2)
        best = np.maximum(best, np.where(feasible, cap, np.inf))
        s = s + xt
        sq = sq + (xt - (0.5 + s) / (t + 1)) ** 2
        sig2 = sq / (t + 1)
        if t in looks:
            # the pool means the drawn sum still allows: the rest of the pool has a mean in [0, 1]
            eps = 1e-9
            out.append(np.where((m < s / n_pool - eps) | (m > (s + n_pool - t) / n_pool + eps), np.inf, best))
    return out if at is not None else out[-1]


def read(best: np.ndarray, grid: np.ndarray, span: tuple[float, float], *, margin: float, threshold: float = 0.0,
         alpha: float = ALPHA) -> dict[str, np.ndarray]:
    """From max log-capitals (..., G) on `grid`: the sequence's low/high on the delta scale and the anytime-valid
    p-values of "delta ≤ threshold" (p_gain), "delta ≥ threshold" (p_drop) and "|delta| ≥ margin"
    (p_equivalent): each 1 / the largest capital reached by the null mean hardest to reject."""
    a, b = span
    delta = a + (b - a) * grid
    kept = best < math.log(1 / alpha)
    with np.errstate(invalid="ignore"):
        low = np.where(kept.any(-1), np.min(np.where(kept, delta, np.inf), -1), np.nan)
        high = np.where(kept.any(-1), np.max(np.where(kept, delta, -np.inf), -1), np.nan)
    eps = 1e-12

    def p(region):
        worst = np.min(np.where(region, best, np.inf), -1)
        return np.minimum(1.0, np.exp(-worst))

    return {"low": low, "high": high, "p_gain": p(delta <= threshold + eps), "p_drop": p(delta >= threshold - eps),
            "p_equivalent": np.maximum(p(delta >= margin - eps), p(delta <= -margin + eps))}


@dataclass
class ConfSeq:
    """A confidence sequence for the mean paired delta (tuned − base) of one metric over a finite pool."""

    n: int  # items drawn
    pool: int
    low: float
    high: float
    estimate: float  # mean delta over the drawn items
    p_gain: float  # anytime-valid p-value of "delta ≤ 0" (small: a rise is shown)
    p_drop: float  # of "delta ≥ 0"
    p_equivalent: float  # of "|delta| ≥ margin" (small: no material change is shown)
    margin: float

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def sequence(deltas, n_pool: int, *, span: tuple[float, float] = (-1.0, 1.0), margin: float, threshold: float = 0.0,
             alpha: float = ALPHA) -> ConfSeq:
    """The confidence sequence of the pool's mean delta after the paired deltas drawn so far (in draw order).

    `span`: the range a single item's delta can take (−1..1 for a difference of two values in [0, 1]); deltas
    outside it are clipped into it. The p-values are valid at any stopping time."""
    d = np.asarray(deltas, dtype=float)
    a, b = span
    if d.size == 0:
        return ConfSeq(0, n_pool, a, b, float("nan"), 1.0, 1.0, 1.0, margin)
    x = np.clip((d - a) / (b - a), 0.0, 1.0)
    to_x = lambda v: (v - a) / (b - a)
    # the edges of the pool means the drawn sum allows are grid points, so a nearly exhausted pool keeps them
    edges = [x.sum() / n_pool, (x.sum() + n_pool - x.size) / n_pool]
    grid = grid_for(n_pool, [to_x(threshold), to_x(-margin), to_x(margin), *edges])
    best = max_log_capital(x, n_pool, grid, alpha)
    if x.size == n_pool:  # the whole pool is drawn: its mean is known, whatever the bets did on the way
        best = np.where(np.isclose(grid, x.mean(), rtol=0, atol=1e-9), 0.0, np.inf)
    elif not (best < math.log(1 / alpha)).any():
        # every mean rejected: an α-rare path (or draws that are not random). Fall back to the means the drawn sum
        # allows, which hold with certainty
        ok = (grid >= edges[0] - 1e-9) & (grid <= edges[1] + 1e-9)
        best = np.where(ok, 0.0, np.inf)
    r = read(best, grid, span, margin=margin, threshold=threshold, alpha=alpha)
    return ConfSeq(int(d.size), n_pool, float(r["low"]), float(r["high"]), float(d.mean()), float(r["p_gain"]),
                   float(r["p_drop"]), float(r["p_equivalent"]), margin)


DECISIONS = ("gain", "cost", "equivalent", "inconclusive")


def decide(cs: ConfSeq, *, higher_is_better: bool, threshold: float = 0.0, alpha: float = ALPHA) -> str:
    """equivalent when the sequence lies inside ±margin (a change too small to matter, even if it is real), gain /
    cost when it excludes the threshold (by the metric's direction), else inconclusive."""
    if cs.n == 0:
        return "inconclusive"
    if cs.p_equivalent <= alpha:
        return "equivalent"
    if cs.p_gain <= alpha:
        return "gain" if higher_is_better else "cost"
    if cs.p_drop <= alpha:
        return "cost" if higher_is_better else "gain"
    return "inconclusive"


def decision_p(cs: ConfSeq, decision: str, higher_is_better: bool) -> float:
    """The anytime-valid p-value behind a decision (for an undecided metric: its smallest one)."""
    if decision == "equivalent":
        return cs.p_equivalent
    if decision in ("gain", "cost"):
        rising = (decision == "gain") == higher_is_better
        return cs.p_gain if rising else cs.p_drop
    return min(cs.p_gain, cs.p_drop, cs.p_equivalent)


def holm(pvalues: list[float], alpha: float = ALPHA) -> tuple[list[float], list[bool]]:
    """Holm's step-down adjustment: (adjusted p-values, rejected) in the input order."""
    k = len(pvalues)
    order = sorted(range(k), key=lambda i: pvalues[i])
    adj = [1.0] * k
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * pvalues[i]))
        adj[i] = running
    return adj, [a <= alpha for a in adj]


def mde(deltas, alpha: float = ALPHA, power: float = 0.8) -> float | None:
    """Smallest mean delta a fixed-n two-sided paired test at this n would detect with `power`:
    (z_{1−α/2} + z_power) · √(mean d²) / √n — for paired binary outcomes √(mean d²) is √(discordant rate)."""
    from scipy.stats import norm

    d = np.asarray(deltas, dtype=float)
    if d.size == 0:
        return None
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    # no changed item in the sample says little of the pool: floor the discordant rate at one item in n
    return float(z * math.sqrt(max(float(np.mean(d**2)), 1 / d.size)) / math.sqrt(d.size))
