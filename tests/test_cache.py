from server.cache import CompletionCache, Shown


def test_typed_through_returns_rest_with_same_id():
    cache = CompletionCache()
    cache.remember("u", Shown("id1", "def f(", ")\n", "a, b", False))
    hit = cache.lookup("u", "def f(a", ")\n")
    assert hit is not None and hit[0].id == "id1" and hit[1] == ", b"


def test_diverging_text_or_changed_suffix_misses():
    cache = CompletionCache()
    cache.remember("u", Shown("id1", "def f(", ")\n", "a, b", False))
    assert cache.lookup("u", "def f(x", ")\n") is None
    assert cache.lookup("u", "def f(a", "]\n") is None
    assert cache.lookup("u", "def f(a, b", ")\n") is None  # fully typed: nothing left to suggest


def test_revisiting_a_position_hits_the_lru():
    cache = CompletionCache(capacity=2)
    cache.remember("u", Shown("id1", "p1", "s", "one", False))
    cache.remember("u", Shown("id2", "p2", "s", "two", False))
    assert cache.lookup("u", "p1", "s")[0].id == "id1"
    cache.remember("u", Shown("id3", "p3", "s", "three", False))
    cache.remember("u", Shown("id4", "p4", "s", "four", False))
    assert cache.lookup("u", "p1", "s") is None  # evicted
