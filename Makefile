# make install | demo | test | test-slow | eval | bench | bench-10m | bench-ray | bench-build | soak | proto | clean
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build on machines without CUDA; override on a GPU host, e.g. TORCH=torch==2.13.0
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.dev-installed
STUBS := proto/trademark_search_pb2.py proto/trademark_search_pb2_grpc.py
OUT := out

.PHONY: install proto demo test test-slow eval bench bench-10m bench-ray bench-build soak clean
EVAL_DATA ?= ../shared/logobench ../shared/logobench-families ../shared/logobench-scenes

install: $(STAMP) $(STUBS)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so nothing below pulls another build of it
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Extras for training data, evaluation baselines and plots (not needed to serve).
$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

proto: $(STUBS)

# Committed; regenerated when the .proto changes (the venv only has to exist first).
$(STUBS): proto/trademark_search.proto | $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. $<

demo: install
	bash scripts/demo.sh $(OUT)/demo

test: install
	$(PY) -m pytest -m "not slow and not gpu" -q

test-slow: install $(DEV_STAMP)
	$(PY) -m pytest -m "slow" -q

eval: install $(DEV_STAMP)
	$(PY) -m bench.eval --data $(EVAL_DATA) --out $(OUT)/eval

# Speed against the encoder's limit and against peers; BENCH_SIZES=10000,100000 for a quick
# run, HNSW_MAX_N=1000000 to add HNSW at 1 M (its build alone takes ~6 min on 2 cores).
BENCH_SIZES ?= 10000,100000,1000000
HNSW_MAX_N ?= 100000
comma := ,
# Filtered search (bench/filtered.py) at the largest size, 1% and 10% of marks passing.
FILTER_N ?= $(lastword $(subst $(comma), ,$(BENCH_SIZES)))
bench: install $(DEV_STAMP)
	$(PY) -m bench.speed --out $(OUT)/bench --sizes $(BENCH_SIZES) --hnsw-max-n $(HNSW_MAX_N)
	$(PY) -m bench.filtered --n $(FILTER_N) --json $(OUT)/bench/filtered.json
	$(PY) -m bench.words_speed --n $(FILTER_N) --out $(OUT)/bench

# 10 M vectors, more than fit in memory as floats: ivf-sq8 built from a stream of chunks
# against exact search streamed the same way, and the server started on it (bench/streamed.py).
BIG_N ?= 10000000
bench-10m: install
	$(PY) -m bench.streamed --n $(BIG_N) --out $(OUT)/bench-10m

# The sample registry built here and on a local Ray with 1 and 2 encoder actors, side by
# side, and the per-mark costs behind the cluster estimate (bench/ray_build.py).
bench-ray: install
	$(PY) -m bench.ray_build --out $(OUT)/bench-ray

# A synthetic register of 2 M small image files (made once under $(OUT)/bench-build) built
# with the stand-in encoder and ivf-sq8 at each size: peak RSS against 1.5 GB + the codes,
# marks/s, and SIGKILLs at the smallest size resumed to an identical index
# (bench/build_scale.py). ~1 h 10 min to ~1 h 50 min on 2 cores; BUILD_SIZES=20000,200000 for a quick run.
BUILD_SIZES ?= 200000,2000000
bench-build: install
	$(PY) -m bench.build_scale --sizes $(subst $(comma), ,$(BUILD_SIZES)) --out $(OUT)/bench-build

soak: install
	test -d $(OUT)/demo/index || $(MAKE) demo
	$(PY) -m bench.soak --index $(OUT)/demo/index --seconds 180 --clients 8 --out $(OUT)/soak.json

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
