#!/usr/bin/env bash
# A throwaway PostgreSQL for keyward's tests: Debian's packages (installed when missing), a
# cluster in DIR owned by the `postgres` user (initdb and postgres refuse to run as root), on
# 127.0.0.1 only, on a free port. Idempotent.
#
#   scripts/postgres.sh start DIR   # prints the URL (postgres://keyward@127.0.0.1:PORT/postgres)
#   scripts/postgres.sh stop DIR
set -euo pipefail

action=${1:?usage: postgres.sh start|stop DIR}
dir=${2:?usage: postgres.sh start|stop DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

pg_bin() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$found" ] && [ -x "$found/initdb" ] && echo "$found"
}

as_postgres() { runuser -u postgres -- "$@"; }

case "$action" in
start)
    bin=$(pg_bin || true)
    if [ -z "$bin" ]; then
        echo "postgres.sh: installing PostgreSQL from Debian's packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; }
        bin=$(pg_bin) || { echo "postgres.sh: PostgreSQL did not install" >&2; exit 1; }
    fi
    chown postgres: "$dir"
    chmod 700 "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        # C locale: text sorts by bytes, as in SQLite.
        as_postgres "$bin/initdb" -D "$dir/data" -A trust -U keyward --no-locale -E UTF8 >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    if ! as_postgres "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >&2 ||
            { cat "$dir/server.log" >&2; exit 1; }
        echo "postgres://keyward@127.0.0.1:$port/postgres" >"$dir/url"
    fi
    cat "$dir/url"
    ;;
stop)
    bin=$(pg_bin || true)
    if [ -n "$bin" ] && [ -f "$dir/data/PG_VERSION" ]; then
        as_postgres "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 2>/dev/null || true
    fi
    rm -f "$dir/url"
    ;;
*)
    echo "usage: postgres.sh start|stop DIR" >&2
    exit 2
    ;;
esac
