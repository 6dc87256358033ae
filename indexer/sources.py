"""Where images come from: a folder (recursive) or a CSV manifest.

Deliberately free of torch and faiss: the client imports it to find images too.
"""
from __future__ import annotations

import csv
import os
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from indexer import words

T = TypeVar("T")

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})


class ManifestError(ValueError):
    """A manifest or image folder that cannot be indexed as given."""


@dataclass(frozen=True, slots=True)
class ImageItem:
    serial: str
    # The image's path, kept as text: a Path object and a __dict__ cost ~450 B a mark
    # more, 0.9 GB of a 2 M-mark build's memory. `path` gives it as a Path.
    file: str | Path
    name: str = ""
    metadata: dict = field(default_factory=dict, hash=False, compare=False)
    # The verbal element as filed (the manifest's `text`); None: read from the image.
    text: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "file", os.fspath(self.file))

    @property
    def path(self) -> Path:
        return Path(self.file)


def iter_image_files(root: str | Path) -> list[Path]:
    """Image files under `root`, recursively, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root} is not a folder")
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def scan_folder(root: str | Path) -> list[ImageItem]:
    """One item per image file; the serial is the file name without its extension."""
    items = [ImageItem(p.stem, p) for p in iter_image_files(root)]
    _check_unique(items, "file name (the serial without a manifest)")
    return items


def read_manifest(csv_path: str | Path, images_root: str | Path) -> list[ImageItem]:
    """Rows `serial,file[,name,...]`; `file` relative to `images_root`, which it must stay in.

    Extra columns are kept as metadata; `name` is also shown in search results, and `text`
    is the mark's verbal element as filed (an empty cell: read from the image).
    """
    csv_path, root = Path(csv_path), Path(images_root).resolve()
    items = []
    for line, row in iter_csv_rows(csv_path, required=("serial", "file")):
        serial, file = row["serial"].strip(), row["file"].strip()
        if not serial or not file:
            raise ManifestError(f"{csv_path}:{line}: empty serial or file")
        path = (root / file).resolve()
        if not path.is_relative_to(root):
            raise ManifestError(f"{csv_path}:{line}: {file!r} points outside {root}")
        meta = {k: v for k, v in row.items() if k not in ("serial", "file", "text") and k}
        try:
            text = words.check_text(row.get("text") or "") or None
        except words.WordsError as e:
            raise ManifestError(f"{csv_path}:{line}: {e}") from None
        items.append(ImageItem(serial, path, meta.get("name", ""), meta, text))
    _check_unique(items, "serial")
    return items


def read_csv_rows(csv_path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a CSV with a header holding `required` columns."""
    return list(iter_csv_rows(csv_path, required))


def iter_csv_rows(csv_path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """read_csv_rows one row at a time: a manifest of millions is never all in memory."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise ManifestError(f"{csv_path}: missing column(s) {', '.join(missing)}; "
                                    f"the header must name {', '.join(required)}"
                                    f"{_header_hint(header, required)}")
            for i, row in enumerate(reader):
                yield i + 2, row
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"cannot read {csv_path}: {e}") from e


def _header_hint(header: list[str], required: tuple[str, ...]) -> str:
    """Why a header that looks right was not read: letter case, or another delimiter."""
    if len(header) == 1 and any(d in header[0] for d in ";\t|"):
        return (f" (the header {header[0]!r} is one column: the file must be comma-separated, "
                "not split by ';', tabs or '|')")
    lower = {h.strip().lower(): h for h in header}
    near = [f"{lower[c]!r}" for c in required if c in lower and lower[c] not in required]
    if near:
        return f" (found {', '.join(near)}: column names are lower case, without spaces)"
    return ""


def _check_unique(items: list[ImageItem], what: str) -> None:
    seen: dict[str, str] = {}
    for it in items:
        if it.serial in seen:
            raise ManifestError(f"duplicate {what} {it.serial!r}: {seen[it.serial]} and {it.file}")
        seen[it.serial] = it.file


def prefetch(pool: Executor, fn: Callable[[T], object], items: Iterable[T], depth: int
             ) -> Iterator[tuple[T, Future]]:
    """Yield (item, future of fn(item)) in order with at most `depth` loads in flight.

    Unlike `pool.map`, which submits every item at once, this keeps only `depth` decoded
    images in memory and leaves the CPU to whoever consumes them.
    """
    pending: deque = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= depth:
            yield pending.popleft()
    while pending:
        yield pending.popleft()
