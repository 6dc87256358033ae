"""FAISS flat and ivf-sq8, on the CPU and the GPU, at the sizes given (comma-separated):
bench.vector_search's rows for a lent GPU machine (scripts/gpu/prepare_faiss_cuda.sh), to $OUT."""
import json, logging, os, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
import faiss
print("faiss", faiss.__version__, "GPUs reported", faiss.get_num_gpus(), flush=True)
from indexer.index.faiss_gpu import usable_gpus
print("usable", usable_gpus(), flush=True)
from bench import vector_search as vs
sizes = tuple(int(s) for s in sys.argv[1].split(","))
cfg = vs.ScaleConfig(sizes=sizes, presets=("flat", "ivf-sq8"), hnsw_max_n=0,
                     naive_max_n=100_000, milvus_max_n=0)
out = os.path.join(os.environ.get("OUT", "/tmp"), "faiss_rows.jsonl")
with open(out, "w") as f:
    def row(r):
        print(r, flush=True); f.write(json.dumps(r.to_dict()) + "\n"); f.flush()
    vs.run(cfg, on_row=row)
