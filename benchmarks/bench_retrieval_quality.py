"""What repository retrieval is worth: the served completion path with and without BM25 chunks of the
repository, and raw llama-cpp-python with a plain prompt, on the same held-out positions.

    python benchmarks/bench_retrieval_quality.py [--repo GITDIR] [--rev REV] [--model GGUF] [--items 120]

The repository (default: encode/httpx@ae1b9f66, fetched as a git directory) is cloned at `--rev`;
`distill.split` makes its temporal held-out slice (the lines the most recent commits added) and the
training side as of the cutoff commit, which is all the index holds, so no held-out line can reach
a prompt; `--items` of its held-out items are drawn with `--seed`. Each position is scored three
ways under greedy decoding, exact match and edit similarity of the first line:

- `raw`: llama-cpp-python on a plain prompt of at most 1,500 prefix + 500 suffix tokens (FIM
  models) or 2,000 prefix tokens (prefix-only models), no hygiene, one line; also scored as
  `raw_first_nonblank`, the first line after any leading line breaks (a stronger baseline: a
  prefix-only model often starts a next line with a line break, and the first line is then empty);
- `served`: the one completion path (`core.completion.CompletionPath`, what `strop serve` runs) with
  default settings but no repository retrieval;
- `served+retrieval`: the same with the repository index (`[prompt] retrieval_k`).

Paired 95 % bootstrap intervals (distill/gate.py) for served − raw and retrieval − served.
`--reuse RESULT --arms raw` reruns only the named arms and takes the others' per-item rows from an
earlier result on the same sample.
Results: benchmarks/results/retrieval-quality-<repository>-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_REPO = Path("/work/.mirror/encode+httpx/repo")


def raw_scores(model: Path, items, n_threads: int) -> list[dict]:
    """Plain llama-cpp-python: the prompt a user of the library would build, no strop in between."""
    from core.llama_model import load_model
    from core.metrics import edit_similarity
    from core.models import ResolvedModel
    from distill.evaluate import comparable

    loaded = load_model(ResolvedModel(model, model.stem, model.stem, "flag"), n_ctx=4096, n_threads=n_threads,
                        n_gpu_layers=0)
    llm, fmt = loaded.llm, loaded.fim
    out = []
    try:
        for item in items:
            def ids(text: str) -> list[int]:
                return llm.tokenize(text.encode("utf-8", "surrogatepass"), add_bos=False, special=False)

            if fmt is not None:
                special = lambda tok: llm.tokenize(tok.encode(), add_bos=False, special=True)  # noqa: E731
                prompt = (special(fmt.prefix) + ids(item.prefix)[-1500:] + special(fmt.suffix)
                          + ids(item.suffix)[:500] + special(fmt.middle))
            else:
                prompt = ids(item.prefix)[-2000:]
            prompt = llm.tokenize(b"", add_bos=True, special=False) + prompt  # BOS when the model wants one
            text = ""
            llm.reset()
            for n, tok in enumerate(llm.generate(prompt, temp=0.0, top_k=1, reset=True) if prompt else ()):
                if tok in loaded.stop_ids or n >= 48:
                    break
                text += llm.detokenize([tok]).decode("utf-8", "ignore")
                if "\n" in text.lstrip("\n"):
                    break
            pred, target = comparable(item, text)
            # The generous reading: a leading line break skipped, as an integrator might (SmolLM2
            # often starts a next line with one, and its first line is then empty).
            lenient, _ = comparable(item, text.lstrip("\n"))
            out.append({"id": item.id, "exact_match": float(pred == target), "edit_similarity": edit_similarity(pred, target),
                        "prediction": pred, "target": target, "raw_text": text,
                        "first_nonblank": {"id": item.id, "exact_match": float(lenient == target),
                                           "edit_similarity": edit_similarity(lenient, target), "prediction": lenient}})
    finally:
        llm.close()
    return out


def served_scores(model: Path, items, repo: Path, retriever, n_threads: int) -> tuple[list[dict], float]:
    from core.completion import PromptSettings
    from distill.evaluate import EvalConfig, Evaluator

    ev = Evaluator(model, EvalConfig(), prompt=PromptSettings(), repo_name=repo.name, retriever=retriever)
    try:
        t0 = time.perf_counter()
        scores = ev.score(items, 0.0, progress=True, details=True)
        return scores.per_item, time.perf_counter() - t0
    finally:
        ev.close()


def reused_rows(path: Path, items) -> dict[str, list[dict]]:
    """Per-item rows of each arm of an earlier result, in `items`' order (the same sample)."""
    doc = json.loads(path.read_text())
    es = {r["id"]: r for r in doc["per_item_es"]}
    detail = {r["id"]: r for r in doc["per_item"]}
    if [i.id for i in items] != [r["id"] for r in doc["per_item_es"]]:
        raise SystemExit(f"{path} holds another sample than --items/--seed give here")
    out: dict[str, list[dict]] = {}
    for arm in ("raw", "served", "served_retrieval"):
        rows = []
        for item in items:
            d = detail[item.id]
            row = d[arm] if isinstance(d[arm], dict) else {"prediction": d[arm]}
            rows.append({"id": item.id, "edit_similarity": es[item.id][arm],
                         "exact_match": float(row["prediction"] == d["target"]), "target": d["target"], **row})
            if arm == "raw" and "raw_first_nonblank" in es[item.id]:
                rows[-1]["first_nonblank"] = {"id": item.id, "edit_similarity": es[item.id]["raw_first_nonblank"],
                                              "exact_match": float(d["raw_first_nonblank"] == d["target"]),
                                              "prediction": d["raw_first_nonblank"]}
        out[arm] = rows
    return out


def summary(rows: list[dict]) -> dict:
    n = max(1, len(rows))
    return {"n": len(rows), "exact_match": round(sum(r["exact_match"] for r in rows) / n, 4),
            "edit_similarity": round(sum(r["edit_similarity"] for r in rows) / n, 4)}


def paired(base: list[dict], cand: list[dict]) -> dict:
    from distill.gate import decide

    d = decide(base, cand, min_items=1)
    return {"es_gain_points": round(100 * d.es_gain, 2), "es_ci_points": [round(100 * x, 2) for x in d.es_ci],
            "em_gain_points": round(100 * d.em_gain, 2), "em_ci_points": [round(100 * x, 2) for x in d.em_ci],
            "n": d.n_items}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    ap.add_argument("--rev", default="ae1b9f66")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--items", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="picks the held-out items (default %(default)s)")
    ap.add_argument("--arms", default="raw,served,served_retrieval", help="arms to run (the rest come from --reuse)")
    ap.add_argument("--reuse", type=Path, default=None, help="an earlier result on the same --items/--seed")
    ap.add_argument("--out", type=Path, default=None,
                    help="the JSON results (default benchmarks/results/retrieval-quality-<repository>-<model>.json)")
    args = ap.parse_args()
    from core.models import embedded_default
    from core.repo_context import RetrievalSettings, Retriever, offline_index
    from distill.split import SplitConfig, split_repo

    model = args.model or embedded_default()
    work = Path(tempfile.mkdtemp(prefix="strop-retrieval-"))
    dest = work / args.repo.name.replace(".git", "")
    if dest.name == "repo":
        dest = work / args.repo.parent.name.split("+")[-1]
    subprocess.run(["git", "clone", "--quiet", str(args.repo), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "--quiet", "--detach", args.rev], check=True)
    t0 = time.perf_counter()
    split = split_repo(dest, SplitConfig())
    # A seeded sample over all held-out items: the split lists them file by file, so its first N
    # would be a handful of files (on encode/httpx the first 40 were workflow YAML and an HTML template).
    held_out = split.test() + split.validation()
    items = random.Random(args.seed).sample(held_out, min(args.items, len(held_out)))
    index = offline_index(dest, split.train_files)
    build_s = time.perf_counter() - t0
    retriever = Retriever(lambda: index, RetrievalSettings())
    print(f"{len(items)} held-out items; index {index.stats()} built in {build_s:.1f} s", flush=True)

    arms = set(args.arms.split(","))
    earlier = reused_rows(args.reuse, items) if args.reuse is not None else {}
    if arms != {"raw", "served", "served_retrieval"} and not earlier:
        ap.error("--arms without all three needs --reuse")
    if "raw" in arms:
        raw = raw_scores(model, items, args.threads)
    else:
        raw = earlier["raw"]
    raw_nb = [r.get("first_nonblank", r) for r in raw]
    print("raw", summary(raw), "first non-blank line", summary(raw_nb), flush=True)
    served_s = with_s = None
    if "served" in arms:
        served, served_s = served_scores(model, items, dest, None, args.threads)
    else:
        served = earlier["served"]
    print("served", summary(served), flush=True)
    if "served_retrieval" in arms:
        with_r, with_s = served_scores(model, items, dest, retriever, args.threads)
    else:
        with_r = earlier["served_retrieval"]
    print("served+retrieval", summary(with_r), flush=True)
    result = {
        "model": model.name, "repo": f"{args.repo.parent.name.replace('+', '/')}@{args.rev}",
        "split": {"method": split.method, "cutoff_commit": split.cutoff_commit, "items": len(items),
                  "held_out_items": len(held_out), "sample_seed": args.seed,
                  "files": len({i.path for i in items})},
        "machine": {"cpus": 2, "python": platform.python_version()},
        "raw": summary(raw), "served": summary(served), "served_retrieval": summary(with_r),
        "raw_first_nonblank": summary(raw_nb),
        "served_minus_raw": paired(raw, served), "retrieval_minus_served": paired(served, with_r),
        "retrieval_plus_served_minus_raw": paired(raw, with_r),
        "served_minus_raw_first_nonblank": paired(raw_nb, served),
        "retrieval_plus_served_minus_raw_first_nonblank": paired(raw_nb, with_r),
        "per_item_es": [{"id": a["id"], "raw": round(a["edit_similarity"], 4), "raw_first_nonblank": round(n["edit_similarity"], 4),
                         "served": round(b["edit_similarity"], 4), "served_retrieval": round(c["edit_similarity"], 4)}
                        for a, n, b, c in zip(raw, raw_nb, served, with_r)],
        "per_item": [{"id": a["id"], "kind": item.kind, "path": item.path, "target": a["target"],
                      "raw": a["prediction"], "raw_first_nonblank": n["prediction"], "raw_text": a.get("raw_text"),
                      "served": {k: b.get(k) for k in ("prediction", "rules", "stop", "raw_text")},
                      "served_retrieval": {k: c.get(k) for k in ("prediction", "rules", "stop", "raw_text")}}
                     for item, a, n, b, c in zip(items, raw, raw_nb, served, with_r)],
        "seconds": {"index_build": round(build_s, 1), "served": served_s and round(served_s, 1),
                    "served_retrieval": with_s and round(with_s, 1)},
        "arms_run": sorted(arms), "reused_from": str(args.reuse) if args.reuse else None,
        "note": "first-line exact match / edit similarity, greedy; intervals: paired bootstrap 95 % (points)",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    from benchmarks.latency.positions import repo_name_of

    out = args.out or RESULTS / f"retrieval-quality-{repo_name_of(args.repo).rsplit('/', 1)[-1]}-{model.stem}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
