"""The server's settings that its command line shows before anything heavy is imported
(no torch here: `python -m server --help` answers at once)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from indexer.network.options import CPU_BATCH

DEFAULT_MAX_K = 1000  # FAISS GPU indexes cap k at 2048


@dataclass(frozen=True)
class BatchConfig:
    # The encoder's fastest batch on 2 CPU cores (indexer.network.options.CPU_BATCH); the server
    # passes its encoder's default_batch, GPU_BATCH on a GPU.
    max_batch: int = CPU_BATCH
    max_wait_ms: float = 2.0
    # Threads that decode a batch; 0 decodes in the lane's thread. On 2 cores that was
    # fastest (16 clients: 58 vs 49 requests/s with a 2-thread pool): the pool's hand-offs
    # cost more than its parallelism gave. Cores beyond two go to the pool.
    decode_workers: int = max(0, (os.cpu_count() or 1) - 2)
    lanes: int = 1  # encoder lanes (see the module's docstring)
    threads: int = 1  # the encoder's threads in all lanes together

    def __post_init__(self):
        least = {"max_batch": 1, "lanes": 1, "threads": 1, "max_wait_ms": 0,
                 "decode_workers": 0}
        bad = [f"{name} must be >= {low}, got {getattr(self, name)}"
               for name, low in least.items() if getattr(self, name) < low]
        if bad:
            raise ValueError("; ".join(bad))
