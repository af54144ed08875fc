#!/usr/bin/env bash
# Builds the local control plane into bin/: kube-apiserver and kubectl from
# k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3. Each binary is built
# only when it is missing or its tools module changed since it was built.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
mkdir -p "$bin"
kube_version=v1.37.2

# build NAME MODULE_DIR PACKAGE [LDFLAGS]
build() {
	local name=$1 dir=$2 pkg=$3 ldflags=${4:-}
	local out="$bin/$name"
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
