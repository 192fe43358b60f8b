"""Property-based fuzzing of a real `strop serve` (SmolLM2) with generated LSP traffic: the server
never dies, every request gets exactly one reply, its copy of every document equals a reference
model of the editor's after every edit, and its memory stays bounded. What is generated and checked:
tests/fuzz_lsp_support.py. Bounded for CI (about a minute); `python benchmarks/fuzz_lsp.py` is the
long run (≥ 20,000 messages, results in benchmarks/results/fuzz.json)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz_lsp_support import FuzzSession, log_records, noise

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("STROP_FUZZ_EXAMPLES", "150"))
MAX_STEPS = 60
RSS_GROWTH_LIMIT = 200 * 2**20


@pytest.fixture(scope="module")
def session(smollm_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-repo")
    session = FuzzSession(smollm_gguf, tmp_path_factory.mktemp("fuzz-home"), root)
    yield session
    if session.server.alive():
        session.server.proc.kill()
        session.server.finish()


@settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_traffic_never_breaks_the_server(session, data):
    session.begin()
    for _ in range(data.draw(st.integers(5, MAX_STEPS), label="steps")):
        session.step(data.draw)
    session.settle()
    assert not session.failures, "\n".join(session.failures[:8])


def test_after_the_traffic_the_server_is_whole_quiet_and_exits_cleanly(session):
    stats = session.stats
    assert stats.messages > 500 and stats.text_checks > 100 and stats.edits > 100, stats
    assert stats.crashes == stats.hangs == stats.lost_replies == stats.duplicate_replies == 0, stats
    assert stats.internal_errors == stats.text_mismatches == 0, stats
    assert session.server.alive()
    growth = session.server.rss_bytes() - stats.first_rss_bytes
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.0f} MiB"
    assert session.finish() == 0
    stderr = session.server.stderr
    assert not noise(stderr), "\n".join(noise(stderr)[0])  # the first record whole: its traceback says where
    records = log_records(stderr)
    assert len(records) < 10, f"stderr stays quiet in normal operation: {records[:10]}"
    print(stats.as_dict())
