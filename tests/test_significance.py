"""The permutation test against hand-computed cases."""

import math

import pytest

from xtc.analysis.significance import permutation_test


def test_fully_separated_five_vs_five_is_the_smallest_p():
    r = permutation_test([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert r["p"] == pytest.approx(2 / math.comb(10, 5)) and r["resolved"]
    assert r["diff"] == -5 and r["d"] == pytest.approx(-5 / math.sqrt(2.5))


def test_two_seeds_can_never_resolve_a_difference():
    r = permutation_test([0.0, 0.1], [10.0, 10.1])
    assert r["p"] == pytest.approx(2 / 6) and not r["resolved"]


def test_identical_groups_have_p_one():
    r = permutation_test([0.3, 0.5, 0.4], [0.5, 0.3, 0.4])
    assert r["p"] == 1.0 and r["diff"] == pytest.approx(0.0) and not r["resolved"]


def test_hand_enumerated_case():
    # a = [1, 3], b = [2, 6]: |diff| = 2; the 6 relabellings give |diff| 3, 2, 1, 1, 2, 3
    r = permutation_test([1, 3], [2, 6])
    assert r["p"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        permutation_test([], [1.0])
