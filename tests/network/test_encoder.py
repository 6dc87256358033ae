"""The encoder loads the real ImageNet weights and gives stable, normalised vectors."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from indexer.network.encoder import EncoderError, load_encoder, padded_size
from indexer.network.preprocess import PreprocessConfig, prepare, prepare_file
from tests.conftest import DATA, SAMPLES

# ImageNet classes: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso.
CATS = {281, 282, 283, 284, 285}
ESPRESSO = 967


def _photo_batch(encoder, path) -> torch.Tensor:
    # A photo as the service prepares a mark, but untrimmed and in colour alone.
    x = prepare_file(path, PreprocessConfig(trim=False))
    return encoder.input_batch([x])


def _logits(encoder, path) -> torch.Tensor:
    with torch.inference_mode():
        return encoder.net.backbone(_photo_batch(encoder, path))[0]


def test_imagenet_weights_classify_real_photos(encoder):
    assert int(_logits(encoder, DATA / "chelsea.jpg").argmax()) in CATS
    assert int(_logits(encoder, DATA / "coffee.jpg").argmax()) == ESPRESSO


def test_random_weights_would_not(encoder):
    # Guards the test above: an untrained network of the same shape gets the cat wrong.
    from indexer.network.efficientnet import efficientnet_lite0
    torch.manual_seed(0)
    net = efficientnet_lite0()
    with torch.inference_mode():
        assert int(net(_photo_batch(encoder, DATA / "chelsea.jpg"))[0].argmax()) not in CATS


def test_descriptors_are_normalised_and_batch_independent(encoder):
    files = sorted((SAMPLES / "registry").glob("*.png"))[:5]
    arrays = [prepare_file(f, encoder.preprocess) for f in files]
    batch = encoder.descriptors(arrays)
    assert batch.shape == (5, 1024) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    # One half per view (colour, ink), each of equal weight.
    np.testing.assert_allclose(np.linalg.norm(batch[:, :512], axis=1), 0.5 ** 0.5, atol=1e-5)
    one = encoder.descriptors(arrays[2:3])
    np.testing.assert_allclose(one[0], batch[2], atol=1e-4)
    # Different marks give different vectors.
    assert float(batch[0] @ batch[1]) < 0.99


def test_padded_batches_give_the_same_vectors(torch_encoder):
    """The GPU pads batches to powers of two (cuDNN plans once per shape); forced on here,
    the padding is invisible in the vectors, and warm_up runs each padded size once."""
    encoder = torch_encoder
    assert [padded_size(n) for n in (1, 2, 3, 5, 16, 33, 64, 65)] == [1, 2, 4, 8, 16, 64, 64, 128]
    padded = encoder.with_projection(None)
    padded.pad_batches = True
    seen = []
    run = padded.input_batch
    padded.input_batch = lambda images: seen.append(len(images)) or run(images)
    arrays = [prepare_file(f, encoder.preprocess)
              for f in sorted((SAMPLES / "registry").glob("*.png"))[:5]]
    np.testing.assert_allclose(padded.descriptors(arrays), encoder.descriptors(arrays),
                               atol=1e-5)
    assert seen == [8]
    seen.clear()
    padded.warm_up(6)
    assert seen == [1, 2, 4, 8]


def test_identity_names_weights_and_preprocessing(encoder):
    ident = encoder.identity
    assert ident.name == "efficientnet-lite0-gem3-tuned512"
    assert len(ident.weights_sha256) == 64
    assert ident.preprocess == {"size": 224, "mean": 127.0, "std": 128.0, "fill": [255, 255, 255],
                                "trim": True, "views": ["rgb", "ink"]}
    assert ident.descriptor_dim == 1024
    assert ident.mismatch(load_encoder("efficientnet-lite0", "cpu").identity) is None


class TinyNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)  # (N, 48)


def test_torchscript_encoder_with_its_own_preprocessing(tmp_path):
    path = tmp_path / "tiny.pt"
    cfg = {"size": 64, "mean": 0.0, "std": 255.0}
    torch.jit.save(torch.jit.script(TinyNet()), str(path),
                   _extra_files={"preprocess.json": json.dumps(cfg)})
    enc = load_encoder(str(path), "cpu")
    assert enc.preprocess == PreprocessConfig(size=64, mean=0.0, std=255.0)
    assert enc.identity.name == "torchscript:tiny.pt" and enc.descriptor_dim == 48
    arr = prepare_file(sorted((SAMPLES / "registry").glob("*.png"))[0], enc.preprocess)
    vec = enc.encode([arr])
    assert vec.shape == (1, 48)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


def test_torchscript_encoder_with_two_views_concatenates_them(tmp_path):
    path = tmp_path / "tiny.pt"
    cfg = {"size": 64, "mean": 0.0, "std": 255.0, "views": ["rgb", "ink"]}
    torch.jit.save(torch.jit.script(TinyNet()), str(path),
                   _extra_files={"preprocess.json": json.dumps(cfg)})
    enc = load_encoder(str(path), "cpu")
    assert enc.preprocess.views == ("rgb", "ink") and enc.descriptor_dim == 96
    files = sorted((SAMPLES / "registry").glob("*.png"))[:3]
    arrays = [prepare_file(f, enc.preprocess) for f in files]
    assert arrays[0].shape == (2, 64, 64, 3)
    vec = enc.descriptors(arrays)
    one = load_encoder(str(path), "cpu")
    # The colour half is what the same network gives on the colour view alone.
    colour = torch.nn.functional.normalize(one.net(one.input_batch([a[:1] for a in arrays])))
    np.testing.assert_allclose(vec[:, :48] * 2 ** 0.5, colour.numpy(), atol=1e-5)


def test_torchscript_preprocessing_with_an_unknown_view_says_how_to_fix(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(TinyNet()), str(path),
                   _extra_files={"preprocess.json": json.dumps({"views": ["sepia"]})})
    with pytest.raises(EncoderError, match="unknown preprocessing views.*known: rgb, ink"):
        load_encoder(str(path), "cpu")


def test_unknown_encoder_and_bad_torchscript_say_how_to_fix(tmp_path):
    with pytest.raises(EncoderError, match="TorchScript"):
        load_encoder("resnet-9000")
    bad = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, bad)  # a state dict, not a TorchScript file
    with pytest.raises(EncoderError, match="torch.jit.save"):
        load_encoder(str(bad))


def test_pca_encoder_is_the_backbone_alone_and_differs_in_identity(encoder):
    pca = load_encoder("efficientnet-lite0-pca", "cpu")
    assert pca.descriptor_dim == 1280 and encoder.descriptor_dim == 1024
    assert pca.identity.mismatch(encoder.identity) is not None


def test_missing_or_foreign_weights_say_how_to_fix(tmp_path):
    from indexer.network.encoder import _load_lite0, _with_tuning, pick_device
    with pytest.raises(EncoderError, match="python -m indexer.network.train"):
        _with_tuning(_load_lite0(pick_device("cpu")), tmp_path / "nope.pt")
    torch.save({"proj.weight": torch.zeros(4, 1280)}, tmp_path / "old.pt")
    with pytest.raises(EncoderError, match="no similarity head"):
        _with_tuning(_load_lite0(pick_device("cpu")), tmp_path / "old.pt")
    torch.save({"head.proj.weight": torch.zeros(4, 1280), "head.proj.bias": torch.zeros(4),
                "backbone._blocks.99.x": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(EncoderError, match="does not fit"):
        _with_tuning(_load_lite0(pick_device("cpu")), tmp_path / "foreign.pt")


def test_tuned_weights_replace_the_imagenet_blocks_they_name(tmp_path):
    from indexer.network.encoder import Head, _load_lite0, _with_tuning, pick_device, tuned_state
    base = _load_lite0(pick_device("cpu"))
    imagenet = base.net.backbone._blocks[15]._project_conv.weight.clone()
    state = tuned_state(base.net.backbone, 15, Head(1280, 8))
    kinds = {k.split(".")[1] for k in state if k.startswith("backbone.")}
    assert kinds == {"_blocks", "_conv_head", "_bn1"}
    assert not any(k.startswith("backbone._blocks.14.") for k in state)
    state["backbone._blocks.15._project_conv.weight"] = imagenet * 2
    torch.save(state, tmp_path / "w.pt")
    enc = _with_tuning(_load_lite0(pick_device("cpu")), tmp_path / "w.pt")
    got = enc.net.backbone._blocks[15]._project_conv.weight
    torch.testing.assert_close(got, imagenet * 2)
    assert enc.dim == 16 and "tuned8" in enc.identity.name  # 8 per view


def test_encode_projects_like_the_index_build(engine):
    # Queries are projected in torch, the registry in numpy at build: same vectors.
    images = [engine.prepare(p.read_bytes()).array
              for p in sorted((SAMPLES / "registry").glob("*.png"))[:4]]
    enc = engine.encoder
    np.testing.assert_allclose(enc.encode(images), enc.project(enc.descriptors(images)),
                               atol=1e-5)


def test_folded_batchnorms_change_nothing_but_the_speed(encoder):
    """The encoder runs a copy with each BatchNorm folded into its convolution: the same
    ImageNet answers and the same descriptors as the network as loaded, which keeps its
    BatchNorms (training needs them)."""
    from indexer.network.efficientnet import fold_batchnorms
    folded = fold_batchnorms(encoder.net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.net.modules()) == 49
    photo = _photo_batch(encoder, DATA / "chelsea.jpg")
    with torch.inference_mode():
        want, got = encoder.net.backbone(photo)[0], folded.backbone(photo)[0]
    assert int(got.argmax()) == int(want.argmax()) and int(got.argmax()) in CATS
    files = sorted((SAMPLES / "registry").glob("*.png"))[:8]
    x = encoder.input_batch([prepare_file(f, encoder.preprocess) for f in files])
    with torch.inference_mode():
        np.testing.assert_allclose(folded(x).numpy(), encoder.net(x).numpy(), atol=1e-5)
    scripted = torch.jit.script(torch.nn.Linear(4, 2))
    assert fold_batchnorms(scripted) is scripted  # nothing to fold: used as it is


def test_the_folded_copy_is_made_once_for_an_encoder_and_those_paired_with_it(encoder):
    """A server pairs a new encoder with each index it loads (with_projection): it must
    not fold the network again (40 ms of the first request after each reload)."""
    from indexer.network.projection import Projection
    dim = encoder.descriptor_dim
    paired = encoder.with_projection(Projection(np.zeros(dim, np.float32),
                                                np.eye(dim, dtype=np.float32), 0.0))
    assert paired._infer is encoder._infer
    assert encoder._infer is encoder._infer  # made once
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in paired._infer.modules())


def test_lanes_asking_at_once_share_one_folded_copy(encoder):
    """A server's lanes encode their first batch together at start: one fold, not one
    each."""
    from concurrent.futures import ThreadPoolExecutor

    from indexer.network.encoder import Encoder
    fresh = Encoder(encoder.net, encoder.preprocess, encoder.identity, encoder.device)
    with ThreadPoolExecutor(4) as pool:
        copies = list(pool.map(lambda _: fresh._infer, range(4)))
    assert all(c is copies[0] for c in copies) and copies[0] is not encoder._infer


@pytest.mark.parametrize("size", [224, 113, 56, 7])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("depthwise", [True, False])
def test_same_padding_matches_tensorflow(size, kernel, stride, depthwise):
    """SameConv2d pads inside the convolution (evenly, or by a grown kernel on strided
    depthwise layers); the oracle is TensorFlow's rule written out: pad, then convolve."""
    from indexer.network.efficientnet import SameConv2d
    torch.manual_seed(size + kernel)
    channels = 8
    conv = SameConv2d(channels, channels, kernel, stride=stride,
                      groups=channels if depthwise else 1, bias=False)
    x = torch.randn(2, channels, size, size).contiguous(memory_format=torch.channels_last)
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    pads = [total // 2, total - total // 2] * 2
    want = torch.nn.functional.conv2d(torch.nn.functional.pad(x, pads), conv.weight,
                                      None, stride, 0, 1, conv.groups)
    with torch.no_grad():
        got = conv(x)
    assert got.shape == want.shape == (2, channels, -(-size // stride), -(-size // stride))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("images", [1, 6, 16])
def test_pointwise_convolution_through_onednn_matches_conv2d(images):
    """1x1 convolutions at inference go straight to oneDNN (PyTorch's single-threaded
    dispatch would take its slower im2col path for fewer than 16 images): same output
    as F.conv2d, with and without a gradient to record, at any thread count."""
    from indexer.network.efficientnet import SameConv2d
    torch.manual_seed(images)
    conv = SameConv2d(24, 144, 1, bias=True)
    x = torch.randn(images, 24, 28, 28)
    want = torch.nn.functional.conv2d(x, conv.weight, conv.bias).detach()
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.inference_mode():
                torch.testing.assert_close(conv(x), want, atol=1e-5, rtol=1e-5)
        got = conv(x)  # training: PyTorch's own dispatch, gradients flow
        got.sum().backward()
        assert conv.weight.grad is not None
        torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_the_pixels_stand_in_is_fixed_cheap_and_says_it_is_no_trademark_encoder(caplog):
    """`--encoder pixels`: the same vectors in every process (a seeded projection), the
    encoder's usual shape and normalisation, and a loud warning."""
    with caplog.at_level(logging.WARNING, logger="indexer.network.encoder"):
        a = load_encoder("pixels", "cpu", "torch")
    assert "NO trademark encoder" in caplog.text
    b = load_encoder("pixels", "cpu", "auto", 1)
    marks = [prepare(p.read_bytes(), a.preprocess)
             for p in sorted((SAMPLES / "registry").iterdir())[:6]]
    da, db = a.descriptors(marks), b.descriptors(marks)
    assert da.shape == (6, a.descriptor_dim)
    np.testing.assert_allclose(np.linalg.norm(da, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(da, db, atol=1e-4)  # PyTorch and OpenVINO alike
    assert a.identity == b.identity and a.identity.name == "pixels-16x16-512"
    assert not np.allclose(da[0], da[1])  # different marks, different vectors
