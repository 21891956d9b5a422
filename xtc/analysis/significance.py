"""Is a difference between two methods resolved by their seeds? A permutation test and an
effect size, with no distributional assumption and no SciPy.

With n seeds per method the test is exact: every way of relabelling the pooled runs is
enumerated (252 for 5 vs 5), so the smallest possible two-sided p is 2 / C(2n, n) (0.008
for 5 vs 5, 0.33 for 2 vs 2: two seeds can never resolve anything at the 5% level).

Examples:
    >>> r = permutation_test([0.50, 0.52, 0.51, 0.53, 0.52], [0.45, 0.46, 0.44, 0.47, 0.45])
    >>> round(r["p"], 4), round(r["diff"], 3), r["resolved"]
    (0.0079, 0.062, True)
    >>> permutation_test([0.5, 0.6], [0.4, 0.7])["resolved"]
    False
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Sequence

ALPHA = 0.05
_EXACT_LIMIT = 50_000  # relabellings enumerated exactly; above this, a seeded Monte Carlo


def permutation_test(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA,
                     samples: int = 20_000) -> dict:
    """Two-sided permutation test of mean(a) - mean(b) = 0.

    Returns ``diff`` (mean a - mean b), ``p``, ``d`` (Cohen's d: diff / pooled sample std;
    None when both spreads are 0), ``n_a``, ``n_b``, and ``resolved`` (p < alpha).
    """
    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) < 1 or len(b) < 1:
        raise ValueError("permutation_test needs at least one value on each side")
    pooled, n_a = a + b, len(a)
    observed = abs(_mean(a) - _mean(b))
    tolerance = 1e-12 * max(1.0, observed)

    def extreme(indices) -> bool:
        chosen = set(indices)
        left = [pooled[i] for i in chosen]
        right = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        return abs(_mean(left) - _mean(right)) >= observed - tolerance

    total = math.comb(len(pooled), n_a)
    if total <= _EXACT_LIMIT:
        hits = sum(extreme(c) for c in itertools.combinations(range(len(pooled)), n_a))
        p = hits / total
    else:
        rng = random.Random(0)
        hits = sum(extreme(rng.sample(range(len(pooled)), n_a)) for _ in range(samples))
        p = (hits + 1) / (samples + 1)
    return {"diff": _mean(a) - _mean(b), "p": p, "d": _cohens_d(a, b), "n_a": len(a),
            "n_b": len(b), "resolved": p < alpha}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _cohens_d(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) + len(b) < 3:
        return None
    ss = sum((x - _mean(a)) ** 2 for x in a) + sum((x - _mean(b)) ** 2 for x in b)
    pooled = math.sqrt(ss / (len(a) + len(b) - 2))
    return (_mean(a) - _mean(b)) / pooled if pooled > 0 else None
