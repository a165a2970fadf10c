import time

from api.status_cache import StatusCache


def test_bodies_expire_after_the_ttl_and_drops_are_immediate():
    cache = StatusCache(ttl=0.05)
    cache.put(1, "a", b"old")
    assert cache.get(1, "a") == b"old" and cache.get(2, "a") is None  # tenants never share entries
    cache.drop(1, "a")
    assert cache.get(1, "a") is None
    cache.put(1, "a", b"new")
    time.sleep(0.06)
    assert cache.get(1, "a") is None


def test_zero_ttl_disables_and_size_is_bounded():
    off = StatusCache(ttl=0)
    off.put(1, "a", b"x")
    assert off.get(1, "a") is None
    small = StatusCache(ttl=60, max_entries=3)
    for i in range(10):
        small.put(1, str(i), b"x")
    assert len(small._items) <= 3 and small.get(1, "9") == b"x"
