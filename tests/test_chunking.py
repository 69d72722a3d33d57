"""chunking.chunk_shape: bounded by the array and the budget; both strategies on hand-worked examples."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptbench.spec.chunking import STRATEGIES, chunk_shape, padded_elements

# Worked by hand from the docstring. halve: halve the largest chunk dimension (the
# first of equals), rounding up, until the chunk fits.
HALVE_EXAMPLES = [
    # tiny's embedding: 2000 -> 1000 -> 500 -> 250 -> 125; 125 * 128 = 16000 <= 16384
    ((2000, 128), 16384, [125, 128]),
    # tiny's MLP: 344 -> 172 -> 86; 86 * 128 = 11008
    ((344, 128), 16384, [86, 128]),
    # exactly the budget: untouched
    ((128, 128), 16384, [128, 128]),
    # [7,5]=35 -> [4,5]=20 -> [4,3]=12 -> [2,3]=6 -> [2,2]=4
    ((7, 5), 4, [2, 2]),
    # a tie halves the first axis: [6,6] -> [3,6] -> [3,3]
    ((6, 6), 9, [3, 3]),
    # rounding up: 1001 -> 501 -> 251
    ((1001,), 300, [251]),
    # 100 -> 50 -> 25 -> 13 -> 7
    ((100,), 7, [7]),
    # LLaMA-2-7B q_proj at the 1 MB setting, the largest axis (first of equals) each time:
    # [4096,4096] -> [2048,4096] -> [2048,2048] -> [1024,2048] -> [1024,1024] -> [512,1024] -> [512,512]
    ((4096, 4096), 262144, [512, 512]),
]

# divisor: shrink the largest dimension to the next smaller divisor of the array's dimension.
DIVISOR_EXAMPLES = [
    # divisors of 2000: ... 125, 200, 250, 400, 500, 1000, 2000; 125 * 128 = 16000
    ((2000, 128), 16384, [125, 128]),
    # divisors of 344: 1, 2, 4, 8, 43, 86, 172, 344
    ((344, 128), 16384, [86, 128]),
    # [12,10] -> [6,10] -> [6,5] -> [4,5] = 20
    ((12, 10), 20, [4, 5]),
    # divisors of 100 below 25: 20, 10, 5
    ((100,), 7, [5]),
    # a prime has only 1 below itself
    ((2003, 128), 16384, [1, 128]),
]


@pytest.mark.parametrize("shape, budget, expected", HALVE_EXAMPLES)
def test_halve_matches_hand_worked_examples(shape, budget, expected):
    assert chunk_shape(shape, budget, "halve") == expected


@pytest.mark.parametrize("shape, budget, expected", DIVISOR_EXAMPLES)
def test_divisor_matches_hand_worked_examples(shape, budget, expected):
    assert chunk_shape(shape, budget, "divisor") == expected


def test_halve_is_the_default():
    assert chunk_shape((7, 5), 4) == chunk_shape((7, 5), 4, "halve") == [2, 2]
    assert chunk_shape((12, 10), 20) != chunk_shape((12, 10), 20, "divisor")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_scalar_is_one_chunk(strategy):
    assert chunk_shape((), 1, strategy) == []
    assert chunk_shape((), 10**6, strategy) == []
    assert padded_elements((), []) == 1


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("shape", [(1,), (5,), (300,), (2000, 128), (3, 5, 7), (4, 1, 9, 2)])
def test_budget_larger_than_array_gives_the_whole_array(strategy, shape):
    total = math.prod(shape)
    assert chunk_shape(shape, total, strategy) == list(shape)
    assert chunk_shape(shape, total * 10 + 7, strategy) == list(shape)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("budget", [0, -5, 1])
def test_budget_below_one_still_gives_one_element(strategy, budget):
    assert chunk_shape((9, 4), budget, strategy) == [1, 1]


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown chunk strategy"):
        chunk_shape((4, 4), 4, "quarter")


def test_padded_elements_counts_full_edge_chunks():
    # 37 rows in chunks of 10 -> 4 chunk rows (40); 11 columns in chunks of 6 -> 2 (12)
    assert padded_elements((37, 11), (10, 6)) == 40 * 12
    assert padded_elements((40, 12), (10, 6)) == 40 * 12


shapes = st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=4)
budgets = st.integers(min_value=-3, max_value=2**22)


@settings(max_examples=300, deadline=None)
@given(shape=shapes, budget=budgets, strategy=st.sampled_from(STRATEGIES))
def test_chunk_fits_array_and_budget(shape, budget, strategy):
    chunk = chunk_shape(shape, budget, strategy)
    assert len(chunk) == len(shape)
    assert all(isinstance(c, int) and 1 <= c <= d for c, d in zip(chunk, shape))
    assert math.prod(chunk) <= max(budget, 1)
    if math.prod(shape) <= max(budget, 1):
        assert chunk == shape
    if strategy == "divisor":
        assert all(d % c == 0 for c, d in zip(chunk, shape))
        assert padded_elements(shape, chunk) == math.prod(shape)  # nothing padded
    else:
        assert padded_elements(shape, chunk) >= math.prod(shape)


@settings(max_examples=200, deadline=None)
@given(shape=shapes, budget=st.integers(min_value=1, max_value=2**20))
def test_halve_stops_at_the_first_fit(shape, budget):
    """The step before the last did not fit and the last one at most halved it: more than budget/2 remains."""
    chunk = chunk_shape(shape, budget, "halve")
    if chunk != list(shape):
        assert math.prod(chunk) * 2 > budget


@settings(max_examples=200, deadline=None)
@given(shape=shapes, budget=budgets, strategy=st.sampled_from(STRATEGIES))
def test_chunk_shape_is_deterministic_and_does_not_touch_input(shape, budget, strategy):
    before = list(shape)
    assert chunk_shape(tuple(shape), budget, strategy) == chunk_shape(shape, budget, strategy)
    assert shape == before
