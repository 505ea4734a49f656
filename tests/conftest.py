"""Shared fixtures for the cliprt test suite.

* ``rng``: a numpy Generator with a fresh seed per test (from os.urandom), or the seed in
  the environment variable CLIPRT_TEST_SEED. The seed is attached to every failing
  test's report ("cliprt seed" section) so a failure can be replayed with
  ``CLIPRT_TEST_SEED=<seed> python -m pytest ...``.
* ``simd_variant``: parametrized over the SIMD variants available on this CPU; selects
  the variant for the test and restores the previous one afterwards.
* ``gpu`` marker: such tests are skipped (with a reason) unless the build has CUDA and a
  CUDA device is visible.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import cliprt
from cliprt import _core

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SIMD_VARIANTS = list(_core.build_info()["simd_available"])

_SEED_KEY = pytest.StashKey[int]()


def _draw_seed() -> int:
    env = os.environ.get("CLIPRT_TEST_SEED")
    if env:
        return int(env, 0)
    return int.from_bytes(os.urandom(8), "little") >> 1


@pytest.fixture
def rng(request):
    seed = _draw_seed()
    request.node.stash[_SEED_KEY] = seed
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = item.stash.get(_SEED_KEY, None)
    if seed is not None and report.failed:
        report.sections.append(("cliprt seed", f"reproduce with CLIPRT_TEST_SEED={seed}"))


@pytest.fixture(params=SIMD_VARIANTS)
def simd_variant(request):
    previous = _core.simd_variant()
    _core.set_simd_variant(request.param)
    assert _core.simd_variant() == request.param
    try:
        yield request.param
    finally:
        _core.set_simd_variant(previous)


def _gpu_skip_reason():
    info = cliprt.build_info()
    if not info.get("cuda"):
        return "cliprt was built without CUDA"
    count = getattr(_core, "cuda_device_count", None)
    if count is None or count() <= 0:
        return "no CUDA device visible"
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [it for it in items if it.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _gpu_skip_reason()
    if reason:
        for it in gpu_items:
            it.add_marker(pytest.mark.skip(reason=f"gpu test: {reason}"))
