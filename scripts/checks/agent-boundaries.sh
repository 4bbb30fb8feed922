#!/usr/bin/env bash
# Agent invariants (ARCHITECTURE.md): only agent/src/hub.rs names the wire types
# (`keyfleet_proto::v1`), and agent/src/reconcile.rs stays pure (no IO, no async, no logging).
set -euo pipefail
cd "$(dirname "$0")/../.."
status=0
offenders=$(grep -rlE 'keyfleet_proto::(v1|\{[^}]*v1)' agent/src --include='*.rs' | grep -vx 'agent/src/hub.rs' || true)
if [ -n "$offenders" ]; then
  echo "only agent/src/hub.rs may name keyfleet_proto::v1; found in:" >&2
  echo "$offenders" >&2
  status=1
fi
impure=$(grep -nE '\basync\b|\.await|\btracing::|\btokio::|\bkube::|std::(fs|net|io|process|env)\b|println!|eprintln!' \
  agent/src/reconcile.rs | grep -vE '^[0-9]+:[[:space:]]*//' || true)
if [ -n "$impure" ]; then
  echo "agent/src/reconcile.rs must stay pure (no IO, async or logging):" >&2
  echo "$impure" >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "agent boundaries: ok"
exit "$status"
