"""Repository retrieval end to end: a real `strop serve` indexes the repository in the background,
puts the chunk of another file that the code before the cursor points to into the prompt (the log
shows it), keeps secret files out, and `strop doctor` reports the index."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.lsp_support import inline, open_doc, rows, start, until_status

pytestmark = pytest.mark.slow

PRICING = '''"""Prices."""


def compute_shipping_cost(weight_kg, destination):
    """The shipping cost of a parcel."""
    base = 4.5 if destination == "domestic" else 12.0
    return round(base + 1.25 * weight_kg, 2)
'''
ORDERS = '''from pricing import compute_shipping_cost


def order_total(items, weight_kg, destination):
    subtotal = sum(item.price for item in items)
    shipping = '''


def _repo(tmp_path):
    root = tmp_path / "shop"
    root.mkdir()
    (root / "pricing.py").write_text(PRICING)
    (root / "orders.py").write_text(ORDERS)
    (root / ".env").write_text("SHIPPING_API_KEY=compute_shipping_cost_secret_value_123\n")
    for cmd in (["init", "-q"], ["add", "-A", "-f"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    return root


async def test_served_prompts_carry_the_retrieved_definition(smollm_gguf, tmp_path):
    root = _repo(tmp_path)
    home = tmp_path / "home"
    client = await start(smollm_gguf, home, root)
    try:
        st = await until_status(client, lambda s: getattr(s["index"], "state", None) == "ready")
        assert st["index"].files == 2  # pricing.py and orders.py; never .env
        uri = (root / "orders.py").as_uri()
        open_doc(client, uri, ORDERS)  # not pricing.py: only the index can bring its definition
        await inline(client, uri, 5, len("    shipping = "))
        logged = [r for r in rows(home) if r["path"] == "orders.py" and r["source"] == "model"]
        assert logged, "the completion was not logged"
        snippets = json.loads(logged[-1]["snippets"])
        assert any(s["path"] == "pricing.py" and "def compute_shipping_cost" in s["text"] for s in snippets)
        assert not any(".env" in s["path"] or "secret_value" in s["text"] for s in snippets)
    finally:
        await client.shutdown_session()


def test_doctor_reports_the_index(smollm_gguf, tmp_path):
    root = _repo(tmp_path)
    env = {"STROP_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "strop", "doctor", "--json", "--model", str(smollm_gguf),
                           "--repo", str(root)], capture_output=True, text=True, timeout=600, env=env)
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert checks["index"]["status"] == "ok" and "2 files" in checks["index"]["detail"], checks.get("index")
