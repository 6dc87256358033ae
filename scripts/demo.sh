#!/usr/bin/env bash
# Build an index of the sample marks, serve it on loopback, ask about one registered and
# one unregistered mark, draw the results picture, stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/demo}
PY=.venv/bin/python
REGISTERED=samples/queries/q00169.png     # a registered sample mark after JPEG damage
UNREGISTERED=samples/queries/q01121.jpg   # a mark that is not in the registry
mkdir -p "$OUT"

echo "== indexer build (300 sample marks)"
$PY -m indexer build --images samples/registry --manifest samples/registry.csv \
    --out "$OUT/index" --no-progress
$PY -m indexer info --index "$OUT/index"

echo "== server"
$PY -m server --index "$OUT/index" --port 0 >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    ADDR=$(grep -m1 -o 'listening on .*' "$OUT/server.log" | cut -d' ' -f3 || true)
    [ -n "$ADDR" ] && break
    kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log"; exit 1; }
    sleep 0.5
done
[ -n "$ADDR" ] || { echo "server did not start"; cat "$OUT/server.log"; exit 1; }
echo "server listening on $ADDR"

echo "== client: a registered mark ($REGISTERED)"
$PY -m client --server "$ADDR" search --input-img "$REGISTERED" --retrievals-num 5 \
    --plot "$OUT/registered.png"
echo "== client: an unregistered mark ($UNREGISTERED)"
$PY -m client --server "$ADDR" search --input-img "$UNREGISTERED" --retrievals-num 5 \
    --plot "$OUT/unregistered.png"

kill -TERM $SERVER
wait $SERVER
trap - EXIT
echo "== server stopped; pictures in $OUT/registered.png and $OUT/unregistered.png"
