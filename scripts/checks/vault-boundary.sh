#!/usr/bin/env bash
# Invariant 3 (ARCHITECTURE.md): only hub/src/vault.rs and hub/src/vault/ name the Azure SDK.
set -euo pipefail
cd "$(dirname "$0")/../.."
offenders=$(grep -rlE '\bazure_(core|identity|security_keyvault_secrets)\b' hub/src --include='*.rs' \
  | grep -vE '^hub/src/vault(\.rs|/)' || true)
if [ -n "$offenders" ]; then
  echo "only hub/src/vault/ may name the Azure SDK; found in:" >&2
  echo "$offenders" >&2
  exit 1
fi
echo "vault boundary: ok"
