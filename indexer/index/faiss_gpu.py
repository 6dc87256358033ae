"""Whether FAISS can really run on this machine's GPUs, asked once, in a child process.

A faiss-gpu build without kernels for the GPU's architecture (the PyPI `faiss-gpu-cu12`
wheel on an H100 or H200: compute capability 9.0) reports the GPUs all the same, and
the first index copied to one ends the process with "CUDA error 209 no kernel image is
available" - FAISS aborts, there is no exception to catch. So a child process copies a
tiny index to every GPU and searches it first; if the child dies, FAISS stays on the CPU
and the log says why. This costs one interpreter start (a few seconds, once per
process) and only where FAISS reports a GPU.
"""
from __future__ import annotations

import functools
import logging
import subprocess
import sys

import faiss

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 180.0  # a first CUDA context can take a minute on a cold machine

# Copies a flat index to all GPUs (as training does), searches it, checks the answer.
PROBE = """
import faiss, numpy as np
x = np.eye(16, 8, dtype=np.float32)
x[8:] = -x[:8]
gpu = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(8))
gpu.add(x)
_, labels = gpu.search(x[:8], 1)
assert (labels[:, 0] == np.arange(8)).all(), labels
"""


def reported_gpus() -> int:
    """GPUs that this FAISS build says it can use (faiss-cpu may lack the call)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


@functools.cache
def usable_gpus() -> int:
    """GPUs FAISS reports and can run on; 0 when it has none or its kernels fail there."""
    n = reported_gpus()
    if n == 0:
        return 0
    problem = probe(PROBE)
    if problem:
        log.warning("FAISS reports %d GPU(s) but cannot run on them (%s); searching and "
                    "training on the CPU. Install a FAISS build with kernels for this GPU, "
                    "or faiss-cpu to skip this check", n, problem)
        return 0
    log.info("FAISS runs on %d GPU(s)", n)
    return n


def probe(script: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Run `script` in a fresh interpreter; None if it succeeded, else what went wrong."""
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"the check took over {timeout:.0f} s"
    if done.returncode == 0:
        return None
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    how = (f"killed by signal {-done.returncode}" if done.returncode < 0
           else f"exit status {done.returncode}")
    return f"{how}: {lines[-1].strip()}" if lines else how
