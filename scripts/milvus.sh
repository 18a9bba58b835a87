#!/usr/bin/env bash
# A Milvus server for `make services` and the tests: Milvus's own C++ engine as the milvus-lite 2.5 wheel
# ships it (FLAT and IVF_FLAT indexes), listening on TCP, its data in DIR. Production runs a Milvus cluster
# (deploy/milvus/values.yaml); both speak the same gRPC API to the same pymilvus client.
#   scripts/milvus.sh start DIR PORT   # starts it unless running; waits until it answers; prints the URL
#   scripts/milvus.sh stop DIR
set -euo pipefail
cmd=${1:?start or stop}; dir=$(realpath -m "${2:?data directory}"); port=${3:-19531}
python=${PYTHON:-$(dirname "$0")/../.venv/bin/python}

case $cmd in
start)
    mkdir -p "$dir"
    if [ -f "$dir/milvus.pid" ] && kill -0 "$(cat "$dir/milvus.pid")" 2>/dev/null; then
        echo "milvus://127.0.0.1:$(cat "$dir/milvus.port")"; exit 0
    fi
    # the package's binary and libraries, found without importing the package (its __init__ needs pkg_resources)
    lib=$("$python" -c "import importlib.util as u; print(u.find_spec('milvus_lite').submodule_search_locations[0])")/lib
    ( cd "$dir" && LD_LIBRARY_PATH="$lib" exec nohup "$lib/milvus" "$dir/milvus.db" "127.0.0.1:$port" ERROR \
        >"$dir/server.log" 2>&1 ) &
    echo $! >"$dir/milvus.pid"; echo "$port" >"$dir/milvus.port"
    for _ in $(seq 1 300); do
        if "$python" - "$port" <<'PY' 2>/dev/null; then echo "milvus://127.0.0.1:$port"; exit 0; fi
import sys
from pymilvus import MilvusClient
MilvusClient(uri=f"http://127.0.0.1:{sys.argv[1]}", timeout=2).list_collections()
PY
        kill -0 "$(cat "$dir/milvus.pid")" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
        sleep 0.2
    done
    echo "milvus did not answer on port $port" >&2; exit 1
    ;;
stop)
    if [ -f "$dir/milvus.pid" ]; then
        pid=$(cat "$dir/milvus.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/milvus.pid"
    fi
    ;;
*) echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
