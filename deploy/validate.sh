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
manifests=$(ls deploy/k8s/base/*.yaml deploy/k8s/examples/*.yaml deploy/k8s/overlays/*/*.yaml | grep -v kustomization.yaml)
kubernetes-validate --strict $manifests
# The kustomization names only files that exist.
for f in $(sed -n 's/^  - \(.*\.yaml\)$/\1/p' deploy/k8s/base/kustomization.yaml); do
  test -f "deploy/k8s/base/$f" || { echo "kustomization lists missing $f"; exit 1; }
done
# The base agrees with docs/PRODUCTION.md.
python3 - <<'PY'
import re, glob
config = dict(re.findall(r'^  ([A-Z_]+): "?([^"\n]*)"?$', open("deploy/k8s/base/configmap.yaml").read(), re.M))
assert config["LOAD_DEMO_CATALOG"] == "false", "the base ships the demo catalog"
assert config["KAFKA_REPLICATION_FACTOR"] == "3", "the base's topics are not replicated three times"
assert config["DATABASE_MIGRATE"] == "false", "services in the base would need CREATEDB"
assert "PSP" not in config, "the base names a PSP (the simulated one belongs in the demo overlay)"
bound = int(config["SHUTDOWN_DRAIN_SECS"]) + int(config["SHUTDOWN_TIMEOUT_SECS"])
for f in glob.glob("deploy/k8s/base/*.yaml"):
    for grace in re.findall(r"terminationGracePeriodSeconds: (\d+)", open(f).read()):
        assert int(grace) > bound, f"{f}: terminationGracePeriodSeconds {grace} is not longer than drain + shutdown ({bound} s)"
print("the base agrees with docs/PRODUCTION.md")
PY
echo "== Prometheus alert rules"
command -v promtool >/dev/null || { echo "promtool not found: install Debian's prometheus package"; exit 1; }
promtool check rules deploy/observability/alerts.yml
echo "== Grafana dashboard"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["panels"] and all(t["expr"] for p in d["panels"] for t in p["targets"])' \
  deploy/observability/grafana-dashboard.json
echo "all deploy checks passed"
