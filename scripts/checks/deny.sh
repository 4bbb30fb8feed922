#!/usr/bin/env bash
# Supply-chain policy (deny.toml) with cargo-deny: licenses, bans and sources always; advisories
# only when a local copy of the RustSec advisory database exists, since it cannot be fetched here.
#
# cargo-deny is installed from crates.io at a pinned version into target/tools (cached with the
# rest of target/; the first install on a fresh machine builds it from source, a few minutes).
# Advisory database: $KEYFLEET_ADVISORY_DB, else $CARGO_HOME/advisory-dbs: the directory that
# `cargo deny fetch` fills (advisory-db-<hash>/), copied from a machine that can reach GitHub.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."

CARGO_DENY_VERSION=0.20.2
TOOLS="$PWD/target/tools"
DENY="$TOOLS/bin/cargo-deny"

if ! "$DENY" --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
  echo "installing cargo-deny $CARGO_DENY_VERSION into target/tools (not cached yet)"
  start=$(date +%s)
  cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION" \
    --root "$TOOLS" --target-dir "$TOOLS/build"
  rm -rf "$TOOLS/build"
  echo "cargo-deny $CARGO_DENY_VERSION installed in $(( $(date +%s) - start )) s"
fi

"$DENY" --version
# cargo-deny reads the whole graph (`cargo metadata`), every platform's crates included, and runs
# offline: fetch what the builds here never downloaded (Windows, Android, ... crates; crates.io only).
cargo fetch --locked --quiet
# Offline: the tree is already resolved by Cargo.lock. Errors are shown in full; warnings
# (duplicate versions) are counted in the stats: `target/tools/bin/cargo-deny check bans` lists them.
"$DENY" --locked --offline --log-level error check --show-stats licenses bans sources

# Advisories: the database directory `cargo deny fetch` fills (advisory-db-<hash>/ git checkouts).
dbs=${KEYFLEET_ADVISORY_DB:-${CARGO_HOME:-$HOME/.cargo}/advisory-dbs}
if compgen -G "$dbs/advisory-db-*/crates" >/dev/null; then
  echo "advisories: checking against the local database in $dbs (not refreshed: offline)"
  config=$(mktemp)
  trap 'rm -f "$config"' EXIT
  sed "s|^db-path = .*|db-path = \"$dbs\"|" deny.toml > "$config"
  "$DENY" --locked --offline --config "$config" check --hide-inclusion-graph advisories
else
  echo "advisories: SKIPPED: no local advisory database in $dbs (it cannot be fetched here;"
  echo "  set KEYFLEET_ADVISORY_DB to a directory filled by \`cargo deny fetch\` elsewhere)"
fi
