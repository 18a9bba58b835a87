#!/usr/bin/env bash
# A PostgreSQL server of Debian's package, for `make services` and the tests: its own cluster in DIR, on PORT,
# local connections trusted (a development server: production runs its own, see deploy/).
#   scripts/postgres.sh start DIR PORT   # installs the package if missing, initdb once, starts; prints the URL
#   scripts/postgres.sh stop DIR
set -euo pipefail
cmd=${1:?start or stop}; dir=$(realpath -m "${2:?data directory}"); port=${3:-54329}

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ] && [ "$cmd" = start ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
# initdb and the server refuse to run as root: as root they run as the package's `postgres` user.
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case $cmd in
start)
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres: "$dir"
        as_owner "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    if ! as_owner "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" >/dev/null
    fi
    as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='seesku'" \
        | grep -q 1 || as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres seesku
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/seesku"
    ;;
stop)
    [ -n "$bin" ] && [ -f "$dir/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
    ;;
*) echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
