"""`python -m server --index DIR`: load the encoder and index, serve gRPC until SIGTERM."""
from __future__ import annotations

import argparse
import itertools
import logging
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from indexer.index.store import IndexFormatError, current_version_dir
from indexer.network.options import CPU_BATCH, GPU_BATCH, add_encoder_args
from proto import trademark_search_pb2 as pb
from proto import trademark_search_pb2_grpc as pb_grpc
from server.auth import ADMIN_TOKEN_ENV, TOKEN_ENV, BearerTokenInterceptor, TokenError, read_token
from server.settings import DEFAULT_MAX_K, BatchConfig
from server.tls import TLSError, server_credentials

# The encoder, the engine and the service import torch and FAISS: serve imports them when
# called, so that `--help` and bad arguments answer at once.
if TYPE_CHECKING:
    from server.service import TrademarkSearchServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TrademarkSearch"].full_name
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


def add_health(server: grpc.Server) -> health.HealthServicer:
    """The standard grpc.health.v1 service, SERVING for "" and for TrademarkSearch."""
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    set_serving(servicer, True)
    return servicer


def set_serving(servicer: health.HealthServicer, serving: bool) -> None:
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ("", SERVICE_NAME):
        servicer.set(name, status)


class Readiness:
    """Health says SERVING once the encoder is warm, not merely once the port is open: on a
    GPU the warm-up plans each padded batch size (19.5 s on an H200, 2026-12-04), and a
    load balancer that routed requests meanwhile would leave them queued that long. On a
    CPU it is one small batch (~40 ms). Whichever of the two comes second (the health
    service, the first lane warm) turns SERVING on; the lock makes that exactly once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._warm = False
        self._health: health.HealthServicer | None = None

    def health_started(self, servicer: health.HealthServicer) -> None:
        with self._lock:
            self._health = servicer
            if not self._warm:
                set_serving(servicer, False)

    def warm(self) -> None:
        with self._lock:
            if not self._warm and self._health is not None:
                set_serving(self._health, True)
            self._warm = True


SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # One server per port: with SO_REUSEPORT (gRPC's default on Linux) a second server on a
    # busy port starts too, and the two split the traffic, an old index answering on.
    ("grpc.so_reuseport", 0),
    # Find dead peers of long streams: ping after 60 s idle, drop after 20 s unanswered,
    # and accept clients' own pings (every 30 s at most) even between calls.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
]


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def add_reflection(server: grpc.Server, services: tuple[str, ...]) -> None:
    """Server reflection in both protocols: v1alpha (grpcio-reflection) and v1, which
    grpcurl and Postman ask first. grpcio-reflection has no v1 yet; the two protocols'
    messages are the same on the wire, so the v1alpha servicer answers under v1's name."""
    names = (*services, reflection.SERVICE_NAME, REFLECTION_V1)
    reflection.enable_server_reflection(names, server)
    servicer = reflection.ReflectionServicer(names)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}),))


def create_server(address: str, servicer: TrademarkSearchServicer, max_workers: int = 16,
                  token: str | None = None, max_concurrent_rpcs: int | None = None,
                  admin_token: str | None = None,
                  credentials: grpc.ServerCredentials | None = None
                  ) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A server bound to `address`, not yet started; port 0 picks a free one.

    With `token`, every RPC but the health checks needs `authorization: Bearer <token>`;
    the admin RPC (Reload) needs `admin_token` and is refused without one.
    With `credentials` (server.tls), it speaks TLS only.
    Past `max_concurrent_rpcs` RPCs in flight, gRPC answers RESOURCE_EXHAUSTED at once
    instead of queueing without bound.
    """
    interceptors = [BearerTokenInterceptor(token, admin_token)]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=interceptors, options=SERVER_OPTIONS,
        maximum_concurrent_rpcs=max_concurrent_rpcs)
    pb_grpc.add_TrademarkSearchServicer_to_server(servicer, server)
    health_servicer = add_health(server)
    add_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
    try:
        port = (server.add_secure_port(address, credentials) if credentials
                else server.add_insecure_port(address))
    except RuntimeError:  # gRPC's "Failed to bind to address": taken, by a server or not
        port = 0
    if port == 0:
        server.stop(None)  # an unstarted gRPC server left to the garbage collector aborts
        raise OSError(f"cannot listen on {address}: address already in use (another server "
                      "running? pick a free --port), or not an address of this machine")
    return server, port, health_servicer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server",
                                description="Serve trademark search over gRPC.")
    g = p.add_argument_group("index")
    g.add_argument("--index", required=True, type=Path, help="index directory (indexer build)")
    g.add_argument("--threshold", type=float, default=None,
                   help="existence threshold in [0, 1] (default: the index's calibrated one)")
    g.add_argument("--max-k", type=int, default=DEFAULT_MAX_K,
                   help="largest k a request may ask for (default: %(default)s)")
    g.add_argument("--mmap", action="store_true",
                   help="memory-map the index instead of reading it into memory (fast start, "
                        "pages shared between processes)")
    g.add_argument("--nprobe", type=int, default=None,
                   help="IVF lists searched per query (default: the value tuned at build)")
    g.add_argument("--ef-search", type=int, default=None,
                   help="HNSW search breadth (default: the value tuned at build)")
    g.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                   help="look at the index's CURRENT every SECONDS and load the version it "
                        "names when that changes: replicas sharing one index directory follow "
                        "each build (default: off; SIGHUP or the Reload RPC reload)")
    g = p.add_argument_group("network")
    g.add_argument("--detector", default="shipped", metavar="FILE|shipped|none",
                   help="finds the marks in photographs, each then answered on its own "
                        "(indexer.network.detector); 'none' searches every picture whole "
                        "(default: %(default)s)")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    g.add_argument("--port", type=int, default=50051, help="port; 0 picks a free one "
                                                           "(default: %(default)s)")
    g.add_argument("--rpc-workers", type=int, default=64,
                   help="RPCs handled at the same time (default: %(default)s)")
    g.add_argument("--max-concurrent-rpcs", type=int, default=256,
                   help="RPCs in flight, queued ones included, before RESOURCE_EXHAUSTED "
                        "(default: %(default)s)")
    g.add_argument("--grace", type=float, default=5.0,
                   help="seconds in-flight RPCs get on SIGTERM (default: %(default)s)")
    g.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on HOST:PORT/metrics (0: a free port; "
                        "default: off)")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch", type=int, default=None,
                   help=f"most images encoded together, across concurrent requests "
                        f"(default: {CPU_BATCH} on CPU, {GPU_BATCH} on a GPU)")
    g.add_argument("--max-wait-ms", type=float, default=BatchConfig.max_wait_ms,
                   help="how long a busy server waits to fill a batch; a lone request never "
                        "waits (default: %(default)s)")
    g.add_argument("--decode-workers", type=int, default=BatchConfig.decode_workers,
                   help="threads that decode a batch; 0 decodes in the encoder lane's thread, "
                        "fastest on 2 cores (default: cores beyond two, here %(default)s)")
    g.add_argument("--lanes", type=int, default=None,
                   help="encoder lanes: batches encoded side by side, each with its share of "
                        "--threads (default: 2 on a CPU with 2+ threads, 1 on a GPU)")
    g.add_argument("--stream-batch", type=int, default=None,
                   help=f"stream items decoded and submitted together (default: {CPU_BATCH} "
                        f"on CPU, {GPU_BATCH} on a GPU)")
    g = p.add_argument_group("access")
    g.add_argument("--token-file", type=Path,
                   help=f"require 'authorization: Bearer <token>' with the token in this file "
                        f"(or in ${TOKEN_ENV}); health checks stay open")
    g.add_argument("--tls-cert", type=Path, help="PEM certificate: serve TLS only")
    g.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    g.add_argument("--tls-client-ca", type=Path,
                   help="PEM CA: require client certificates it signed (mutual TLS)")
    g.add_argument("--admin-token-file", type=Path,
                   help=f"token for the Reload RPC (or ${ADMIN_TOKEN_ENV}); without one, "
                        "Reload is refused and only SIGHUP reloads")
    add_encoder_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def set_encoder_threads(n: int) -> None:
    """The calling thread's OpenMP threads, torch's and FAISS's (each library has its own
    OpenMP runtime; both keep the count per thread). An encoder lane calls it."""
    import faiss
    import torch
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def watch_index(root: Path, servicer: TrademarkSearchServicer, interval: float,
                stopped: threading.Event) -> threading.Thread:
    """A thread that reloads whenever the index's CURRENT names another version than the
    one served, until `stopped`. A version that fails to load is not tried again until
    CURRENT changes once more (the previous one serves on, as with SIGHUP)."""
    def run() -> None:
        failed = None
        while not stopped.wait(interval):
            try:
                live = current_version_dir(root).name
            except IndexFormatError:
                continue  # mid-rewrite, or the directory went away: the old version serves
            engine = servicer.engine
            if live in (failed, engine.index.manifest.version if engine else None):
                continue
            try:
                servicer.reload()
                failed = None
            except IndexFormatError as e:
                log.error("version %s failed to load, still serving the previous one: %s",
                          live, e)
                failed = live

    thread = threading.Thread(target=run, name="watch-index", daemon=True)
    thread.start()
    return thread


def open_detector(spec: str, runtime: str = "auto", threads: int | None = None):
    """--detector: the shipped weights, a file of them, or none; run as --runtime says,
    on --threads (OpenVINO's)."""
    if spec == "none":
        return None
    from indexer.network.detector import DETECTOR_FILE, load_detector
    return load_detector(DETECTOR_FILE if spec == "shipped" else spec, runtime, threads)


def serve(args: argparse.Namespace) -> int:
    import torch

    from indexer import words
    from indexer.network.encoder import default_lanes, load_encoder
    from server.engine import EngineConfig, SearchEngine
    from server.service import TrademarkSearchServicer
    t0 = time.perf_counter()
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca and
                                                             not args.tls_cert):
        raise TLSError("--tls-cert and --tls-key go together (and --tls-client-ca needs them)")
    if args.watch is not None and not args.watch > 0:
        raise ValueError(f"--watch takes a number of seconds > 0, got {args.watch}")
    credentials = (server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
                   if args.tls_cert else None)
    token = read_token(args.token_file)
    admin_token = read_token(args.admin_token_file, ADMIN_TOKEN_ENV)
    # Only the batcher's first lane runs the encoder with several threads. libgomp throttles
    # its idle-thread spinning once OpenMP teams hold more threads than there are cores,
    # and a second team (the main thread's, formed while loading) made every image take
    # twice as long (33 vs 17 ms on 2 cores). So loading runs single-threaded.
    torch.set_num_threads(1)
    threads = max(1, args.threads)
    encoder = load_encoder(args.encoder, args.device, args.runtime, threads)
    params = {k: v for k, v in (("nprobe", args.nprobe), ("efSearch", args.ef_search))
              if v is not None}
    config = EngineConfig(args.threshold, args.max_k, args.mmap, params,
                          gpu_index=encoder.device.type == "cuda",
                          detector=open_detector(args.detector, args.runtime, threads),
                          read_threads=threads)
    def loader() -> SearchEngine:
        return SearchEngine.open(args.index, encoder, config)

    lanes = default_lanes(encoder.device.type, threads) if args.lanes is None else args.lanes
    batching = BatchConfig(encoder.default_batch if args.max_batch is None else args.max_batch,
                           args.max_wait_ms, args.decode_workers, lanes, threads)
    stream_batch = encoder.default_batch if args.stream_batch is None else args.stream_batch
    if stream_batch < 1:
        raise ValueError(f"--stream-batch must be >= 1, got {stream_batch}")

    warmed = itertools.count()  # next() is atomic: exactly one lane draws 0
    readiness = Readiness()

    def encoder_thread_init() -> None:
        # Before the first request (those that come meanwhile wait in the queue): the
        # first encoding folds the network (Encoder._infer, 40 ms) and sets up oneDNN's
        # kernels for a lone request's batch; on a GPU, every padded batch size, as cuDNN
        # plans each new shape slowly.
        # Each lane warms its own threads; the first to finish says it for all of them.
        t = time.perf_counter()
        largest = max(batching.max_batch, stream_batch) if encoder.pad_batches else 1
        encoder.warm_up(largest)
        level = logging.INFO if next(warmed) == 0 else logging.DEBUG
        log.log(level, "encoder warmed up for batches of up to %d in %.2f s (%s)", largest,
                time.perf_counter() - t, threading.current_thread().name)
        readiness.warm()

    engine = loader()
    servicer = TrademarkSearchServicer(engine, stream_batch=stream_batch, loader=loader,
                                       batching=batching,
                                       encoder_thread_init=encoder_thread_init,
                                       set_threads=set_encoder_threads)
    if engine.words_threshold is not None and words.can_read():
        # A register with words reads them in photographs: the OCR's models are compiled
        # now, beside the encoder's warm-up, not at the first photograph (its Search took
        # 1.9 s against ~0.6 s after). A photograph that comes meanwhile waits for them.
        # Not a daemon: a server stopped while OpenVINO compiles aborted at exit.
        threading.Thread(target=words.warm_up, args=((1, config.read_threads),),
                         name="word-reader-warm-up").start()
    host = f"[{args.host}]" if ":" in args.host else args.host
    try:
        server, port, health_servicer = create_server(f"{host}:{args.port}", servicer,
                                                      args.rpc_workers, token,
                                                      args.max_concurrent_rpcs, admin_token,
                                                      credentials)
    except OSError:
        servicer.close()
        raise
    readiness.health_started(health_servicer)
    metrics_port = None
    if args.metrics_port is not None:
        metrics_port = servicer.metrics.serve(args.host, args.metrics_port)
    if token is None:
        log.warning("no token configured: any caller that reaches %s can search", args.host)
    server.start()
    log.info("ready in %.2f s", time.perf_counter() - t0)
    print(f"listening on {args.host}:{port}{' (TLS)' if credentials else ''}", flush=True)
    if metrics_port is not None:
        print(f"metrics on http://{args.host}:{metrics_port}/metrics", flush=True)

    stopped = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: stopping, %.0f s grace", signum, args.grace)
        health_servicer.enter_graceful_shutdown()
        server.stop(args.grace).wait()
        stopped.set()

    def on_hangup(_signum, _frame):
        # Off the signal handler: loading an index can take a while.
        threading.Thread(target=servicer.try_reload, name="reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    if args.watch is not None:
        watch_index(args.index, servicer, args.watch, stopped)
    while not stopped.wait(1.0):
        pass
    servicer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from indexer.network.detector import DetectorError
    from indexer.network.encoder import EncoderError
    try:
        return serve(args)
    except (IndexFormatError, EncoderError, DetectorError, ValueError, TokenError, TLSError,
            OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
