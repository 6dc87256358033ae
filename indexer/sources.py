"""Where images come from: a folder (recursive) or a CSV manifest.

Deliberately free of torch and faiss: the client imports it to find images too.
"""
from __future__ import annotations

import csv
import functools
import itertools
import os
from array import array
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

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
    return list(ManifestItems(csv_path, images_root))


class ManifestItems(Sequence[ImageItem]):
    """A manifest's items read from its file when asked for, not held: what `read_manifest`
    gives, for a build of millions of marks (a list of them costs ~300 B a mark, 0.6 GB
    at 2 M). Every row is checked when it is opened, as read_manifest checks them; then
    only where each row starts is kept (8 B a mark), and a slice (a shard) is read in one
    go. The file must not change while a build reads it (the build's key would differ)."""

    def __init__(self, csv_path: str | Path, images_root: str | Path):
        self.csv_path, self.root = Path(csv_path), Path(images_root).resolve()
        self._root = str(self.root)
        # Each folder resolved once, not each row's every folder (an lstat a component:
        # ~90 us a row, minutes at millions, paid again for every shard). Bounded: a
        # manifest may give every file a folder of its own.
        self._folder = functools.lru_cache(maxsize=4096)(
            lambda head: os.path.realpath(os.path.join(self._root, head)))
        starts = array("q")
        serials: set[str] = set()
        for line, start, row in self._rows(0):
            item = self._item(line, row)
            if item.serial in serials:
                first = next(i.file for i in self._items(0) if i.serial == item.serial)
                raise ManifestError(f"duplicate serial {item.serial!r}: {first} and {item.file}")
            serials.add(item.serial)
            starts.append(start)
        self._starts = array("q", starts)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(lo, hi, step)]
            if lo >= hi:
                return []
            return list(itertools.islice(self._items(self._starts[lo]), hi - lo))
        i = range(len(self))[i]  # negative positions, and IndexError past the end
        return next(self._items(self._starts[i]))

    def __iter__(self) -> Iterator[ImageItem]:
        return self._items(self._starts[0]) if len(self) else iter(())

    def _items(self, offset: int) -> Iterator[ImageItem]:
        return (self._item(line, row) for line, _, row in self._rows(offset))

    def _rows(self, offset: int) -> Iterator[tuple[int, int, dict]]:
        """(line number or 0, byte offset, row) of each row from `offset` (a row's start;
        0: the header's). A quoted cell may hold line breaks: a row starts where the
        first line the CSV reader takes for it starts."""
        try:
            with open(self.csv_path, "rb") as f:
                header = self._header(f)
                next_start = [f.tell()]
                if offset:
                    f.seek(offset)
                    next_start[0] = offset

                def lines():
                    while raw := f.readline():
                        next_start[0] += len(raw)
                        yield raw.decode("utf-8")
                reader = csv.DictReader(lines(), fieldnames=header)
                while True:
                    start = next_start[0]
                    row = next(reader, None)
                    if row is None:
                        return
                    yield (reader.line_num + 1 if not offset else 0), start, row
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise ManifestError(f"cannot read {self.csv_path}: {e}") from e

    def _header(self, f) -> list[str]:
        head = f.readline().decode("utf-8-sig")
        header = next(csv.reader([head]), [])
        missing = [c for c in ("serial", "file") if c not in header]
        if missing:
            raise ManifestError(f"{self.csv_path}: missing column(s) {', '.join(missing)}; "
                                f"the header must name serial, file"
                                f"{_header_hint(header, ('serial', 'file'))}")
        return header

    def _item(self, line: int, row: dict) -> ImageItem:
        where = f"{self.csv_path}:{line}" if line else str(self.csv_path)
        serial, file = (row.get("serial") or "").strip(), (row.get("file") or "").strip()
        if not serial or not file:
            raise ManifestError(f"{where}: empty serial or file")
        path = self._resolve(file)
        if path != self._root and not path.startswith(self._root.rstrip(os.sep) + os.sep):
            raise ManifestError(f"{where}: {file!r} points outside {self.root}")
        meta = {k: v for k, v in row.items() if k not in ("serial", "file", "text") and k}
        try:
            text = words.check_text(row.get("text") or "") or None
        except words.WordsError as e:
            raise ManifestError(f"{where}: {e}") from None
        return ImageItem(serial, path, meta.get("name", ""), meta, text)

    def _resolve(self, file: str) -> str:
        """ROOT/file with every symbolic link followed, as Path.resolve gives it (a link
        out of ROOT is then seen for what it is), its folder resolved from the cache."""
        head, name = os.path.split(file)
        if name in ("", ".", ".."):
            return os.path.realpath(os.path.join(self._root, file))
        path = os.path.join(self._folder(head), name)
        return os.path.realpath(path) if os.path.islink(path) else path


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
