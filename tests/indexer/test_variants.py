"""Registry-side variants: what they do to a prepared image, and that they pay off."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from indexer import variants
from indexer.cli import main as indexer_main
from indexer.index.reader import open_index
from indexer.network.preprocess import prepare
from tests.conftest import SAMPLES
from tests.indexer.test_indexer import first_marks


def prepared(encoder, n: int) -> list[np.ndarray]:
    files = sorted((SAMPLES / "registry").glob("*.png"))[:n]
    return [prepare(f.read_bytes(), encoder.preprocess) for f in files]


def test_each_variant_edits_every_view_and_keeps_the_shape(encoder):
    array = prepared(encoder, 1)[0]
    for name in variants.EDITS:
        out = variants.apply(array, name)
        assert out.shape == array.shape and out.dtype == np.uint8
        for view, edited in zip(array, out):
            assert 0 < np.abs(view.astype(int) - edited).mean() < 40, name
    group = variants.expand(array, variants.DEFAULT)
    assert group.shape == (5, *array.shape) and np.array_equal(group[0], array)
    np.testing.assert_array_equal(group[2], variants.apply(array, variants.DEFAULT[1]))


def test_names_are_parsed_and_unknown_ones_say_what_exists():
    assert variants.parse("none") == () and variants.parse("") == ()
    assert variants.parse("blur, rot+10") == ("blur", "rot+10")
    with pytest.raises(ValueError, match="unknown registry variant.*sharpen.*choose from blur"):
        variants.parse("blur,sharpen")


def test_mean_over_variants_brings_edited_copies_closer(encoder):
    # Copies tilted by 6 degrees and softened (neither is one of the variants) score
    # higher against the marks stored as the mean over their variants.
    arrays = prepared(encoder, 16)
    copies = [np.stack([np.asarray(Image.fromarray(v).rotate(
        6, Image.Resampling.BICUBIC, fillcolor=(255, 255, 255)).resize((150, 150)).resize(
        v.shape[:2], Image.Resampling.BICUBIC)) for v in a]) for a in arrays]
    q = encoder.descriptors(copies)
    plain = encoder.mean_descriptors([variants.expand(a, ()) for a in arrays])
    mean = encoder.mean_descriptors([variants.expand(a, variants.DEFAULT) for a in arrays])
    np.testing.assert_allclose(plain, encoder.descriptors(arrays), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(mean, axis=1), 1.0, atol=1e-5)
    own_plain, own_mean = (q * plain).sum(1), (q * mean).sum(1)
    assert own_mean.mean() > own_plain.mean() + 0.03  # measured: 0.90 -> 0.96
    assert (own_mean > own_plain).mean() >= 0.75  # measured: all 16
    # ... by more than they come closer to the other marks (smoother is not all it is).

    def others(stored):
        return ((q @ stored.T).sum(1) - (q * stored).sum(1)) / (len(q) - 1)
    assert (own_mean - own_plain).mean() > (others(mean) - others(plain)).mean() + 0.02


def test_the_index_records_its_variants_and_add_follows_them(tmp_path, encoder):
    idx = tmp_path / "idx"
    assert indexer_main(["build", "--images", str(first_marks(tmp_path, 12)), "--out", str(idx),
                         "--registry-variants", "blur", "--no-progress"]) == 0
    assert open_index(idx).manifest.registry_variants == ["blur"]
    extra = first_marks(tmp_path, 1, start=12)
    assert indexer_main(["add", "--images", str(extra), "--index", str(idx),
                         "--no-progress"]) == 0
    opened = open_index(idx)
    mark_id = opened.catalog.ids_for([p.stem for p in extra.iterdir()])
    stored = opened.index.reconstruct(next(iter(mark_id.values())))[None]
    paired = encoder.with_projection(opened.projection)
    array = prepare(next(extra.iterdir()).read_bytes(), encoder.preprocess)
    want = paired.project(encoder.mean_descriptors([variants.expand(array, ("blur",))]))
    plain = paired.project(encoder.descriptors([array]))
    assert float(stored[0] @ want[0]) > 0.9999 > float(stored[0] @ plain[0])


def test_unknown_variant_is_refused_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit):
        indexer_main(["build", "--images", str(SAMPLES / "registry"), "--out",
                      str(tmp_path / "idx"), "--registry-variants", "swirl"])
    assert "unknown registry variant(s) swirl" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()
