#!/usr/bin/env bash
# Hub layering (ARCHITECTURE.md, invariant 1 and the dependency direction):
#   app → grpc / ops / cli → sync engine → fleet, render, plan, status, vault, store → domain.
# - Only hub/src/grpc.rs, hub/src/grpc/ and the CLI (hub/src/cli.rs, hub/src/cli/), an Admin API
#   client, name tonic, prost or the generated proto types (keyfleet_proto::v1).
# - The engine (hub/src/sync*) and the fan-out (hub/src/fleet*) never import crate::grpc, and use
#   only keyfleet_proto::{digest, limits} of the proto crate.
# Comment lines are ignored (docs may name the transport). Exits non-zero naming every offence.
set -euo pipefail
cd "$(dirname "$0")/../.."
status=0

# file:line:text of code lines (not comments) matching $1 in the files given after it.
code_matches() {
  local pattern=$1
  shift
  [ "$#" -gt 0 ] || return 0
  grep -nHE "$pattern" "$@" | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true
}

mapfile -t outside < <(find hub/src -name '*.rs' \
  ! -path 'hub/src/grpc.rs' ! -path 'hub/src/grpc/*' \
  ! -path 'hub/src/cli.rs' ! -path 'hub/src/cli/*' | sort)
wire=$(code_matches '\btonic::|\buse tonic\b|\bprost(_types)?::|keyfleet_proto::(v1\b|\{[^}]*\bv1\b)' "${outside[@]}")
if [ -n "$wire" ]; then
  echo "only hub/src/grpc/ and hub/src/cli* may name tonic, prost or keyfleet_proto::v1; found:" >&2
  echo "$wire" >&2
  status=1
fi

mapfile -t engine < <(find hub/src/sync.rs hub/src/sync hub/src/fleet.rs hub/src/fleet -name '*.rs' | sort)
upward=$(code_matches 'crate::grpc\b' "${engine[@]}")
if [ -n "$upward" ]; then
  echo "hub/src/sync* and hub/src/fleet* must not import crate::grpc (the engine sits below the transport):" >&2
  echo "$upward" >&2
  status=1
fi
proto=$(code_matches 'keyfleet_proto::' "${engine[@]}" | grep -vE 'keyfleet_proto::(digest|limits)\b' || true)
if [ -n "$proto" ]; then
  echo "hub/src/sync* and hub/src/fleet* may use only keyfleet_proto::{digest, limits}:" >&2
  echo "$proto" >&2
  status=1
fi

[ "$status" -eq 0 ] && echo "hub boundaries: ok ($(( ${#outside[@]} )) files outside the transport, ${#engine[@]} engine and fleet files)"
exit "$status"
