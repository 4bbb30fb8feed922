#!/usr/bin/env bash
# Fails when .sqlx/ (offline data of the Postgres query! macros) does not match the queries and
# migrations: regenerates it into a temp dir with scripts/sqlx-prepare and compares.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
scripts/sqlx-prepare --out "$fresh" >/dev/null
if ! diff -r .sqlx "$fresh"; then
  echo "scripts/checks/sqlx.sh: .sqlx is stale: run scripts/sqlx-prepare and commit .sqlx/" >&2
  exit 1
fi
echo ".sqlx is fresh ($(ls .sqlx/query-*.json | wc -l) queries)"
