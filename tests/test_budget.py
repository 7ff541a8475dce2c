"""The sweep-cost arithmetic of inat_tune.tune.budget, checked against Ray's own ASHA."""

from __future__ import annotations

import pytest

from inat_tune.tune.budget import (asha_rungs, constant_liar, expected_epochs_per_trial, startup_trials,
                                   sweep_budget)


@pytest.mark.parametrize("grace, eta, max_t, rungs", [
    (1, 3, 27, [1, 3, 9]),
    (2, 2, 8, [2, 4]),
    (2, 2, 10, [2, 4, 8]),
    (1, 3, 12, [1, 3, 9]),
    (5, 3, 5, []),
])
def test_asha_rungs(grace, eta, max_t, rungs):
    assert asha_rungs(grace, eta, max_t) == rungs


@pytest.mark.parametrize("grace, eta, max_t", [(1, 3, 27), (2, 2, 10), (1, 3, 12), (1, 2, 20), (3, 2.5, 40)])
def test_rungs_equal_rays(grace, eta, max_t):
    """The preview's rungs are the milestones of Ray's ASHA bracket (minus max_t itself)."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = _Bracket(min_t=grace, max_t=max_t, reduction_factor=eta, s=0)
    ray_rungs = sorted(m for m, _ in bracket._rungs if m < max_t)
    assert asha_rungs(grace, eta, max_t) == pytest.approx(ray_rungs)


def test_expected_epochs():
    # rungs 1, 3, 9 of 27, eta 3: 1 + 2/3 + 6/9 + 18/27 = 3 epochs per trial
    assert expected_epochs_per_trial(1, 3, 27) == pytest.approx(3.0)
    b = sweep_budget(30, 27, 1, 3)
    assert (b.worst, b.expected) == (810, pytest.approx(90.0))
    assert "rungs at epochs 1, 3, 9 of max 27; keeps 1/3" in b.describe_rungs()
    plain = sweep_budget(8, 10)
    assert (plain.worst, plain.expected, plain.rungs) == (80, 80.0, ())
    assert "every trial runs 10 epochs" in plain.describe_rungs()


def test_search_policy():
    assert [startup_trials(n) for n in (2, 6, 8, 30, 100)] == [2, 2, 2, 10, 10]
    assert startup_trials(15) == 5
    assert constant_liar(None) and constant_liar(4) and not constant_liar(1)
    with pytest.raises(ValueError):
        asha_rungs(0, 3, 10)
