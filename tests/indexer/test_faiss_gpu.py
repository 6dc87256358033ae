"""The check that FAISS can run on the GPUs it reports, before anything is copied there."""
from __future__ import annotations

import numpy as np

from indexer.index import faiss_gpu, vectors


def test_a_child_that_aborts_is_reported_and_the_parent_goes_on():
    """What the faiss-gpu wheel does on a GPU it has no kernels for."""
    problem = faiss_gpu.probe(
        "import os, sys\n"
        "sys.stderr.write('Faiss assertion failed: CUDA error 209 no kernel image\\n')\n"
        "sys.stderr.flush()\nos.abort()\n")
    assert problem is not None
    assert "signal 6" in problem and "CUDA error 209" in problem


def test_a_child_that_fails_or_hangs_is_reported():
    assert "exit status 3" in faiss_gpu.probe("raise SystemExit(3)")
    assert "over 1 s" in faiss_gpu.probe("import time; time.sleep(30)", timeout=1)


def test_the_probe_passes_where_faiss_works():
    # The probe run against a CPU index (its GPU copy made the identity): its own check
    # must hold on a working index, or every GPU would be refused.
    assert faiss_gpu.probe("import faiss\nfaiss.index_cpu_to_all_gpus = lambda index: index\n"
                           + faiss_gpu.PROBE) is None


def test_without_a_usable_gpu_the_searcher_stays_on_the_cpu():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((200, 16)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    index = vectors.new_index(16, "Flat")
    vectors.add(index, np.arange(200) * 3, db)
    searcher = vectors.Searcher(index, use_gpu=True)
    assert searcher.on_gpu == (faiss_gpu.usable_gpus() > 0)
    _, ids = searcher.search(db[:10], 1)
    assert (ids[:, 0] == np.arange(10) * 3).all()
