"""The tuning loop holds numpy's BLAS at one thread unless the user chose a count."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from edge_tune.blas import USER_CHOICE, loop_blas_threads


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    np.ones(2) @ np.ones(2)  # numpy's BLAS is loaded
    if not blas_threads():
        pytest.skip("numpy has no BLAS that threadpoolctl can see")
    with threadpool_limits(limits=2, user_api="blas"):
        yield


def test_the_loop_runs_blas_on_one_thread_and_restores_it(monkeypatch, two_blas_threads):
    for name in USER_CHOICE:
        monkeypatch.delenv(name, raising=False)
    before = blas_threads()
    with loop_blas_threads():
        assert set(blas_threads()) == {1}
    assert blas_threads() == before


def test_a_user_choice_is_left_alone(monkeypatch, two_blas_threads):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    before = blas_threads()
    with loop_blas_threads():
        assert blas_threads() == before
