"""The encoder's settings a command line needs before anything heavy is imported: its
name, its batch sizes, and the arguments that choose it. No torch here, so `--help` of
the indexer and the server answers at once."""
from __future__ import annotations

import argparse
import os

DEFAULT_ENCODER = "efficientnet-lite0"
# A stand-in with no network: a fixed random projection of a 16x16 thumbnail to 512-d, for
# measuring the pipeline around the encoder at millions of marks
# (indexer.network.encoder.PixelProjection).
PIXELS_ENCODER = "pixels"
# Marks per forward pass where the encoder is fastest per image on 2 CPU cores: batches
# of 4-8 marks (8-16 network images with two views); at 16 marks it is 1.5x slower per
# image, at 32 nearly 2x, as activations outgrow the cache. GPU_BATCH on a GPU.
CPU_BATCH = 8
# On a GPU a pass of 64 marks costs about twice a pass of one (H200, fp16: 12 vs 6 ms,
# 5,258 vs 169 images/s): launches, not arithmetic, set the time of small batches.
GPU_BATCH = 64
# What runs the network (indexer.network.encoder.load_encoder): OpenVINO on a CPU where it
# works ("auto"), or always ("openvino"), or PyTorch ("torch").
RUNTIMES = ("auto", "openvino", "torch")


def add_encoder_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("encoder")
    g.add_argument("--encoder", default=DEFAULT_ENCODER,
                   help=f"{DEFAULT_ENCODER!r} (built in), a TorchScript file mapping a float "
                        f"batch (N,3,H,W) to (N,D) vectors, or {PIXELS_ENCODER!r}: a stand-in "
                        "for timing the pipeline at scale, no trademark encoder "
                        "(default: %(default)s)")
    g.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda "
                                                  "(default: cuda when available)")
    g.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="CPU threads for the encoder (default: %(default)s)")
    g.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="what runs the networks (the encoder, and a server's detector) on a "
                        "CPU: OpenVINO where it is installed and converts them, else PyTorch "
                        "(auto), or insist on one "
                        "(default: %(default)s)")
