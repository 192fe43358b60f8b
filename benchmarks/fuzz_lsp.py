"""The long fuzz run: generated LSP traffic against one real `strop serve` until at least
`--messages` messages have been sent (tests/fuzz_lsp_support.py says what is generated and
checked; tests/test_fuzz_lsp.py is the same, bounded for CI).

Failures are counted rather than raised, so one run reports all of them: crashes, hangs (requests
without a reply after two minutes), lost and duplicated replies, internal errors, documents whose
server copy differs from the reference model, and the server's peak RSS.

    python benchmarks/fuzz_lsp.py [--messages 20000] [--model PATH.gguf] [--seed N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # `python -m strop` of this tree

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from core.models import embedded_default  # noqa: E402
from tests.fuzz_lsp_support import FuzzSession, log_records, noise  # noqa: E402

MAX_STEPS = 60
BLOCK = 20  # examples per hypothesis run (a run ends its block: the last one overshoots --messages a little)


class ServerDied(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.json")
    args = ap.parse_args()
    model = args.model or embedded_default()
    work = Path(tempfile.mkdtemp(prefix="strop-fuzz-"))
    (work / "repo").mkdir()
    t0 = time.monotonic()
    session = FuzzSession(model, work / "home", work / "repo")
    failures: list[str] = []
    examples = 0

    def run_block(block: int) -> None:
        @seed(args.seed * 1000 + block)
        @settings(max_examples=BLOCK, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def example(data) -> None:
            nonlocal examples
            if not session.server.alive():
                raise ServerDied
            examples += 1
            session.begin()
            for _ in range(data.draw(st.integers(5, MAX_STEPS))):
                session.step(data.draw)
            session.settle()
            failures.extend(session.failures)

        try:
            example()
        except ServerDied:
            pass

    block = 0
    while session.stats.messages < args.messages and session.server.alive():
        run_block(block)
        block += 1
        print(f"{session.stats.messages} messages, {len(failures)} failures, "
              f"{time.monotonic() - t0:.0f} s", flush=True)
    alive = session.server.alive()
    final_rss = session.server.rss_bytes() if alive else 0
    exit_code = session.finish() if alive else session.server.proc.returncode
    stats = session.stats.as_dict()
    stderr = session.server.stderr
    result = {
        "model": Path(model).name,
        "messages_sent": stats["messages"],
        "requests": stats["requests"],
        "notifications": stats["notifications"],
        "garbage_messages": stats["garbage"],
        "examples": examples,
        "document_edits": stats["edits"],
        "document_text_checks": stats["text_checks"],
        "completions_with_items": stats["completions_with_items"],
        "model_calls": stats["model_calls"],
        "crashes": stats["crashes"] + (0 if alive else 1),
        "hangs": stats["hangs"],
        "lost_replies": stats["lost_replies"],
        "duplicate_replies": stats["duplicate_replies"],
        "internal_errors": stats["internal_errors"],
        "text_mismatches": stats["text_mismatches"],
        "error_replies_by_code": stats["error_replies"],
        "cancelled_replies": stats["cancelled"],
        "rss_bytes": {"first": stats["first_rss_bytes"], "max": stats["max_rss_bytes"], "final": final_rss},
        "max_rss_mib": round(stats["max_rss_bytes"] / 2**20, 1),
        "exit_code_after_shutdown_exit": exit_code,
        "stderr_records": len(log_records(stderr)),
        "stderr_noise": [r[0][:200] for r in noise(stderr)][:20],
        "failures": len(failures),
        "first_failures": [f[:400] for f in failures[:20]],
        "duration_s": round(time.monotonic() - t0, 1),
        "seed": args.seed,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if not failures and result["crashes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
