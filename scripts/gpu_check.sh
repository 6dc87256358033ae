#!/usr/bin/env bash
# Everything a lent GPU machine is wanted for, in one run of about 8 minutes (README,
# "On a GPU"): whether FAISS can run on the GPU (indexer.index.faiss_gpu), the `gpu` tests,
# and bench.speed's encoder, service and vector-search figures on that machine.
#
# Through the device tool, from the repository root: the machine has torch, numpy,
# Pillow, protobuf, tqdm and prometheus-client; the rest travels as wheels for Python 3.12
# (git-ignored). FAISS with H100/H200 kernels and what the machine lacks (grpcio >= 1.85)
# are too big to travel with the encoder's weights in one call: scripts/gpu/prepare_faiss_cuda.sh
# says how two calls on one warm machine carry them (2026-12-04: docs/speed.md, "On a GPU").
# With a FAISS that fits (faiss-cpu, say), wheels in .whl/ and one call:
#   command: bash scripts/gpu_check.sh      timeout_s: 560      carry: .whl
# Its 8 files come back from $OUT. SIZES=10000,100000,1000000 adds 1 M vectors (the
# IVF builds need FAISS on the GPU to fit in the time).
set -uo pipefail
out=${OUT:-out/gpu-check}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}

{ nvidia-smi -L || echo "no nvidia-smi"
  "$py" -c "import torch, faiss; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'faiss', faiss.__version__)"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
"$py" -c "import logging; logging.basicConfig(level=logging.INFO)
from indexer.index.faiss_gpu import usable_gpus
print('FAISS GPUs usable:', usable_gpus())" 2>&1 | tee "$out/faiss_gpu.txt"
timeout 150 "$py" -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.txt"
timeout 330 "$py" -m bench.speed --out "$out" --sizes "${SIZES:-10000,100000}" \
    --hnsw-max-n 100000 --milvus-max-n 0 --seconds 5 2>&1 | tee "$out/bench.log"
