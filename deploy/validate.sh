#!/usr/bin/env bash
# Validates what cargo does not: the AsyncAPI document (official parser),
# proto/ (buf lint, and buf breaking against the previous commit), the
# compose file (compose-spec schema), the Kubernetes manifests, and the
# observability pack (promtool for the alert rules; the dashboard is JSON).
# Installs its tools from npm and PyPI on first use. Run from anywhere.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

echo "== npm validators (@asyncapi/parser, @bufbuild/buf)"
(cd deploy/validate && npm ci --no-audit --no-fund --silent)
bin="$root/deploy/validate/node_modules/.bin"

echo "== AsyncAPI"
node deploy/validate/asyncapi.mjs docs/asyncapi.yaml

echo "== buf lint"
(cd proto && "$bin/buf" lint)

echo "== buf breaking"
if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:proto 2>/dev/null; then
  (cd proto && "$bin/buf" breaking --against "$root/.git#ref=HEAD~1,subdir=proto")
else
  echo "no earlier proto/ to compare against"
fi

echo "== PyPI validators (check-jsonschema, kubernetes-validate)"
python3 -m pip install --quiet --disable-pip-version-check "check-jsonschema==0.39.0" "kubernetes-validate==1.37.0"

echo "== docker-compose.yml against the compose specification"
JWT_SECRET=validate check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

echo "== Kubernetes manifests"
manifests=$(ls deploy/k8s/base/*.yaml | grep -v kustomization.yaml)
kubernetes-validate --strict $manifests
# The kustomization names only files that exist.
for f in $(sed -n 's/^  - \(.*\.yaml\)$/\1/p' deploy/k8s/base/kustomization.yaml); do
  test -f "deploy/k8s/base/$f" || { echo "kustomization lists missing $f"; exit 1; }
done
echo "== Prometheus alert rules"
command -v promtool >/dev/null || { echo "promtool not found: install Debian's prometheus package"; exit 1; }
promtool check rules deploy/observability/alerts.yml
echo "== Grafana dashboard"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["panels"] and all(t["expr"] for p in d["panels"] for t in p["targets"])' \
  deploy/observability/grafana-dashboard.json
echo "all deploy checks passed"
