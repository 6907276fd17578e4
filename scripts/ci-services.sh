#!/usr/bin/env bash
# Starts the services the queue and store tests talk to: redis-server and a PostgreSQL cluster, both on 127.0.0.1,
# from Debian's packages (installed with apt-get if missing; Debian's chromium too, for the dashboard's browser
# tests). Non-interactive, idempotent, quick when they already run. Its only output on stdout is one line for the caller to eval:
#   export LAMP_TEST_REDIS_URL=redis://127.0.0.1:6379/15 LAMP_TEST_POSTGRES_URL=postgresql+psycopg://lamp:...
# Usage: eval "$(bash scripts/ci-services.sh)"      (as root, or as a user with passwordless sudo)
set -euo pipefail
exec 3>&1 1>&2  # progress goes to stderr; fd 3 keeps stdout for the export line
# Every command that may leave a server running gets `3>&-`: a daemon that inherited fd 3 would hold the caller's
# $(...) pipe open, and the caller's eval would wait for it forever.

REDIS_PORT=${LAMP_CI_REDIS_PORT:-6379}
PG_ROLE=lamp PG_PASSWORD=lamp PG_DB=lamp_test

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -n -u postgres "$@"; fi; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the dashboard's browser tests (Playwright)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ci-services: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 3>&-
fi

# Redis: a throwaway server (no persistence) unless one already answers on the port.
if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
  echo "ci-services: starting redis-server on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save "" --appendonly no \
    --dir /tmp --logfile /tmp/lamp-ci-redis.log 3>&-
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping | grep -q PONG || { echo "ci-services: redis did not start" >&2; exit 1; }

# PostgreSQL: Debian's newest installed major version, cluster "main" (created by the package, or here).
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {found = 1} END {exit !found}'; then
  echo "ci-services: creating PostgreSQL $version cluster main"
  as_root pg_createcluster "$version" main >/dev/null 3>&-
fi
pg_port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online" {ok = 1} END {exit !ok}'; then
  echo "ci-services: starting PostgreSQL $version main on port $pg_port"
  as_root pg_ctlcluster "$version" main start 3>&-
fi
for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p "$pg_port" && break; sleep 0.1; done
pg_isready -q -h 127.0.0.1 -p "$pg_port" || { echo "ci-services: PostgreSQL did not start" >&2; exit 1; }

psql_admin() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$pg_port" -tA "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE'")" != 1 ]; then
  # CREATEDB: the migration tests create and drop a scratch database of their own.
  psql_admin -c "CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE $PG_DB OWNER $PG_ROLE"
fi
echo "ci-services: redis on 127.0.0.1:$REDIS_PORT, PostgreSQL $version on 127.0.0.1:$pg_port (database $PG_DB)"

echo "export LAMP_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/15" \
  "LAMP_TEST_POSTGRES_URL=postgresql+psycopg://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$pg_port/$PG_DB" >&3
