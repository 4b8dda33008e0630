"""The browser's cache of images' codes under load: bounded in entries and in bytes, and a value many requests
ask for at once is made once."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from difflens.browser.run import LRUCache


def nbytes(value: np.ndarray) -> int:
    return value.nbytes


def test_cache_is_bounded_in_entries_and_bytes_dropping_the_least_recently_used():
    cache = LRUCache(entries=3, max_bytes=10**9)
    for key in "abc":
        cache.get(key, lambda: np.zeros(10, np.uint8), nbytes)
    cache.get("a", lambda: pytest.fail("a is cached"), nbytes)  # a is now the most recently used
    cache.get("d", lambda: np.zeros(10, np.uint8), nbytes)
    assert len(cache) == 3 and cache.bytes == 30
    remade = []
    cache.get("b", lambda: remade.append("b") or np.zeros(10, np.uint8), nbytes)
    assert remade == ["b"]  # b was the least recently used: dropped

    small = LRUCache(entries=100, max_bytes=250)
    for i in range(10):
        small.get(i, lambda: np.zeros(100, np.uint8), nbytes)
    assert len(small) == 2 and small.bytes == 200
    small.get("huge", lambda: np.zeros(1000, np.uint8), nbytes)  # beyond the budget alone: kept, the rest dropped
    assert len(small) == 1 and small.bytes == 1000


def test_a_value_asked_for_at_once_by_many_requests_is_made_once():
    cache = LRUCache(entries=8, max_bytes=10**6)
    made, results = [], []

    def make():
        made.append(1)
        time.sleep(0.1)
        return np.arange(4)

    threads = [threading.Thread(target=lambda: results.append(cache.get("k", make, nbytes))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(made) == 1 and len(results) == 8 and all((r == np.arange(4)).all() for r in results)


def test_a_failed_make_is_not_cached_and_is_tried_again():
    cache = LRUCache(entries=8, max_bytes=10**6)

    def fail():
        raise ValueError("no such rows")

    with pytest.raises(ValueError):
        cache.get("k", fail, nbytes)
    assert len(cache) == 0 and cache.get("k", lambda: np.ones(2), nbytes).sum() == 2
