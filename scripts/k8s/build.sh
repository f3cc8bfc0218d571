#!/usr/bin/env bash
# Builds the Kubernetes v1.20.2 binaries the test cluster runs, from Debian's source package and
# Go 1.15 from Debian bullseye, offline from the module cache point of view (vendor/ is in the
# tree). No cluster distribution can be downloaded on our machines, but Debian's packages can.
#
#   K8S_CACHE=/var/cache/poc-routing/k8s  (default) holds the result, keyed by version:
#   $K8S_CACHE/v1.20.2/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy}
#
# An existing, complete set is reused. Go >= 1.18 must not be used: the vendored reflect2
# crashes at run time.
set -euo pipefail

VERSION=v1.20.2
CACHE=${K8S_CACHE:-/var/cache/poc-routing/k8s}/$VERSION
BINARIES=(${K8S_BINARIES:-kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy})
log() { printf '[k8s-build] %s\n' "$*"; }

have_all() {
  for b in "${BINARIES[@]}"; do [ -x "$CACHE/bin/$b" ] || return 1; done
}
if have_all; then
  log "reusing $CACHE/bin (${BINARIES[*]})"
  exit 0
fi

for tool in rsync dpkg-deb apt-get; do
  command -v "$tool" >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq rsync
  }
done

work=$CACHE/work
mkdir -p "$work" "$CACHE/bin"
# A private apt configuration: bookworm's sources for the kubernetes source package, bullseye
# for golang-1.15. The system's apt sources are not touched.
apt_dir=$work/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
cat >"$apt_dir/sources.list" <<SOURCES
deb-src http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bullseye main
SOURCES
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")

cd "$work"
if [ ! -d src/kubernetes-1.20.2 ]; then
  log "fetching Debian's kubernetes source package and golang-1.15"
  apt-get "${apt_opts[@]}" -qq update
  apt-get "${apt_opts[@]}" -qq source --download-only kubernetes 2>/dev/null
  apt-get "${apt_opts[@]}" -qq download golang-1.15-go golang-1.15-src 2>/dev/null
  mkdir -p src go
  tar xzf kubernetes_*.orig.tar.gz -C src
  for deb in golang-1.15-go_*.deb golang-1.15-src_*.deb; do dpkg-deb -x "$deb" go; done
  rm -f ./*.deb ./*.tar.gz ./*.tar.xz ./*.dsc
fi
tree=$work/src/kubernetes-1.20.2
export GOROOT=$work/go/usr/lib/go-1.15
export PATH=$GOROOT/bin:$PATH GOPATH=$work/gopath GOCACHE=$work/gocache
export GOFLAGS=-mod=vendor CGO_ENABLED=0 GO111MODULE=on
log "$(go version)"

# kubelet on machines without CAP_SYS_RESOURCE: a negative oom_score_adj is refused there, and
# the stock kubelet then loops on "can't get final child's PID from pipe". Two constants.
sed -i 's/^\(\s*defaultSandboxOOMAdj\s*int\s*=\s*\)-998/\10/' "$tree/pkg/kubelet/dockershim/docker_sandbox.go"
sed -i 's/return guaranteedOOMScoreAdj$/return 0/' "$tree/pkg/kubelet/qos/policy.go"
grep -q 'defaultSandboxOOMAdj int = 0' "$tree/pkg/kubelet/dockershim/docker_sandbox.go" ||
  { echo "the kubelet patch did not apply (docker_sandbox.go)" >&2; exit 1; }

cd "$tree"
if [ ! -f .generated_files_done ]; then
  log "make generated_files (a few minutes)"
  make generated_files >"$work/generated_files.log" 2>&1 || { tail -n 40 "$work/generated_files.log" >&2; exit 1; }
  touch .generated_files_done
fi
version_flags="-X k8s.io/component-base/version.gitVersion=$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=20 -X k8s.io/client-go/pkg/version.gitVersion=$VERSION"
for b in "${BINARIES[@]}"; do
  [ -x "$CACHE/bin/$b" ] && continue
  log "go build $b"
  go build -tags providerless -ldflags "-s -w $version_flags" -o "$CACHE/bin/$b" "./cmd/$b"
done
"$CACHE/bin/kube-apiserver" --version
log "built into $CACHE/bin"
