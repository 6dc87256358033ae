"""GPU paths against their CPU twins; skipped where CUDA or faiss-gpu is missing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from indexer.index import vectors
from indexer.index.faiss_gpu import usable_gpus
from indexer.network.encoder import GPU_BATCH, load_encoder
from server.engine import EngineConfig, SearchEngine
from tests.conftest import SAMPLES, sample_queries

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_faiss_gpu = pytest.mark.skipif(usable_gpus() == 0, reason="FAISS has no usable GPU")


@needs_cuda
def test_fp16_gpu_encoder_matches_the_cpu_one(engine):
    images = [engine.prepare(p.read_bytes()).array
              for p in sorted((SAMPLES / "registry").glob("*.png"))[:16]]
    cpu = engine.encoder.encode(images)
    gpu = load_encoder(device="cuda").with_projection(engine.encoder.projection).encode(images)
    assert (np.sum(cpu * gpu, axis=1) > 0.995).all()


@needs_faiss_gpu
@pytest.mark.parametrize("factory", ["Flat", "IVF16,SQ8"])
def test_gpu_search_matches_the_cpu_search(factory):
    rng = np.random.default_rng(0)
    db = rng.standard_normal((4000, 64)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    index = vectors.new_index(64, factory)
    vectors.train(index, db)
    vectors.add(index, np.arange(4000) * 5 + 1, db)
    params = {"nprobe": 16} if "IVF" in factory else {}
    cpu = vectors.Searcher(index, params)
    gpu = vectors.Searcher(index, params, use_gpu=True)
    assert gpu.on_gpu and not cpu.on_gpu
    _, want = cpu.search(db[:50], 5)
    _, got = gpu.search(db[:50], 5)
    assert (got[:, 0] == want[:, 0]).all()  # fp16 GPU codes may reorder near-ties below
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, want)]) > 0.9


@needs_cuda
def test_the_gpu_engine_answers_as_the_cpu_engine(engine, sample_index):
    """Encoder in fp16 on the GPU, index searched on the GPU (where FAISS has one): the
    same first serial and the same yes/no as the CPU engine for the known sample queries."""
    gpu_encoder = load_encoder(device="cuda")
    assert gpu_encoder.default_batch == GPU_BATCH
    gpu = SearchEngine.open(sample_index, gpu_encoder, EngineConfig(gpu_index=True))
    try:
        assert gpu.searcher.on_gpu == (usable_gpus() > 0)
        rows = sample_queries("known")[:GPU_BATCH]
        arrays = [engine.prepare(r["path"].read_bytes()) for r in rows]
        want = [engine.decide(h, engine.resolve_threshold(None), 5)
                for h in engine.search(arrays, 5)]
        got = [gpu.decide(h, gpu.resolve_threshold(None), 5) for h in gpu.search(arrays, 5)]
        same_first = np.mean([g.hits[0].serial == w.hits[0].serial for g, w in zip(got, want)])
        same_answer = np.mean([g.exists == w.exists for g, w in zip(got, want)])
        assert same_first >= 0.98 and same_answer >= 0.95, (same_first, same_answer)
    finally:
        gpu.close()
