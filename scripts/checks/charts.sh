#!/usr/bin/env bash
# helm lint --strict of both charts with their defaults and every ci/*-values.yaml, with the real
# Helm (scripts/tools/helm installs it under target/tools/ on first use, or fails saying why).
# The rendering matrix, the typed parse and the RBAC run are Rust tests: hub/tests/chart.rs and
# agent/tests/deploy.rs.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
HELM=$(scripts/tools/helm --path)
"$HELM" version --short
for chart in deploy/charts/*/; do
  chart=${chart%/}
  "$HELM" lint --strict "$chart" >/dev/null || { "$HELM" lint --strict "$chart"; exit 1; }
  for values in "$chart"/ci/*-values.yaml; do
    "$HELM" lint --strict "$chart" --values "$values" >/dev/null \
      || { "$HELM" lint --strict "$chart" --values "$values"; exit 1; }
  done
  echo "$chart: lint --strict passed ($(ls "$chart"/ci/*-values.yaml | wc -l) values files + defaults)"
done
