#!/usr/bin/env bash
# Builds the local control plane into bin/: kube-apiserver,
# kube-controller-manager and kubectl from
# k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3; and the developer
# tools: helm (chart tests) and golangci-lint (make lint). Each binary is built
# only when it is missing or its tools module changed since it was built.
#
#   hack/build-tools.sh                 everything
#   hack/build-tools.sh golangci-lint   only the binaries named
set -euo pipefail
only=("$@")
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
mkdir -p "$bin"
kube_version=v1.37.2

# build NAME MODULE_DIR PACKAGE [LDFLAGS]
build() {
	local name=$1 dir=$2 pkg=$3 ldflags=${4:-}
	local out="$bin/$name"
	if ((${#only[@]} > 0)) && [[ " ${only[*]} " != *" $name "* ]]; then
		return
	fi
	if [[ -x "$out" && "$out" -nt "$dir/go.mod" && "$out" -nt "$dir/go.sum" ]]; then
		return
	fi
	echo "building $name (a cold build takes minutes; later builds are fast)" >&2
	(cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg")
	mv "$out.tmp" "$out"
}

kube_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
build etcd "$root/hack/tools/etcd" go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver "$root/hack/tools/kube" k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
build kubectl "$root/hack/tools/kube" k8s.io/kubernetes/cmd/kubectl "$kube_ldflags"
build kube-controller-manager "$root/hack/tools/kube" k8s.io/kubernetes/cmd/kube-controller-manager "$kube_ldflags"

# helm and golangci-lint print the versions they were built as. helm also
# takes the Kubernetes version it assumes without a cluster (helm template,
# helm lint's deprecation checks) from ldflags, as its own Makefile sets it
# from its client-go (v0.37 here: Kubernetes 1.37).
helm_version=v3.22.0
build helm "$root/hack/tools/helm" helm.sh/helm/v3/cmd/helm \
	"-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37"
build golangci-lint "$root/hack/tools/golangci-lint" github.com/golangci/golangci-lint/v2/cmd/golangci-lint \
	"-s -w -X main.version=v2.15.0"

# The metrics backends of the end-to-end matrix besides Debian's Prometheus
# 2.42: Prometheus 3 (bin/prometheus3; about 8 minutes and 3 GB cold) and
# single-node VictoriaMetrics. Both report the versions they were built as.
prom3_version=3.16.0
build prometheus3 "$root/hack/tools/prometheus3" github.com/prometheus/prometheus/cmd/prometheus \
	"-s -w -X github.com/prometheus/common/version.Version=$prom3_version -X github.com/prometheus/common/version.Revision=v0.316.0 -X github.com/prometheus/common/version.Branch=HEAD"
vm_version=v1.151.0
build victoria-metrics "$root/hack/tools/victoriametrics" github.com/VictoriaMetrics/VictoriaMetrics/app/victoria-metrics \
	"-s -w -X github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo.Version=victoria-metrics-$vm_version"

# Cortex, the multi-tenant store of the e2e suite. Its Makefile builds with
# the slicelabels tag: its label adapters cast Prometheus' labels as a slice,
# which is only right with that layout.
GOFLAGS="${GOFLAGS:+$GOFLAGS }-tags=netgo,slicelabels" build cortex "$root/hack/tools/cortex" github.com/cortexproject/cortex/cmd/cortex \
	"-s -w -X main.Version=1.21.1"
