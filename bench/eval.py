"""End-to-end evaluation on a LogoBench-style set, through the real CLIs and server.

    python -m bench.eval --data ../shared/logobench --out out/eval

1. `python -m indexer build` over the registry (timed; images/s from its report);
2. `python -m server --port 0` (start-up timed until it prints its address);
3. single-image Search latency, sequential calls;
4. `python -m client batch` over every query (one SearchStream);
5. the two baselines (bench.baselines) on the same queries, in-process;
6. scores: recall@1/@10 of `known` queries overall and per edit, and the existence
   decision at the service's threshold (TPR: exists and right serial first; FPR:
   said exists for an `unknown` query), TPR at FPR = 1% and AUC of the decision score
   (the service's `confidence`; a baseline's top score).
Writes metrics.json, report.md and (with matplotlib, a dev dependency) roc.png in --out,
and prints the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench import baselines, words_eval
from bench.load import latency_ms
from bench.procs import run_build, start_server, stop_server
from indexer.network.detector import iou

log = logging.getLogger(__name__)


def load_queries(path: Path) -> dict[str, dict]:
    """{absolute file path: row} of a queries.csv (file,expected_serial,transform,kind)."""
    with open(path, newline="") as f:
        return {str((path.parent / r["file"]).resolve()): r for r in csv.DictReader(f)}


def auc(top: np.ndarray, known: np.ndarray) -> float:
    """P(a known query's decision score > an unknown one's), ties counted half (Mann-Whitney)."""
    pos, neg = top[known], top[~known]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def roc(top: np.ndarray, correct: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) over all thresholds; TPR counts a known query only if ranked right."""
    thr = np.unique(top)[::-1]
    fpr = np.array([(top[~known] >= t).mean() for t in thr])
    tpr = np.array([((top >= t) & correct)[known].mean() for t in thr])
    return fpr, tpr


def tpr_at_fpr(top: np.ndarray, correct: np.ndarray, known: np.ndarray, fpr: float) -> float:
    """TPR (right serial first and above the threshold) at the threshold admitting `fpr`."""
    neg = np.sort(top[~known])[::-1]
    allowed = int(np.floor(fpr * len(neg)))
    thr = neg[allowed] if allowed < len(neg) else -np.inf  # strictly above the next negative
    return float(((top > thr) & correct)[known].mean())


def score(queries: dict[str, dict], results: list[dict]) -> dict:
    """Scores of one method's answers. Where queries.csv has a `family` column (a register
    of several renditions per mark, e.g. LogoBench families), a known query is answered
    right when its top match is any registered rendition of its mark (`family`), and the
    exact mark's recall is reported beside it; `similar` queries (an unregistered
    rendition of a registered mark) are scored on their own."""
    rows = []
    for r in results:
        q = queries[str(Path(r["file"]).resolve())]
        serials = [m["serial"] for m in r["matches"]]
        expected = q["expected_serial"].split("|")
        rows.append({"transform": q["transform"], "kind": q["kind"], "expected": expected,
                     "family": set((q.get("family") or scene_family(q)
                                    or q["expected_serial"]).split("|")),
                     "serials": serials, "exists": r["exists"], "error": r["error"],
                     # the decision score (the baselines have only their top score)
                     "top": r.get("confidence", r["top_score"])})
    kind = np.array([x["kind"] for x in rows])
    known, unknown, similar = kind == "known", kind == "unknown", kind == "similar"
    first = [x["serials"][0] if x["serials"] else None for x in rows]
    exact = np.array([f == x["expected"][0] for f, x in zip(first, rows)])
    r1 = np.array([f in x["family"] for f, x in zip(first, rows)])  # = exact without families
    r10 = np.array([bool(x["family"] & set(x["serials"][:10])) for x in rows])
    exists = np.array([x["exists"] for x in rows])
    top = np.array([x["top"] for x in rows])
    decided = known | unknown  # the ROC's population: similar queries are neither
    per, per_tpr, per_fpr = defaultdict(list), defaultdict(list), defaultdict(list)
    for x, hit, said in zip(rows, r1, exists):
        if x["kind"] == "known":
            per[x["transform"]].append(hit)
            per_tpr[x["transform"]].append(hit and said)
        elif x["kind"] == "unknown":
            per_fpr[x["transform"]].append(said)
    out = {
        "queries": len(rows), "known": int(known.sum()), "unknown": int(unknown.sum()),
        "errors": sum(x["error"] is not None for x in rows),
        "recall@1": float(r1[known].mean()), "recall@10": float(r10[known].mean()),
        "recall@1_by_transform": {t: float(np.mean(v)) for t, v in sorted(per.items())},
        "tpr": float((exists & r1)[known].mean()), "fpr": float(exists[unknown].mean()),
        "tpr_by_transform": {t: float(np.mean(v)) for t, v in sorted(per_tpr.items())},
        "fpr_by_transform": {t: float(np.mean(v)) for t, v in sorted(per_fpr.items())},
        "tpr@fpr1%": tpr_at_fpr(top[decided], r1[decided], known[decided], 0.01),
        "auc": auc(top[decided], known[decided]),
        "_roc": roc(top[decided], r1[decided], known[decided]),
    }
    if any(len(x["family"]) > 1 for x in rows):
        out["recall@1_exact_mark"] = float(exact[known].mean())
    if similar.any():
        out |= {"similar": int(similar.sum()),
                "similar_recall@1": float(r1[similar].mean()),
                "similar_recall@10": float(r10[similar].mean()),
                "similar_exists_with_sibling": float((exists & r1)[similar].mean())}
    return out


def scene_family(q: dict) -> str:
    """A scene's right answers (LogoBench-scenes): every rendition of every registered mark
    in it, '|'-separated; '' for other sets."""
    return "|".join(f for f in (q.get("box_families") or "").split(";") if f)


def _boxes(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in b.split(",")) for b in text.split(";") if b]


def score_marks(queries: dict[str, dict], results: list[dict]) -> dict:
    """Per mark, on a set whose queries.csv has true boxes (LogoBench-scenes): the share
    of registered marks found (a mark of the answer said to exist with a serial of that
    mark's brand; each answered mark counts for one true mark), the share of those
    whose box overlaps the true one by IoU >= 0.5, `two_marks` scenes with both found,
    and unregistered marks (strangers) answered as registered."""
    found = located = registered = strangers = stranger_yes = 0
    both: list[bool] = []
    for r in results:
        q = queries[str(Path(r["file"]).resolve())]
        boxes = _boxes(q.get("boxes") or "")
        families = (q.get("box_families") or "").split(";")
        marks = [m for m in r.get("marks") or [] if m["exists"]]
        used: set[int] = set()
        hits = 0
        for box, family in zip(boxes, families + [""] * len(boxes)):
            if not family:
                strangers += 1
                stranger_yes += any(iou(m["box"], box) >= 0.5 for m in marks)
                continue
            registered += 1
            fam = set(family.split("|"))
            right = [i for i, m in enumerate(marks) if i not in used
                     and m["matched_serial"] in fam]
            if not right:
                continue
            best = max(right, key=lambda i: iou(marks[i]["box"], box))
            used.add(best)
            found += 1
            hits += 1
            located += iou(marks[best]["box"], box) >= 0.5
        if q["transform"] == "two_marks":
            both.append(hits == 2)
    return {"marks_registered": registered, "marks_found": found / max(1, registered),
            "marks_found_box_iou50": located / max(1, found),
            "two_marks_both_found": float(np.mean(both)) if both else float("nan"),
            "strangers": strangers,
            "strangers_said_registered": stranger_yes / max(1, strangers)}


def _timed_build(data: Path, index: Path) -> dict:
    wall, info, report = run_build(baselines.registry_root(data), data / "registry.csv", index)
    cal = info["calibration"]
    return {"build_wall_s": wall, "build_pipeline_s": report["seconds"],
            "indexed": report["indexed"], "skipped": len(report["skipped"]),
            "build_images_per_s": report["images_per_s"],
            "index_bytes": info["bytes_on_disk"], "threshold": info["threshold"],
            "estimated_tpr": cal.get("estimated_tpr"), "estimated_fpr": cal.get("estimated_fpr")}


def _batch(address: str, queries_csv: Path, out: Path) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    # Exit 1 means some inputs failed (a blank image, say): they are scored as errors.
    done = subprocess.run([sys.executable, "-m", "client", "--server", address, "batch",
                           str(queries_csv), "--out", str(out), "--retrievals-num", "10",
                           "--no-progress"])
    if done.returncode not in (0, 1):
        raise RuntimeError(f"client batch exited {done.returncode}")
    wall = time.perf_counter() - t0
    return [json.loads(l) for l in out.read_text().splitlines()], wall


SERVICE_KEYS = ("indexed", "skipped", "build_images_per_s", "index_bytes", "server_startup_s",
                "search_p50_ms", "search_p99_ms", "scene_p50_ms", "scene_p99_ms",
                "batch_queries_per_s", "threshold",
                "estimated_tpr", "estimated_fpr", "marks_with_words",
                "words_read_brand_found", "text_recall@1", "text_slip_recall@10",
                "text_made_up_exists", "scenes_with_words", "scenes_with_words_recall@1")
SCORE_KEYS = ("recall@1", "recall@1_exact_mark", "recall@10", "tpr", "fpr", "tpr@fpr1%", "auc",
              "similar_recall@1", "similar_recall@10", "similar_exists_with_sibling",
              "marks_found", "marks_found_box_iou50", "two_marks_both_found",
              "strangers_said_registered")
# Only the service decides; the baselines have a ranking and a ROC, no threshold.
DECIDED_KEYS = ("tpr", "fpr", "similar_exists_with_sibling", "marks_found",
                "marks_found_box_iou50", "two_marks_both_found", "strangers_said_registered")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def report_markdown(service: dict, methods: dict[str, dict]) -> str:
    """One table: the service's figures, then every method's scores side by side."""
    names = list(methods)
    lines = ["| service | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(service[k])} |" for k in SERVICE_KEYS if k in service]
    lines += ["", "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in (k for k in SCORE_KEYS if k in methods[names[0]]):
        cells = [_fmt(methods[n][k]) if n == names[0] or k not in DECIDED_KEYS else "–"
                 for n in names]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    transforms = sorted(methods[names[0]]["recall@1_by_transform"])
    tpr = methods[names[0]]["tpr_by_transform"]
    lines += ["", "| recall@1 by edit | " + " | ".join(names) + f" | {names[0]} TPR |",
              "|---" * (len(names) + 2) + "|"]
    lines += [f"| {t} | " + " | ".join(f"{methods[n]['recall@1_by_transform'][t]:.3f}"
                                        for n in names) + f" | {tpr[t]:.3f} |"
              for t in transforms]
    fpr = methods[names[0]].get("fpr_by_transform") or {}
    if len(fpr) > 1:  # several kinds of unregistered query (scenes: a stranger, none)
        lines += ["", f"| FPR by kind | {names[0]} |", "|---|---|"]
        lines += [f"| {t} | {v:.3f} |" for t, v in fpr.items()]
    return "\n".join(lines) + "\n"


def plot_roc(methods: dict[str, dict], service: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, m in methods.items():
        fpr, tpr = m["_roc"]
        ax.plot(fpr, tpr, label=f"{name} (AUC {m['auc']:.3f}, TPR@1% {m['tpr@fpr1%']:.3f})")
    first = next(iter(methods.values()))
    ax.plot([first["fpr"]], [first["tpr"]], "ko",
            label=f"default threshold {service['threshold']:.3f}")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axvline(0.01, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("FPR (unknown marks said to exist)")
    ax.set_ylabel("TPR (known marks: right serial first, above threshold)")
    ax.set_title(f"{title}: existence decision")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(data: Path, out: Path, latency_rounds: int, baselines_too: bool
             ) -> tuple[dict, dict[str, dict]]:
    """One register, end to end: (service figures, {method: scores})."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = _timed_build(data, out / "index")
    proc, address, startup = start_server(out / "index", log_path=out / "server.log")
    try:
        metrics["server_startup_s"] = startup
        registry = sorted((data / "registry").glob("*.png"))[:latency_rounds]
        lat = latency_ms(address, [p.read_bytes() for p in registry], latency_rounds)
        metrics |= {"search_p50_ms": lat["p50_ms"], "search_p99_ms": lat["p99_ms"]}
        queries = load_queries(data / "queries.csv")
        if any(q.get("boxes") for q in queries.values()):  # photographs: time them too
            scenes = [Path(f) for f in sorted(queries)][:latency_rounds]
            lat = latency_ms(address, [p.read_bytes() for p in scenes], latency_rounds)
            metrics |= {"scene_p50_ms": lat["p50_ms"], "scene_p99_ms": lat["p99_ms"]}
        results, wall = _batch(address, data / "queries.csv", out / "results.jsonl")
        metrics["batch_queries_per_s"] = len(results) / wall
        if words_eval.has_wordmarks(data / "registry.csv"):
            metrics |= words_eval.words_read(out / "index", data / "registry.csv")
            metrics |= words_eval.text_search(address, data / "registry.csv")
    finally:
        stop_server(proc)
    methods = {"service": score(queries, results)}
    if any(q.get("boxes") for q in queries.values()):
        methods["service"] |= score_marks(queries, results)
        metrics |= words_eval.scenes_with_words(out / "index", queries, results)
    if baselines_too:
        files = [Path(f) for f in queries]
        methods["raw-pooled"] = score(queries, baselines.raw_pooled(data, files))
        methods["phash"] = score(queries, baselines.phash(data, files))
    written = [out / "report.md", out / "metrics.json"]
    try:
        plot_roc(methods, metrics, out / "roc.png", data.resolve().name)
        written.append(out / "roc.png")
    except ImportError:  # a dev dependency: the figures do not need it
        log.warning("no roc.png: matplotlib is not installed (pip install -r requirements-dev.txt)")
    report = report_markdown(metrics, methods)
    for m in methods.values():
        m.pop("_roc")
    (out / "metrics.json").write_text(json.dumps(metrics | {"methods": methods}, indent=2))
    (out / "report.md").write_text(report)
    print(f"## {data}\n\n{report}")
    print(f"written: {', '.join(map(str, written))}")
    return metrics, methods


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eval", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="one or more folders with registry.csv, registry/, queries.csv, queries/ "
                        "(each scored on its own, into --out/<folder name>)")
    p.add_argument("--out", type=Path, default=Path("out/eval"), help="output folder")
    p.add_argument("--latency-rounds", type=int, default=50, help="sequential Search calls")
    p.add_argument("--no-baselines", action="store_true", help="score the service only")
    args = p.parse_args(argv)
    for data in args.data:
        missing = [n for n in ("registry.csv", "queries.csv") if not (data / n).is_file()]
        if missing:
            p.error(f"{data} has no {' or '.join(missing)}: --data takes LogoBench-style "
                    "folders (../shared/logobench, ../shared/logobench-families, or samples)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    outs = [args.out / d.resolve().name for d in args.data] if len(args.data) > 1 else [args.out]
    for data, out in zip(args.data, outs):
        evaluate(data, out, args.latency_rounds, not args.no_baselines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
