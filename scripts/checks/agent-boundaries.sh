#!/usr/bin/env bash
# Agent invariants (ARCHITECTURE.md): only the hub client (agent/src/hub.rs and agent/src/hub/)
# names the wire types (`keyfleet_proto::v1`), and the pure core (agent/src/reconcile.rs and
# agent/src/reconcile/) stays pure (no IO, no async, no logging).
set -euo pipefail
cd "$(dirname "$0")/../.."
status=0
offenders=$(grep -rlE 'keyfleet_proto::(v1|\{[^}]*v1)' agent/src --include='*.rs' \
  | grep -vxE 'agent/src/hub\.rs|agent/src/hub/.*' || true)
if [ -n "$offenders" ]; then
  echo "only agent/src/hub.rs and agent/src/hub/ may name keyfleet_proto::v1; found in:" >&2
  echo "$offenders" >&2
  status=1
fi
pure=(agent/src/reconcile.rs)
[ -d agent/src/reconcile ] && pure+=(agent/src/reconcile)
impure=$(grep -rHnE --include='*.rs' '\basync\b|\.await|\btracing::|\btokio::|\bkube::|std::(fs|net|io|process|env)\b|println!|eprintln!' \
  "${pure[@]}" | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)
if [ -n "$impure" ]; then
  echo "agent/src/reconcile.rs and agent/src/reconcile/ must stay pure (no IO, async or logging):" >&2
  echo "$impure" >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "agent boundaries: ok"
exit "$status"
