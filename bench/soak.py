"""A bounded soak on loopback: steady concurrent Searches against a real server process.

    python -m bench.soak --index out/demo/index --seconds 180 --clients 8

Starts `python -m server` on 127.0.0.1 (port 0), runs `--clients` threads that search
real marks back to back for `--seconds`, samples the server's resident memory
(/proc/PID/status VmRSS) every `--every` seconds, and prints one line per sample plus a
summary: requests, errors, throughput, RSS at the first sample after warm-up and at the
end, and the growth between them. Exits 1 on any error.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import grpc

from bench.procs import rss_mb, start_server, stop_server
from client.api import SearchClient


def soak(index: Path, images: list[Path], seconds: float, clients: int, every: float) -> dict:
    proc, address, _ = start_server(index)
    try:
        done, errors, stop = [0] * clients, [0] * clients, threading.Event()
        payloads = [p.read_bytes() for p in images]

        def worker(i: int) -> None:
            with SearchClient(address) as client:
                n = i
                while not stop.is_set():
                    try:
                        client.search(payloads[n % len(payloads)], k=10)
                        done[i] += 1
                    except grpc.RpcError:
                        errors[i] += 1
                    n += clients

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        samples = []
        while (elapsed := time.perf_counter() - t0) < seconds:
            time.sleep(min(every, seconds - elapsed))
            samples.append({"t": round(time.perf_counter() - t0, 1), "requests": sum(done),
                            "errors": sum(errors), "rss_mb": round(rss_mb(proc.pid), 1)})
            print(json.dumps(samples[-1]), flush=True)
        stop.set()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        stop_server(proc)
    # The first sample is taken after warm-up (model and allocator caches filled).
    base, last = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    return {"seconds": round(wall, 1), "clients": clients, "requests": sum(done),
            "errors": sum(errors), "requests_per_s": round(sum(done) / wall, 1),
            "rss_first_mb": base, "rss_last_mb": last, "rss_growth_mb": round(last - base, 1),
            "samples": samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--index", type=Path, required=True, help="index directory to serve")
    p.add_argument("--images", type=Path, default=Path("samples/queries"),
                   help="folder of query images (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--every", type=float, default=15.0, help="seconds between RSS samples")
    p.add_argument("--out", type=Path, help="write the summary as JSON here too")
    args = p.parse_args(argv)
    images = sorted(x for x in args.images.iterdir() if x.suffix.lower() in (".png", ".jpg"))
    result = soak(args.index, images, args.seconds, args.clients, args.every)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
