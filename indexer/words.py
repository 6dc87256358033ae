"""The words of a mark: read from its picture, normalised, keyed by sound, compared.

Trademark examiners search a mark's verbal element beside its picture: two marks that
read the same conflict whatever their fonts. A mark's words come from the register's
manifest (`text`, the verbal element as filed) or are read from its image here, with
PP-OCR (detection and recognition, in the `rapidocr-onnxruntime` wheel: no download at
run time). The angle classifier is left off: it turned a fifth of upright wordmarks
upside down ("yarn" read as "unoh"), and marks are filed upright.

Words are compared three ways at once (`similarity`): spelled alike (an edit distance
that counts a swap of two letters as one edit), a word among several (either mark's
words found in the other's), and by sound (a phonetic key: "Kwik" ~ "Quick",
"Foto" ~ "Photo").
"""
from __future__ import annotations

import importlib.util
import logging
import random
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

# A verbal element is a name or a slogan, not a text: a longer one is a mistake.
MAX_TEXT = 200
# Recognised words under this confidence are left out (PP-OCR's own default).
MIN_READ_SCORE = 0.5
# Words shorter than this take no part in a match on their own: "TM", "DB", "&" are on
# many marks and say nothing of which.
MIN_WORD = 3
# What a match by sound alone scores: under an exact spelling, over most one-letter slips;
# less for a key of two sounds (sound).
SOUND_SCORE = 0.9
SHORT_SOUND_SCORE = 0.85
# A word this long is found inside a longer one (_covered), with this score: it ranks
# ("artixlinux" finds ARTIX) but under any register's words threshold, as made-up words
# hold registered ones by chance ("bynest" holds NEST, "cheapex" APEX).
RUN_IN = 4
RUN_IN_SCORE = 0.85
# What words beside the matched ones cost, at most (similarity).
EXTRA_WORDS = 0.05
# OCR reads best with the text some tens of pixels high: small marks are enlarged, large
# pictures reduced (their time grows with the pixels).
READ_SIDE = (320, 960)

_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class WordsError(ValueError):
    """Text that cannot be searched as a mark's words; the message says why."""


class ReaderUnavailable(RuntimeError):
    """No OCR here: the words of marks cannot be read from their pictures."""


ONSETS = "b c d f g h j k l m n p r s t v w z br cr dr fl gr kl pl st tr sh ch th qu".split()
VOWELS = "a e i o u a e i o y ai ea io ou".split()
CODAS = ["", "", "", "n", "r", "s", "x", "l", "m", "t", "ck", "nd", "st"]


def made_up_word(rng: random.Random) -> str:
    """A pronounceable word of random syllables, in one of three cases: no brand's name
    but for chance (the training marks' wordmarks, the words' calibration negatives)."""
    syllables = rng.choice([1, 2, 2, 3, 3, 4])
    w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables))
    w += rng.choice(CODAS)
    case = rng.randrange(3)
    return w.upper() if case == 0 else w.capitalize() if case == 1 else w


def check_text(text: str) -> str:
    """A caller's text, checked: WordsError for one too long, with control characters or
    with no letter or digit. Empty stays empty (no words given)."""
    if len(text) > MAX_TEXT:
        raise WordsError(f"text is {len(text)} characters; a mark's words are at most "
                         f"{MAX_TEXT}")
    if _CONTROL.search(text):
        raise WordsError("text holds control characters; send the mark's words as plain text")
    if text.strip() and not words_of(text):
        raise WordsError(f"text {text[:40]!r} has no letter or digit to search for")
    return text.strip()


def words_of(text: str) -> tuple[str, ...]:
    """The words of a text as compared: symbols (™, ®, ©) dropped, compatibility forms
    folded (NFKC: full-width letters), case folded, split at anything that is not a letter
    or a digit."""
    text = "".join(" " if unicodedata.category(c)[0] == "S" else c for c in text)
    return tuple(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


_RESPELL = (("ph", "f"), ("qu", "kw"), ("ck", "k"), ("x", "ks"))


def sound(word: str) -> str:
    """A phonetic key of one word (Metaphone after a few English respellings that it does
    not make itself: "qu" -> "kw", so that Quick and Kwik meet); '' for a word of other
    than Latin letters (digits too: Metaphone passes over them) or under MIN_WORD letters."""
    import jellyfish  # a small C extension, imported where used
    if len(word) < MIN_WORD or not (word.isascii() and word.isalpha()):
        return ""
    for a, b in _RESPELL:
        word = word.replace(a, b)
    return jellyfish.metaphone(word)


# Words up to this long are also found with one letter left out (keys): a slip changes up
# to three of a word's three-letter pieces, all of a short word's ("jvaa" shares none
# with "java").
LONGEST_SLIP = 16


def _and_run_together(found: tuple[str, ...]) -> tuple[str, ...]:
    """A text's words, and (for more than one) the words run together: "visual studio
    code" is also looked up as "visualstudiocode"."""
    return (*found, "".join(found)) if len(found) > 1 else found


def keys(found: tuple[str, ...]) -> list[str]:
    """The catalog's lookup keys of a text's words, the same for a registered mark and a
    query: each word ("w:"), its sound ("s:"), and the word itself and with each letter
    left out in turn ("d:"), so that two words one slip apart (a letter changed, added,
    dropped or two swapped) share a key (symmetric deletion, as SymSpell does)."""
    out = []
    for w in _and_run_together(found):
        out += [f"w:{w}", f"d:{w}"]
        if key := sound(w):
            out.append(f"s:{key}")
        if MIN_WORD <= len(w) <= LONGEST_SLIP:
            out += [f"d:{w[:i]}{w[i + 1:]}" for i in range(len(w))]
    return list(dict.fromkeys(out))


def spelled(a: str, b: str) -> float:
    """How alike two spellings are, in [0, 1]: 1 - edits / the longer's length."""
    from rapidfuzz.distance import OSA  # Levenshtein with a swap of neighbours as one edit
    return OSA.normalized_similarity(a, b)


def _word_score(a: str, b: str) -> float:
    score = spelled(a, b)
    if score < SOUND_SCORE and (key := sound(a)) and key == sound(b):
        # Metaphone keeps a word's consonants: two sounds ("FT": Foto, Photo; but also
        # tile, toll) say less than three (KWK: Kwik, Quick).
        return max(score, SOUND_SCORE if len(key) >= 3 else SHORT_SOUND_SCORE)
    return score


def _covered(inner: tuple[str, ...], outer: tuple[str, ...], short: bool = False) -> float:
    """How well `outer` holds each word of `inner`, weighted by the words' lengths; words
    under MIN_WORD letters count only where all of `inner` is such words and `short`. A
    word of RUN_IN letters or more is held by a word it is part of: words are often run
    together ("nestjs" holds NEST, "artixlinux" ARTIX)."""
    long = [w for w in inner if len(w) >= MIN_WORD] or (list(inner) if short else [])
    if not long or not outer:
        return 0.0
    total = sum(len(w) for w in long)
    return sum(len(w) * max(RUN_IN_SCORE if len(w) >= RUN_IN and w in o and w != o
                            else _word_score(w, o) for o in outer) for w in long) / total


def similarity(query: tuple[str, ...], mark: tuple[str, ...], short: bool = False) -> float:
    """How alike two marks' words are, in [0, 1]: 1 for the same words in any order or the
    one's words all among the other's; the best of the whole spelling compared (words run
    together: "Visual Studio Code" ~ "VisualStudioCode") and word by word. Words under
    MIN_WORD letters match only with `short`, for a query of such words that a person
    typed ("GO"): read in a picture, a lone letter is more often a glyph than a word."""
    if not query or not mark:
        return 0.0
    joined_q, joined_m = "".join(query), "".join(mark)
    whole = spelled(joined_q, joined_m) \
        if short or min(len(joined_q), len(joined_m)) >= MIN_WORD else 0.0
    # A registered mark's short words alone ("TM", read on many marks) never make a match.
    within = sorted((_covered(query, mark, short), _covered(mark, query)))
    # One's words among more of the other's: a near-full score, a little under the same
    # words alone ("zsh" is ZSH before OH MY ZSH).
    return max(whole, within[1] - EXTRA_WORDS * (within[1] - within[0]))


def trigrams(words: tuple[str, ...]) -> list[str]:
    """The three-letter pieces of a text's words (and of the words run together), the
    keys under which the catalog finds a mark's words (SQLite FTS5's trigram index)."""
    out = []
    for w in _and_run_together(words):
        out += [w[i:i + 3] for i in range(len(w) - 2)]
    return list(dict.fromkeys(out))


RUNTIMES = ("auto", "openvino", "onnxruntime")


@dataclass(frozen=True)
class ReaderConfig:
    threads: int = 1  # threads of each model
    min_score: float = MIN_READ_SCORE
    # Which runs PP-OCR's models: "auto" is OpenVINO where it compiles them, else ONNX
    # Runtime (the wheel's own). OpenVINO read the same words as ONNX Runtime in 0.6x the
    # time on this project's 2-core CPUs (docs/words.md).
    runtime: str = "auto"


class _OpenVinoSession:
    """One of PP-OCR's ONNX models through OpenVINO, in the place of rapidocr's ONNX
    Runtime session: called with a batch, it returns [output], as that session does, on
    `threads` threads (set by the reader before each read)."""

    def __init__(self, path: str, threads: int):
        from indexer.network import openvino_runtime
        self._runtime = openvino_runtime
        self._path = path
        self.threads = threads
        self._requests = {threads: self._request(threads)}

    def _request(self, threads: int):
        return self._runtime.compile_onnx(self._path, threads).create_infer_request()

    def __call__(self, batch):
        if self.threads not in self._requests:
            self._requests[self.threads] = self._request(self.threads)
        return [self._runtime.infer(self._requests[self.threads], batch)]


def _detection_input_in_float32(det) -> None:
    """rapidocr 1.4.4 normalises the picture for text detection in float64 (its mean and
    std are float64 arrays) before casting it to float32: 13 ms of a photograph's ~90 ms
    read, on 2 cores. The same sums in float32, one channel at a time into the network's
    layout, give the same input (bit-equal on 800x600 pictures: x * 2/255 - 1 either
    way) in ~3 ms. Left as it is where rapidocr keeps its steps elsewhere."""
    import numpy as np  # the server's, not the client's (indexer.sources imports this)
    made = getattr(det, "get_preprocess", None)
    if made is None:
        return

    def get_preprocess(longest: int):
        step = made(longest)
        if not all(hasattr(step, a) for a in ("resize", "scale", "mean", "std")):
            return step
        scale = (step.scale / np.asarray(step.std)).astype(np.float32)
        shift = (np.asarray(step.mean) / np.asarray(step.std)).astype(np.float32)

        def prepare(img):
            resized = step.resize(img)
            if resized is None:
                return None
            out = np.empty((1, 3, *resized.shape[:2]), np.float32)
            for c in range(3):
                np.multiply(resized[..., c], scale[c], out=out[0, c], casting="unsafe")
                out[0, c] -= shift[c]
            return out
        return prepare

    det.get_preprocess = get_preprocess


class WordReader:
    """Reads the words of a picture with PP-OCR (the models and the steps around them of
    `rapidocr-onnxruntime`, the models run by OpenVINO where it can). One per thread that
    reads (`reader()`): the engine keeps per-call state."""

    def __init__(self, config: ReaderConfig = ReaderConfig()):
        if config.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, "
                             f"not {config.runtime!r}")
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as e:
            raise ReaderUnavailable(
                "reading words needs the OCR package: pip install rapidocr-onnxruntime==1.4.4 "
                f"(or give the words in the manifest's `text` column) ({e})") from None
        self.config = config
        threads = config.threads
        self._ocr = RapidOCR(use_cls=False, det_limit_type="max",
                             det_limit_side_len=READ_SIDE[1], text_score=config.min_score,
                             intra_op_num_threads=threads, inter_op_num_threads=1)
        self.runtime = "onnxruntime"
        self._sessions: list[_OpenVinoSession] = []
        _detection_input_in_float32(self._ocr.text_det)
        if config.runtime != "onnxruntime":
            self._run_on_openvino()

    def _run_on_openvino(self) -> None:
        """Puts OpenVINO sessions where rapidocr 1.4.4 keeps its detection and recognition
        sessions (`text_det.infer`, `text_rec.session`; the version is pinned), over the
        same ONNX files; a failure leaves ONNX Runtime's, with one warning ("auto")."""
        from indexer.network.openvino_runtime import OpenVinoUnavailable
        det, rec = self._ocr.text_det, self._ocr.text_rec
        try:
            sessions = [_OpenVinoSession(path, self.config.threads) for path in _model_files()]
            if not (hasattr(det, "infer") and hasattr(rec, "session")):
                raise AttributeError("rapidocr keeps its sessions elsewhere (is it 1.4.4?)")
        except (AttributeError, KeyError, OSError, OpenVinoUnavailable) as e:
            if self.config.runtime == "openvino":
                raise ReaderUnavailable(f"PP-OCR cannot run through OpenVINO here: {e}") from e
            _warn_once("reading words with ONNX Runtime: OpenVINO cannot run PP-OCR here "
                       f"({e})")
            return
        det.infer, rec.session = sessions
        self._sessions = sessions
        self.runtime = "openvino"

    def read(self, image: Image.Image, threads: int | None = None) -> str:
        """The words read in a picture, in reading order (top to bottom, left to right),
        joined by spaces; '' where none was read."""
        return " ".join(text for _, text in self.read_lines(image, threads))

    def read_lines(self, image: Image.Image, threads: int | None = None) -> list[Line]:
        """The lines of words read in a picture, in reading order, each with its box
        (x0, y0, x1, y1) in the picture's pixels. `threads`: this read's (default: the
        config's; through OpenVINO only: ONNX Runtime's are fixed when it loads)."""
        import numpy as np  # the server's, not the client's (indexer.sources imports this)
        for session in self._sessions:
            session.threads = max(1, threads or self.config.threads)
        im = _reading_size(image.convert("RGB"))
        result, _ = self._ocr(np.asarray(im)[:, :, ::-1])  # PP-OCR was trained on BGR
        if not result:
            return []
        lines = sorted(result, key=lambda r: (round(min(p[1] for p in r[0]) / 16), r[0][0][0]))
        sx, sy = image.width / im.width, image.height / im.height
        # A lone character read on its own is more often a glyph of the picture ("O" for
        # a ring, "M" for a zigzag) than a word.
        return [((min(p[0] for p in quad) * sx, min(p[1] for p in quad) * sy,
                  max(p[0] for p in quad) * sx, max(p[1] for p in quad) * sy), text)
                for quad, text, score in lines
                if float(score) >= self.config.min_score and sum(map(len, words_of(text))) >= 2]


# A line of words read, and its box (x0, y0, x1, y1).
Line = tuple[tuple[float, float, float, float], str]
# Lines as near each other as this, in heights of the smaller line, are one block of words
# (a mark's name over its slogan, a name set on two lines): up to BLOCK_LEADING apart
# from line to line, BLOCK_SPACE from side to side.
BLOCK_LEADING = 0.8
BLOCK_SPACE = 1.5


def blocks(lines: list[Line]) -> list[Line]:
    """Lines read in a picture -> its blocks of words, each with the box around its lines
    and their words in reading order. A mark's words are read as a block: a line on its
    own is often only part of them ("python" of "python Package Index"), and matched on
    its own it names another mark."""
    group = list(range(len(lines)))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for i, ((ax0, ay0, ax1, ay1), _) in enumerate(lines):
        for j in range(i + 1, len(lines)):
            (bx0, by0, bx1, by1), _ = lines[j]
            height = min(ay1 - ay0, by1 - by0)
            if max(ay0, by0) - min(ay1, by1) <= BLOCK_LEADING * height \
                    and max(ax0, bx0) - min(ax1, bx1) <= BLOCK_SPACE * height:
                group[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for i in range(len(lines)):
        members.setdefault(root(i), []).append(i)
    out = []
    for idx in sorted(members.values()):  # lines keep their reading order within a block
        boxes = [lines[i][0] for i in idx]
        out.append(((min(b[0] for b in boxes), min(b[1] for b in boxes),
                     max(b[2] for b in boxes), max(b[3] for b in boxes)),
                    " ".join(lines[i][1] for i in idx)))
    return out


def reading_scale(size: tuple[int, int]) -> float:
    """The scale a picture of `size` is read at (READ_SIDE): small ones enlarged, large
    ones reduced."""
    lo, hi = READ_SIDE
    side = max(size)
    return 1.0 if lo <= side <= hi else (lo if side < lo else hi) / side


def _reading_size(im: Image.Image) -> Image.Image:
    scale = reading_scale(im.size)
    if scale == 1.0:
        return im
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                     Image.Resampling.LANCZOS)


def _model_files() -> list[str]:
    """PP-OCR's detection and recognition models, as the wheel's config.yaml names them."""
    import rapidocr_onnxruntime
    import yaml  # rapidocr's own dependency

    root = Path(rapidocr_onnxruntime.__file__).parent
    models = yaml.safe_load((root / "config.yaml").read_text())
    return [str(root / models[step]["model_path"]) for step in ("Det", "Rec")]


def warm_up(threads: tuple[int, ...] = (1,)) -> bool:
    """Compiles PP-OCR's models through OpenVINO for reads on each of `threads` threads
    (~0.5 s), so that a server's first photograph does not wait for it; each thread's
    reader then only makes its requests. False (logged) where they cannot be compiled:
    the readers will say so, and fall back, at their first read."""
    from indexer.network.openvino_runtime import OpenVinoUnavailable, compile_onnx
    try:
        for path in _model_files():
            for n in dict.fromkeys(threads):
                compile_onnx(path, n)
    except (ImportError, KeyError, OSError, OpenVinoUnavailable) as e:
        log.info("word reader not warmed up: %s", e)
        return False
    return True


_local = threading.local()
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def reader(config: ReaderConfig = ReaderConfig()) -> WordReader:
    """This thread's reader (made at its first use: ~0.3 s to load the models)."""
    current = getattr(_local, "reader", None)
    if current is None or current.config != config:
        current = _local.reader = WordReader(config)
    return current


def can_read() -> bool:
    """Whether the OCR package is installed (without loading it: ~0.5 s)."""
    return importlib.util.find_spec("rapidocr_onnxruntime") is not None
