"""The encoder's limit on this machine, and the real server measured against it.

Model-only: preprocessed images (decoding excluded) through the encoder and projection,
batch by batch, in this process: the most any server on this machine could do.
Server: `python -m server` in its own process, driven over loopback gRPC by client
threads of this process (each client with its own channel), one request in flight per
client, for a fixed time.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from client.api import SearchClient
from indexer.network.encoder import Encoder, lane_threads
from indexer.sources import iter_image_files
from proto import trademark_search_pb2 as pb


def model_images_per_s(encoder: Encoder, arrays: list[np.ndarray], batch: int,
                       min_images: int = 64, repeats: int = 3) -> float:
    """Best of `repeats` timed runs of at least `min_images` images in batches of `batch`."""
    encoder.encode(arrays[:batch])  # warm-up: allocator and kernel caches
    runs = max(1, min_images // batch)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for r in range(runs):
            start = (r * batch) % max(1, len(arrays) - batch + 1)
            encoder.encode(arrays[start:start + batch])
        best = max(best, runs * batch / (time.perf_counter() - t0))
    return best


def lanes_images_per_s(encoder: Encoder, arrays: list[np.ndarray], batch: int, lanes: int,
                       threads: int, min_images: int = 64) -> float:
    """Images/s of `lanes` threads side by side, each encoding batches of `batch` with
    their share of `threads` (lane_threads): the server's encoder lanes under load
    (server/batcher.py), without the server."""
    rounds = max(1, min_images // (lanes * batch))
    ready, finished = threading.Barrier(lanes + 1), threading.Barrier(lanes + 1)

    def lane(i: int) -> None:
        torch.set_num_threads(lane_threads(threads, lanes))  # this thread's own count
        encoder.encode(arrays[:batch])  # warm-up
        ready.wait()
        for r in range(rounds):
            start = ((r * lanes + i) * batch) % max(1, len(arrays) - batch + 1)
            encoder.encode(arrays[start:start + batch])
        finished.wait()

    workers = [threading.Thread(target=lane, args=(i,), daemon=True) for i in range(lanes)]
    for t in workers:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    finished.wait()
    elapsed = time.perf_counter() - t0
    for t in workers:
        t.join()
    return rounds * lanes * batch / elapsed


class ModelReference:
    """Model-only figures taken between the server's measurements.

    A shared 2-core machine drifts by 20% within minutes, so a ratio of two figures
    measured minutes apart says more about the drift than about the server. Each server
    figure is divided by model figures taken right beside it (paired), not by the table
    measured at the start. With `lanes` > 1, the model is also run the way the server's
    encoder lanes run it, and the better of the two ways is the limit.
    """

    def __init__(self, encoder: Encoder, arrays: list[np.ndarray], lanes: int = 1,
                 threads: int = 1):
        self.encoder, self.arrays = encoder, arrays
        self.lanes, self.threads = lanes, threads

    def one_image_s(self, i: int) -> float:
        t0 = time.perf_counter()
        self.encoder.encode(self.arrays[i % len(self.arrays)][None])
        return time.perf_counter() - t0

    def figures(self, batch: int, in_flight: int | None = None) -> dict[str, float]:
        """Images/s at `batch`: one batch at a time with all the threads ("one_lane"), and
        in the lanes side by side ("lanes", when there are several and `in_flight` images,
        default `batch` each, fill them: each lane's batch is its share, up to `batch`)."""
        out = {"one_lane": model_images_per_s(self.encoder, self.arrays, batch, repeats=1)}
        share = min(batch, (in_flight or batch * self.lanes) // self.lanes)
        if self.lanes > 1 and share >= 1:
            out["lanes"] = lanes_images_per_s(self.encoder, self.arrays, share, self.lanes,
                                              self.threads)
        return out


def latency_ms(address: str, payloads: list[bytes], calls: int = 100,
               model: ModelReference | None = None, block: int = 10,
               read_words: bool = False) -> dict:
    """One client's Search latency p50/p99; with `model`, blocks of `block` calls
    alternate with blocks of as many images through the model alone, one at a time,
    and `model_p50_ms` is their median. Each side runs warm in its block: a model call
    right after each server call ran on cold caches and threads and took ~1.5x its
    back-to-back time, which flattered the server's ratio (1.13-1.18x, against 1.46-1.53x
    in blocks; 2-core EPYC). `read_words`: every Search asks for the picture's words."""
    times, model_times = [], []
    with SearchClient(address) as client:
        for p in payloads[:3]:
            client.search(p, k=10)  # warm-up
        for start in range(0, calls, block):
            for i in range(start, min(calls, start + block)):
                t0 = time.perf_counter()
                client.search(payloads[i % len(payloads)], k=10, read_words=read_words)
                times.append(time.perf_counter() - t0)
            if model is not None:
                model_times += [model.one_image_s(i)
                                for i in range(start, min(calls, start + block))]
    ms = np.array(times) * 1e3
    out = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
    if model_times:
        out["model_p50_ms"] = float(np.median(model_times) * 1e3)
    return out


def throughput(address: str, payloads: list[bytes], clients: int, seconds: float,
               warmup: float = 2.0) -> dict:
    """Requests/s with `clients` concurrent callers, counted after `warmup` seconds."""
    counts, errors = [0] * clients, [0] * clients
    counting, stop = threading.Event(), threading.Event()

    def worker(i: int) -> None:
        with SearchClient(address, timeout=120) as client:
            n = i
            while not stop.is_set():
                try:
                    client.search(payloads[n % len(payloads)], k=10)
                    counts[i] += counting.is_set()
                except grpc.RpcError:
                    errors[i] += 1
                n += clients

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    counting.set()
    t0 = time.perf_counter()
    time.sleep(seconds)
    done, elapsed = sum(counts), time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(timeout=120)
    return {"clients": clients, "requests_per_s": done / elapsed, "errors": sum(errors)}


def stream_rate(address: str, payloads: list[bytes], items: int) -> dict:
    requests = (pb.SearchRequest(request_id=str(i), image=payloads[i % len(payloads)], k=10)
                for i in range(items))
    with SearchClient(address, timeout=600) as client:
        t0 = time.perf_counter()
        answers = sum(1 for _ in client.search_stream(requests))
        elapsed = time.perf_counter() - t0
    return {"items": answers, "items_per_s": answers / elapsed}


def read_payloads(folders: list[Path], limit: int = 200) -> list[bytes]:
    files = [p for f in folders for p in iter_image_files(f)]
    return [p.read_bytes() for p in files[:limit]]
