"""The encoder through OpenVINO: the same descriptors as PyTorch, a cache that survives, a
fallback that says so."""
from __future__ import annotations

import logging
import sys
import threading
import time

import numpy as np
import pytest
import torch

from indexer.network import openvino_runtime
from indexer.network.encoder import EncoderError, load_encoder
from indexer.network.preprocess import prepare
from tests.conftest import SAMPLES

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def marks(encoder):
    files = sorted((SAMPLES / "registry").iterdir())[:12]
    return [prepare(p.read_bytes(), encoder.preprocess) for p in files]


def test_openvino_descriptors_equal_pytorch_ones(encoder, torch_encoder, marks):
    assert encoder.runtime == "openvino" and torch_encoder.runtime == "torch"
    assert encoder.identity == torch_encoder.identity  # an index serves either
    for batch in (marks[:1], marks[:5], marks):
        a, b = encoder.descriptors(batch), torch_encoder.descriptors(batch)
        assert a.shape == b.shape == (len(batch), encoder.descriptor_dim)
        assert (a * b).sum(axis=1).min() >= 0.9999
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_a_lane_with_a_share_of_the_threads_gets_the_same_vectors(encoder, marks):
    """A server lane sets one thread (server.app.set_encoder_threads): OpenVINO then runs
    it on a one-thread stream of a model of its own, with the same function."""
    whole = encoder.descriptors(marks[:4])
    out = {}

    def lane():
        torch.set_num_threads(1)
        out["lane"] = encoder.descriptors(marks[:4])

    t = threading.Thread(target=lane)
    t.start()
    t.join()
    assert (whole * out["lane"]).sum(axis=1).min() >= 0.99999
    assert len(encoder._compiled._compiled) == 2  # all the threads, and a share of them


def test_the_first_inference_runs_alone(monkeypatch, encoder):
    """Two lanes' first inferences at once deadlocked inside OpenVINO's binding (seen in a
    build's two encoder lanes): the process's first inference runs alone, a second lane
    waits for it, and both get the vectors one lane alone gets."""
    net = encoder._compiled
    size = encoder.preprocess.size
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    expected = net(images)
    monkeypatch.setattr(openvino_runtime, "_first_inference_done", threading.Event())
    running = most = 0
    count = threading.Lock()

    class Request:  # a real infer request that counts the inferences under way
        def __init__(self, request):
            self._request = request

        def infer(self, *args, **kwargs):
            nonlocal running, most
            with count:
                running += 1
                most = max(most, running)
            time.sleep(0.2)  # long enough for the other lane to arrive
            try:
                return self._request.infer(*args, **kwargs)
            finally:
                with count:
                    running -= 1

    class Compiled:
        def __init__(self, compiled):
            self._compiled = compiled

        def create_infer_request(self):
            return Request(self._compiled.create_infer_request())

    real = net.compiled
    monkeypatch.setattr(net, "compiled", lambda threads: Compiled(real(threads)))
    start, out = threading.Barrier(2), {}

    def lane(name):
        torch.set_num_threads(1)
        start.wait()
        out[name] = net(images, threads=1)

    lanes = [threading.Thread(target=lane, args=(n,)) for n in ("a", "b")]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join(60)
    assert most == 1
    for name in ("a", "b"):
        assert (out[name] * expected).sum(axis=1).min() >= 0.99999


def test_the_conversion_is_cached_and_written_whole(tmp_path, torch_encoder, marks):
    net = torch_encoder._infer
    cfg, ident = torch_encoder.preprocess, torch_encoder.identity.to_dict()
    first = openvino_runtime.convert(net, cfg.size, cfg.mean, cfg.std, ident, 2, tmp_path)
    second = openvino_runtime.convert(net, cfg.size, cfg.mean, cfg.std, ident, 2, tmp_path)
    assert (first.source, second.source) == ("converted", "cache")
    flat = np.stack(marks[:3]).reshape(-1, cfg.size, cfg.size, 3)
    np.testing.assert_array_equal(first(flat), second(flat))
    models = list((tmp_path / "openvino").iterdir())
    assert len(models) == 1 and (models[0] / "model.xml").is_file()  # no temporary left
    # Another identity (other weights) is another model, never the cached one.
    other = dict(ident, weights_sha256="0" * 64)
    assert openvino_runtime.convert(net, cfg.size, cfg.mean, cfg.std, other, 2,
                                    tmp_path).source == "converted"


def test_without_openvino_the_encoder_falls_back_to_pytorch(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with caplog.at_level(logging.WARNING, logger="indexer.network.encoder"):
        encoder = load_encoder()
    assert encoder.runtime == "torch"
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "OpenVINO unavailable" in said[0] and "pip install" in said[0]
    with pytest.raises(EncoderError, match="--runtime torch"):
        load_encoder(runtime="openvino")


def test_a_network_that_does_not_convert_falls_back(monkeypatch, caplog, marks,
                                                    torch_encoder):
    def broken(*args, **kwargs):
        raise openvino_runtime.OpenVinoUnavailable("RuntimeError: unsupported operation")
    monkeypatch.setattr(openvino_runtime, "convert", broken)
    with caplog.at_level(logging.WARNING, logger="indexer.network.encoder"):
        encoder = load_encoder()
    assert encoder.runtime == "torch" and "unsupported operation" in caplog.text
    np.testing.assert_array_equal(encoder.descriptors(marks[:2]),
                                  torch_encoder.descriptors(marks[:2]))


def test_unknown_runtime_is_refused():
    with pytest.raises(EncoderError, match="auto, openvino, torch"):
        load_encoder(runtime="onnx")


def test_an_unwritable_cache_converts_each_time(tmp_path, torch_encoder, marks, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    cfg = torch_encoder.preprocess
    with caplog.at_level(logging.WARNING, logger="indexer.network.openvino_runtime"):
        net = openvino_runtime.convert(torch_encoder._infer, cfg.size, cfg.mean, cfg.std,
                                       torch_encoder.identity.to_dict(), 2, blocked)
    assert net.source == "converted" and "cannot cache" in caplog.text
    flat = np.stack(marks[:2]).reshape(-1, cfg.size, cfg.size, 3)
    with torch.inference_mode():
        ref = torch_encoder._infer(torch.from_numpy(
            (flat.transpose(0, 3, 1, 2).astype(np.float32) - cfg.mean) / cfg.std)).numpy()
    assert (net(flat) * ref).sum(axis=1).min() >= 0.9999


def test_a_torchscript_openvino_cannot_convert_falls_back_under_auto(tmp_path, caplog,
                                                                     monkeypatch):
    """A real conversion failure, not a stand-in: OpenVINO's frontend raises
    OpConversionFailure (a plain Exception) for a scripted F.normalize (aten::div with a
    None out). `auto` goes on with PyTorch and says why in one line; `openvino` refuses."""
    monkeypatch.setenv("TRADEMARK_SEARCH_CACHE", str(tmp_path / "cache"))

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=4)

        def forward(self, x):
            return torch.nn.functional.normalize(self.conv(x).mean((2, 3)), dim=1)

    path = tmp_path / "tiny.pt"
    torch.jit.script(Tiny()).save(str(path))
    with caplog.at_level(logging.WARNING, logger="indexer.network.encoder"):
        encoder = load_encoder(str(path), "cpu", "auto", 1)
    assert encoder.runtime == "torch"
    said = [r.getMessage() for r in caplog.records if r.name == "indexer.network.encoder"]
    assert len(said) == 1 and "OpConversionFailure" in said[0] and "aten::div" in said[0]
    with pytest.raises(EncoderError, match="--runtime torch"):
        load_encoder(str(path), "cpu", "openvino", 1)


def _same_detections(a, b):
    """The same boxes (a pixel apart at most: rounding) with the same scores, in order."""
    assert [len(x) for x in a] == [len(x) for x in b]
    for x, y in zip(a, b):
        for d, e in zip(x, y):
            assert max(abs(p - q) for p, q in zip(d.box, e.box)) <= 1
            assert abs(d.score - e.score) < 1e-4


def test_the_detector_through_openvino_finds_what_pytorch_finds(detector):
    """The shipped detector runs through OpenVINO (the server's and the build's); PyTorch's
    finds the same marks in the same scenes, in a batch and one by one."""
    import random

    from indexer.network.detector import load_detector
    from indexer.network.scenes import make_scene

    on_torch = load_detector(runtime="torch")
    assert detector.runtime == "openvino" and on_torch.runtime == "torch"
    rng = random.Random(5)
    marks = sorted((SAMPLES / "registry").glob("*.png"))
    scenes = [make_scene(rng, marks, rng.randrange(3)).image for _ in range(6)]
    found = detector.detect(scenes)
    assert sum(map(len, found)) >= 4  # not a test of empty lists
    _same_detections(found, on_torch.detect(scenes))
    _same_detections(found, [detector.detect([s])[0] for s in scenes])


def test_without_openvino_the_detector_falls_back_to_pytorch(monkeypatch, caplog):
    import functools

    from indexer.network import detector as det

    monkeypatch.setattr(det, "_load", functools.cache(det._load.__wrapped__))  # load anew
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with caplog.at_level(logging.WARNING, logger="indexer.network.detector"):
        assert det.load_detector().runtime == "torch"
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "OpenVINO unavailable" in said[0] and "pip install" in said[0]
    with pytest.raises(det.DetectorError, match="--runtime torch"):
        det.load_detector(runtime="openvino")
    with pytest.raises(det.DetectorError, match="auto, openvino, torch"):
        det.load_detector(runtime="onnx")
