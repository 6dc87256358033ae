# Sourced on the lent GPU machine (scripts/gpu/prepare_faiss_cuda.sh): FAISS into /tmp/site
# once, CUDA 12 runtime and the cuBLAS-12 shim on the library path.
export PYTHONUNBUFFERED=1
if [ ! -d /tmp/site/faiss ]; then
  mkdir -p /tmp/site && python3 -c "import tarfile; tarfile.open('.gpu/faiss-cuda-sm90.tar.xz').extractall('/tmp/site')" || echo "FAISS EXTRACT FAILED"
  mkdir -p /tmp/cuda12 && cp .gpu/cuda12/* /tmp/cuda12/
fi
for d in .gpu/wheels .gpu/wheels-encoder; do
  compgen -G "$d/*.whl" >/dev/null && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $d/*.whl
done
cub=$(python3 -c "import glob,site,os;c=[p for s in site.getsitepackages() for p in glob.glob(s+'/nvidia/**/libcublas.so.13*',recursive=True)];print(os.path.dirname(c[0]) if c else '')")
echo "cuBLAS 13 at: $cub"
export LD_LIBRARY_PATH=/tmp/cuda12${cub:+:$cub}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export _FAISS_CUDA_DISABLE_PRELOAD=1
export PYTHONPATH=.:/tmp/site
# faiss-cuda links its own libstdc++ statically and exports it: loaded after torch, its
# index_factory throws std::bad_cast (two copies of the locale state); preloaded, one copy.
export LD_PRELOAD=$(echo /tmp/site/faiss_cuda.libs/libfaiss-*.so)
