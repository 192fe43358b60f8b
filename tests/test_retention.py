from server.retention import RetentionTracker, locate, retained_chars


def test_retained_chars_counts_surviving_characters_in_order():
    assert retained_chars("return a + b", "return a + b") == 12
    assert retained_chars("return a + b", "return a - b  # fixed") == 11
    assert retained_chars("return a + b", "pass") < 3


def test_locate_picks_nearest_occurrence():
    doc = "x = 1\nx = 1\nx = 1\n"
    assert locate(doc, "x = 1", 7) == 6


def test_region_follows_edits_before_and_inside():
    tr = RetentionTracker(after_s=1e9, after_changes=3)
    doc = "head\nreturn a + b\ntail\n"
    tr.track("c1", "u", doc, "return a + b", 5)
    # insert 4 chars before the region
    tr.on_change("u", 0, 0, 4)
    doc = "####" + doc
    # replace "+" with "-" inside the region
    i = doc.index("+")
    tr.on_change("u", i, i + 1, 1)
    doc = doc[:i] + "-" + doc[i + 1:]
    assert tr.due("u") == []
    tr.on_change("u", len(doc), len(doc), 0)
    (t,) = tr.due("u")
    assert tr.measure(t, doc) == 11
    assert tr.pending() == []


def test_deleted_completion_retains_nothing():
    tr = RetentionTracker(after_s=1e9, after_changes=100)
    doc = "a\nreturn a + b\nz\n"
    tr.track("c1", "u", doc, "return a + b", 2)
    s = doc.index("return")
    tr.on_change("u", s, s + 12, 0)
    doc = doc[:s] + doc[s + 12:]
    (t,) = tr.due("u", saved=True)
    assert tr.measure(t, doc) <= 2
