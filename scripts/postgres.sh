#!/usr/bin/env bash
# Start a local PostgreSQL 15 for the queue tests with two roles and the database rx_audit_test.
# Idempotent and quiet: installs postgresql-15 with apt-get only when missing, starts the Debian
# cluster with pg_ctlcluster (which drops root to the postgres user: the server refuses root),
# and creates the roles/database only when absent. Prints the URLs to export, nothing else.
#
# Two roles, as in production: the owner (rx_owner) owns the database, creates the tests'
# schemas and runs the migrations; the application role (rx) only gets what migrate() grants it
# (INSERT/SELECT on the audit trail and decisions), so it cannot rewrite them or drop triggers.
#
#   eval "$(scripts/postgres.sh)"   # sets RX_AUDIT_TEST_PG_URL (app) and RX_AUDIT_TEST_PG_OWNER_URL (owner)
set -euo pipefail

VERSION="${PG_VERSION:-15}"
CLUSTER="${PG_CLUSTER:-main}"
PORT="${PG_PORT:-5432}"
ROLE="${PG_ROLE:-rx}"
PASSWORD="${PG_PASSWORD:-rx}"
OWNER="${PG_OWNER:-rx_owner}"
OWNER_PASSWORD="${PG_OWNER_PASSWORD:-rx_owner}"
DB="${PG_DB:-rx_audit_test}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ! -x "/usr/lib/postgresql/$VERSION/bin/postgres" ]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y -qq --no-install-recommends "postgresql-$VERSION" >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends "postgresql-$VERSION" >/dev/null
  fi
fi

if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$VERSION $CLUSTER"; then
  $SUDO pg_createcluster -p "$PORT" "$VERSION" "$CLUSTER" >/dev/null
fi

if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; then
  $SUDO pg_ctlcluster "$VERSION" "$CLUSTER" start >/dev/null
fi

# Wait until it accepts connections (at most ~30 s).
for _ in $(seq 1 60); do
  if $SUDO -u postgres psql -p "$PORT" -qAtc "select 1" >/dev/null 2>&1 \
     || runuser -u postgres -- psql -p "$PORT" -qAtc "select 1" >/dev/null 2>&1; then
    break
  fi
  sleep 0.5
done

psql_as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- psql -p "$PORT" -v ON_ERROR_STOP=1 -qAt "$@"
  else
    sudo -u postgres psql -p "$PORT" -v ON_ERROR_STOP=1 -qAt "$@"
  fi
}

if [ "$(psql_as_postgres -c "select 1 from pg_roles where rolname='$ROLE'")" != "1" ]; then
  psql_as_postgres -c "create role $ROLE login password '$PASSWORD'" >/dev/null
fi
if [ "$(psql_as_postgres -c "select 1 from pg_roles where rolname='$OWNER'")" != "1" ]; then
  psql_as_postgres -c "create role $OWNER login password '$OWNER_PASSWORD'" >/dev/null
fi
if [ "$(psql_as_postgres -c "select 1 from pg_database where datname='$DB'")" != "1" ]; then
  psql_as_postgres -c "create database $DB owner $OWNER" >/dev/null
fi
# An older setup made the application role the owner: hand the database to the owner role, and
# leave the application role no right to create schemas.
psql_as_postgres -c "alter database $DB owner to $OWNER" >/dev/null
psql_as_postgres -d "$DB" -c "revoke create on database $DB from $ROLE" >/dev/null
psql_as_postgres -d "$DB" -c "revoke create on schema public from $ROLE" >/dev/null
echo "export RX_AUDIT_TEST_PG_URL=postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
echo "export RX_AUDIT_TEST_PG_OWNER_URL=postgresql+psycopg://$OWNER:$OWNER_PASSWORD@127.0.0.1:$PORT/$DB"
