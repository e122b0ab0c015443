#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the sweep tests (workers on several
# machines share a study through it). Idempotent: installs Debian's postgresql if it is
# missing, creates a cluster in $EDGETRAIN_PG_DIR once, starts it if it is not running,
# creates the user and database once, and prints the database URL on its last line:
#
#   export EDGETRAIN_TEST_PG_URL=$(.ci/postgres.sh | tail -n 1)
#
# Settings: EDGETRAIN_PG_DIR (default /tmp/edgetrain-pg), EDGETRAIN_PG_PORT (default 54329).
# Stop it with: pg_ctl -D "$EDGETRAIN_PG_DIR/data" stop (as the postgres user when root).
set -euo pipefail

PG_DIR="${EDGETRAIN_PG_DIR:-/tmp/edgetrain-pg}"
PORT="${EDGETRAIN_PG_PORT:-54329}"
DB=edgetrain_test
USER_NAME=edgetrain

log() { echo "postgres.sh: $*" >&2; }

find_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}

BIN="$(find_bin || true)"
if [ -z "$BIN" ]; then
  log "installing postgresql (apt-get)"
  if [ "$(id -u)" -ne 0 ]; then
    log "postgresql is not installed and this is not root: install it with apt-get install -y postgresql"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2
  apt-get install -y postgresql >&2
  BIN="$(find_bin)"
fi

# initdb and postgres refuse to run as root: run them as the postgres user then
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
  as_pg() { runuser -u postgres -- "$@"; }
  OWNER=postgres
else
  as_pg() { "$@"; }
  OWNER="$(id -un)"
fi

DATA="$PG_DIR/data"
SOCK="$PG_DIR/socket"
PASSFILE="$PG_DIR/password"
mkdir -p "$PG_DIR" "$SOCK"
chown "$OWNER" "$PG_DIR" "$SOCK"
chmod 700 "$PG_DIR"

if [ ! -s "$DATA/PG_VERSION" ]; then
  log "creating a cluster in $DATA"
  rm -rf "$DATA"
  as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --no-instructions >&2
fi

if ! as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  log "starting the server on 127.0.0.1:$PORT"
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $SOCK" start >&2
fi

psql_pg() { as_pg "$BIN/psql" -h "$SOCK" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

if [ ! -s "$PASSFILE" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$PASSFILE")
fi
PASSWORD="$(cat "$PASSFILE")"

if [ "$(psql_pg -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname = '$USER_NAME'")" != "1" ]; then
  psql_pg -d postgres -c "CREATE ROLE $USER_NAME LOGIN PASSWORD '$PASSWORD'" >&2
else
  psql_pg -d postgres -c "ALTER ROLE $USER_NAME PASSWORD '$PASSWORD'" >&2
fi
if [ "$(psql_pg -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
  psql_pg -d postgres -c "CREATE DATABASE $DB OWNER $USER_NAME" >&2
fi

log "ready"
echo "postgresql://$USER_NAME:$PASSWORD@127.0.0.1:$PORT/$DB"
