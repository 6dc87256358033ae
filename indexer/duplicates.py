"""A register's self-check: the registered marks the service would call the same mark.

Registers hold marks filed twice, by mistake or by design (a mark in colour and in one
colour). Each stored vector is searched against the index as if it were a query, its own
entry left out; a pair (a, b) is listed when

- the decision would answer a query of a "exists" with b (its confidence, by the index's
  own rule and threshold, computed on a's neighbours without a itself), or
- b is a rendition of a by the decision's family bound (similarity to a at least
  `family_similarity`: `same_mark` in answers), or
- with `min_score`, their similarity reaches it (near duplicates).

Pairs go to pairs.csv, grouped (connected components: a filed three times is one group),
strongest groups first, and a contact sheet of the strongest groups to sheet.png.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from indexer.index import vectors
from indexer.index.reader import OpenIndex

log = logging.getLogger(__name__)

SHEET_GROUPS = 24
SHEET_MARKS = 6  # per group
THUMB = 96


@dataclass(frozen=True)
class Pair:
    a: int  # catalog ids
    b: int
    score: float
    exists: bool  # a query of a would be answered "exists" with b
    same_mark: bool  # b is a rendition of a (family bound)


@dataclass
class Report:
    pairs: list[Pair]
    groups: list[list[int]]  # ids, strongest group first
    marks: int
    seconds: float


def find(index: OpenIndex, threshold: float | None = None, min_score: float | None = None,
         batch: int = 1024, progress: bool = True) -> Report:
    """Every pair the self-check lists (see the module's docstring)."""
    t0 = time.perf_counter()
    rule = index.manifest.rule
    threshold = index.manifest.threshold if threshold is None else threshold
    searcher = vectors.Searcher(index.index, index.manifest.search_params)
    ids = vectors.stored_ids(index.index)  # catalog ids, in the index's order
    n = len(ids)
    depth = min(n, rule.depth() + 1)  # + the mark itself
    pairs: dict[tuple[int, int], Pair] = {}
    bar = tqdm(total=n, unit="mark", disable=not progress, desc="self-check")
    for start in range(0, n, batch):
        own = ids[start:start + batch]
        # The stored vectors (decoded: approximate for SQ and PQ codes) as the queries.
        x = index.index.reconstruct_batch(np.ascontiguousarray(own))
        scores, found = searcher.search(x, depth)
        # Each row without the mark itself (wherever the search put it), in order.
        others = np.argsort((found == own[:, None]) | (found < 0), axis=1, kind="stable")
        s = np.take_along_axis(scores, others, 1)[:, :depth - 1]
        f = np.take_along_axis(found, others, 1)[:, :depth - 1]
        s = np.where(f >= 0, s, -np.inf)
        to_top = vectors.similarity_to_top(index.index, f) if rule.needs_vectors else \
            np.ones_like(s)
        exists = (rule.scores(s, to_top) >= threshold) & (f[:, 0] >= 0)
        renditions = (s >= rule.family_similarity) if rule.family_similarity else \
            np.zeros(s.shape, bool)
        listed = renditions.copy()
        listed[:, 0] |= exists
        if min_score is not None:
            listed |= s >= min_score
        for r, j in zip(*np.nonzero(listed & (f >= 0))):
            a, b = int(own[r]), int(f[r, j])
            key = (min(a, b), max(a, b))
            old = pairs.get(key)
            pairs[key] = Pair(*key, float(s[r, j]), bool(j == 0 and exists[r])
                              or bool(old and old.exists),
                              bool(renditions[r, j]) or bool(old and old.same_mark))
        bar.update(len(own))
    bar.close()
    listed = sorted(pairs.values(), key=lambda p: -p.score)
    return Report(listed, _groups(listed), n, time.perf_counter() - t0)


def _groups(pairs: list[Pair]) -> list[list[int]]:
    """Connected components of the pairs, the strongest (best pair) first."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for p in pairs:  # strongest first: a group's first pair is its best
        parent[root(p.a)] = root(p.b)
    groups: dict[int, list[int]] = {}
    for p in pairs:
        for i in (p.a, p.b):
            members = groups.setdefault(root(i), [])
            if i not in members:
                members.append(i)
    return list(groups.values())


def write(report: Report, index: OpenIndex, out: str | Path) -> tuple[Path, Path]:
    """pairs.csv and sheet.png in `out`, each written whole (a .tmp, then renamed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    refs = index.catalog.refs(sorted({i for p in report.pairs for i in (p.a, p.b)}))
    group_of = {i: g for g, members in enumerate(report.groups, start=1) for i in members}
    csv_path = out / "pairs.csv"
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "serial_a", "serial_b", "score", "exists", "same_mark",
                    "name_a", "name_b"])
        for p in sorted(report.pairs, key=lambda p: (group_of[p.a], -p.score)):
            w.writerow([group_of[p.a], refs[p.a].serial, refs[p.b].serial, f"{p.score:.4f}",
                        int(p.exists), int(p.same_mark), refs[p.a].name, refs[p.b].name])
    os.replace(tmp, csv_path)
    sheet = out / "sheet.png"
    tmp = sheet.with_suffix(".png.tmp")
    _contact_sheet(report, index, refs).save(tmp, "PNG")
    os.replace(tmp, sheet)
    return csv_path, sheet


def _contact_sheet(report: Report, index: OpenIndex, refs) -> Image.Image:
    groups = report.groups[:SHEET_GROUPS]
    cell = THUMB + 8
    sheet = Image.new("RGB", (cell * SHEET_MARKS + 60, max(1, len(groups)) * (cell + 14) + 8),
                      "white")
    draw = ImageDraw.Draw(sheet)
    serials = [refs[i].serial for g in groups for i in g[:SHEET_MARKS]]
    thumbs = index.catalog.thumbnails(serials)
    for row, members in enumerate(groups):
        y = 8 + row * (cell + 14)
        draw.text((4, y + THUMB // 2), f"#{row + 1}", fill="black")
        for col, mark in enumerate(members[:SHEET_MARKS]):
            x = 52 + col * cell
            serial = refs[mark].serial
            if serial in thumbs:
                im = Image.open(io.BytesIO(thumbs[serial][1])).convert("RGB")
                im.thumbnail((THUMB, THUMB))
                sheet.paste(im, (x + (THUMB - im.width) // 2, y + (THUMB - im.height) // 2))
            draw.text((x, y + THUMB + 1), serial, fill="black")
    return sheet
