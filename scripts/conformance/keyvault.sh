#!/usr/bin/env bash
# Conformance of the Key Vault + Entra emulator: the official Python SDK (azure-keyvault-secrets,
# azure-keyvault-certificates,
# azure-identity, pinned in scripts/requirements.txt) against `keyfleet-testkit keyvault`.
# Prints one summary line; exits non-zero on any failure.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PYTHON=${KEYFLEET_TEST_PYTHON:-$ROOT/target/pyenv/bin/python}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

cargo build --quiet --locked -p keyfleet-testkit --bin keyfleet-testkit
BIN="$TARGET/debug/keyfleet-testkit"

STATE=$(mktemp -d)
EMULATOR_PID=""
cleanup() {
  if [ -n "$EMULATOR_PID" ]; then kill "$EMULATOR_PID" 2>/dev/null || true; wait "$EMULATOR_PID" 2>/dev/null || true; fi
  rm -rf "$STATE"
}
trap cleanup EXIT

cat > "$STATE/principals.yaml" <<'YAML'
tenant: keyfleet-test
principals:
  - clientId: keyfleet-hub
    clientSecret: keyfleet-hub-secret
    federated:
      - issuer: https://kubernetes.default.svc.cluster.local
        subject: system:serviceaccount:keyfleet:keyfleet-hub
    managedIdentity: userAssigned
  - clientId: conf-reader
    clientSecret: reader-secret
    permissions: [get]
YAML

mkfifo "$STATE/ready"
RUST_LOG="keyfleet_testkit=trace,info" "$BIN" keyvault --addr 127.0.0.1:0 --state-dir "$STATE" --principals "$STATE/principals.yaml" \
  > "$STATE/ready" 2> "$STATE/emulator.log" &
EMULATOR_PID=$!
read -r word VAULT_URL AUTHORITY_URL < "$STATE/ready" || true
if [ "${word:-}" != "ready" ]; then
  echo "keyvault conformance: the emulator did not start" >&2
  cat "$STATE/emulator.log" >&2
  exit 1
fi

status=0
REQUESTS_CA_BUNDLE="$STATE/ca.pem" SSL_CERT_FILE="$STATE/ca.pem" \
  "$PYTHON" scripts/conformance/keyvault_sdk.py "$VAULT_URL" "$AUTHORITY_URL" "$STATE" 2> "$STATE/python.err" || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- python stderr" >&2; cat "$STATE/python.err" >&2
  echo "--- emulator log" >&2; tail -n 50 "$STATE/emulator.log" >&2
  exit "$status"
fi
# The emulator's log must never hold a secret value the SDK wrote.
if grep -E 'value-one|value-two|secret-value|written-twice|workload-value|PRIVATE KEY|MII' "$STATE/emulator.log"; then
  echo "keyvault conformance: a secret value reached the emulator log" >&2
  exit 1
fi
