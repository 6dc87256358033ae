"""The words of marks, scored (make eval, on a register whose `name`s mark wordmark
renditions, as LogoBench-families' "brand (original-wordmark)"):

- words read: the share of wordmark renditions whose brand is found among the words the
  build read in them: the brand's letters and digits within one slip in five letters of
  a stretch of the read words run together (rapidfuzz's partial_ratio >= 80; brand names
  are slugs, "threejs" for "three.js");
- text-only search through the server, over brands with a wordmark rendition: the brand
  as the query, recall@1 (any rendition of the brand); with one letter changed or two
  swapped, recall@10; and made-up words (indexer.words.made_up_word, another seed than
  the build's calibration) said to exist.
"""
from __future__ import annotations

import csv
import random
import re
from pathlib import Path

from rapidfuzz import fuzz

from client.api import SearchClient
from indexer.index.reader import open_index
from indexer.words import made_up_word

WORDMARK = "wordmark)"
MADE_UP = 300


def _letters(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def _brand(name: str) -> str:
    return name.split(" (")[0]


def has_wordmarks(registry_csv: Path) -> bool:
    with open(registry_csv, newline="") as f:
        return any(r.get("name", "").endswith(WORDMARK) for r in csv.DictReader(f))


def words_read(index_dir: Path, registry_csv: Path) -> dict:
    with open(registry_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["name"].endswith(WORDMARK)]
    index = open_index(index_dir)
    try:
        ids = index.catalog.ids_for([r["serial"] for r in rows])
        texts = index.catalog.texts(list(ids.values()))
        with_words = index.catalog.count_with_words()
    finally:
        index.close()
    found = [fuzz.partial_ratio(_letters(_brand(r["name"])),
                                _letters(texts.get(ids.get(r["serial"], -1), ""))) >= 80
             for r in rows]
    return {"words_read_wordmarks": len(rows),
            "words_read_brand_found": sum(found) / len(rows) if rows else float("nan"),
            "marks_with_words": with_words}


def _slip(word: str, rng: random.Random) -> str:
    """One letter changed, or two neighbours swapped."""
    i = rng.randrange(len(word))
    if rng.random() < 0.5 and i < len(word) - 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    other = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != word[i]])
    return word[:i] + other + word[i + 1:]


def text_search(address: str, registry_csv: Path, seed: int = 1) -> dict:
    with open(registry_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    serials_of: dict[str, set[str]] = {}
    for r in rows:
        serials_of.setdefault(_brand(r["name"]), set()).add(r["serial"])
    brands = sorted({_brand(r["name"]) for r in rows if r["name"].endswith(WORDMARK)})
    rng = random.Random(seed)
    r1 = r10_slip = made_up_exists = 0
    with SearchClient(address) as client:
        for brand in brands:
            resp = client.search(b"", k=1, text=brand)
            r1 += bool(resp.matches) and resp.matches[0].serial in serials_of[brand]
            resp = client.search(b"", k=10, text=_slip(brand, rng))
            r10_slip += bool(serials_of[brand] & {m.serial for m in resp.matches})
        for _ in range(MADE_UP):
            made_up_exists += client.search(b"", k=1, text=made_up_word(rng)).exists
    n = max(1, len(brands))
    return {"text_brands": len(brands), "text_recall@1": r1 / n,
            "text_slip_recall@10": r10_slip / n, "text_made_up_exists": made_up_exists / MADE_UP}


def scenes_with_words(index_dir: Path, queries: dict[str, dict], results: list[dict]) -> dict:
    """On photographs with true boxes (LogoBench-scenes): recall@1 (the answer's first
    match is a rendition of a mark in the scene) over the scenes whose registered mark, as
    the register holds it, has words."""
    index = open_index(index_dir)
    try:
        serials = {s for q in queries.values() for s in q.get("box_serials", "").split(";") if s}
        ids = index.catalog.ids_for(sorted(serials))
        worded = {s for s, i in ids.items() if i in index.catalog.texts(list(ids.values()))}
    finally:
        index.close()
    hits = []
    for r in results:
        q = queries[str(Path(r["file"]).resolve())]
        if q["kind"] != "known" or not worded & set(q.get("box_serials", "").split(";")):
            continue
        family = {s for f in q.get("box_families", "").split(";") for s in f.split("|") if s}
        hits.append(bool(r["matches"]) and r["matches"][0]["serial"] in family)
    return {"scenes_with_words": len(hits),
            "scenes_with_words_recall@1": sum(hits) / len(hits) if hits else float("nan")}
