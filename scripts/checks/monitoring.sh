#!/usr/bin/env bash
# deploy/monitoring with the real promtool (Debian's prometheus package, scripts/tools/promtool):
# `promtool check rules` and `promtool test rules` (every alert firing and not firing from input
# series), the chart's copy of the rules identical to deploy/monitoring's, and the dashboard JSON
# well-formed. That the rules and the dashboard name only metrics the hub serves, and that every
# dashboard SQL query runs against the real views, is hub/tests/governance.rs and
# hub/tests/dashboard.rs. Never passes by skipping: no promtool is a failure.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
PROMTOOL=${KEYFLEET_PROMTOOL:-$(scripts/tools/promtool --path)}
"$PROMTOOL" --version 2>&1 | head -n1
"$PROMTOOL" check rules deploy/monitoring/keyfleet-rules.yaml
"$PROMTOOL" test rules deploy/monitoring/keyfleet-rules.test.yaml
cmp deploy/monitoring/keyfleet-rules.yaml deploy/charts/keyfleet-hub/files/keyfleet-rules.yaml \
  || { echo "deploy/charts/keyfleet-hub/files/keyfleet-rules.yaml differs from deploy/monitoring/keyfleet-rules.yaml: copy it" >&2; exit 1; }
# Every PromQL expression of the dashboard, parsed by promtool (as recording rules).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - deploy/monitoring/keyfleet-dashboard.json "$work/dashboard-rules.yaml" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
assert exprs, "no PromQL in the dashboard"
rules = [{"record": f"keyfleet:dashboard_expr_{i}", "expr": e} for i, e in enumerate(exprs)]
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"dashboard: {len(exprs)} PromQL expressions")
PY
"$PROMTOOL" check rules "$work/dashboard-rules.yaml" >/dev/null \
  || { "$PROMTOOL" check rules "$work/dashboard-rules.yaml"; exit 1; }
echo "monitoring: rules checked and unit-tested with promtool; chart copy identical; dashboard PromQL parses"
