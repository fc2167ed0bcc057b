#!/usr/bin/env bash
# Installs the pinned real components the tests and the lab run, skipping what is already there.
#
# Go binaries are built from the Go module proxy into $DEPS_DIR/bin (git-ignored). A finished build is
# also kept in a machine-wide cache ($CACHE_DIR/<name>-<version>), so a fresh clone on the same machine
# (CI runs in one) copies instead of rebuilding. Debian packages come from apt. The Python environment
# lives in .venv.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
DEPS_DIR=${DEPS_DIR:-$root/.deps}
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/coredns-gslb}
BIN=$DEPS_DIR/bin
mkdir -p "$BIN" "$CACHE_DIR"

COREDNS_VERSION=v1.14.7
KUBE_VERSION=v1.34.4
KWOK_VERSION=v0.7.0
ETCD_VERSION=v3.6.16
GATEWAY_API_VERSION=v1.6.0  # CRDs, standard channel (TCPRoute/UDPRoute are v1 there since v1.6)
H2SPEC_VERSION=v2.2.1

log() { printf '[deps] %s\n' "$*" >&2; }

# have NAME VERSION: true when $BIN/NAME is the pinned build (restored from the machine cache if needed).
have() {
  local name=$1 version=$2 cached=$CACHE_DIR/$1-$2
  if [[ -x $BIN/$name && -f $BIN/.$name.version && $(cat "$BIN/.$name.version") == "$version" ]]; then
    return 0
  fi
  if [[ -x $cached ]]; then
    cp "$cached" "$BIN/$name" && echo "$version" >"$BIN/.$name.version"
    log "$name $version restored from $CACHE_DIR"
    return 0
  fi
  return 1
}

# keep NAME VERSION: record a fresh build in $BIN and the machine cache.
keep() {
  local name=$1 version=$2
  echo "$version" >"$BIN/.$name.version"
  cp "$BIN/$name" "$CACHE_DIR/$name-$version.tmp" && mv "$CACHE_DIR/$name-$version.tmp" "$CACHE_DIR/$name-$version"
}

need_go() {
  command -v go >/dev/null || { log "Go >= 1.25 is required (CoreDNS $COREDNS_VERSION needs it)"; exit 1; }
  local minor
  minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
  ((minor >= 25)) || { log "Go >= 1.25 is required, found $(go env GOVERSION)"; exit 1; }
}

apt_packages() {
  local missing=()
  command -v named >/dev/null || [[ -x /usr/sbin/named ]] || missing+=(bind9)
  command -v dig >/dev/null || missing+=(bind9-dnsutils)
  command -v dnsperf >/dev/null || missing+=(dnsperf)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v zonemaster-cli >/dev/null || missing+=(zonemaster-cli)  # tests/test_zonemaster.py; bookworm: 5.0.2
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

coredns() {
  have coredns $COREDNS_VERSION && return 0
  need_go
  log "building CoreDNS $COREDNS_VERSION (go install)"
  GOBIN=$BIN go install github.com/coredns/coredns@$COREDNS_VERSION
  keep coredns $COREDNS_VERSION
}

kwok() {
  have kwok $KWOK_VERSION && return 0
  need_go
  log "building kwok $KWOK_VERSION (go install)"
  GOBIN=$BIN go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION
  keep kwok $KWOK_VERSION
}

etcd() {
  have etcd $ETCD_VERSION && return 0
  need_go
  log "building etcd $ETCD_VERSION (wrapper module deps/etcd)"
  (cd "$root/deps/etcd" && go build -o "$BIN/etcd" .)
  keep etcd $ETCD_VERSION
}

h2spec() {
  have h2spec $H2SPEC_VERSION && return 0
  need_go
  log "building h2spec $H2SPEC_VERSION (wrapper module deps/h2spec: the module has no go.mod of its own)"
  (cd "$root/deps/h2spec" && go build -o "$BIN/h2spec" \
    -ldflags "-X main.VERSION=${H2SPEC_VERSION#v} -X main.COMMIT=$H2SPEC_VERSION" github.com/summerwind/h2spec/cmd/h2spec)
  keep h2spec $H2SPEC_VERSION
}

# The bench's floor for the grpc hop (deps/floor: our own few lines on CoreDNS's pb package); its version is
# its source's hash, so an edit rebuilds it.
floor() {
  local version
  version=$(cat "$root"/deps/floor/{main.go,go.mod,go.sum} | sha256sum | cut -c1-12)
  have grpc-floor "$version" && return 0
  need_go
  log "building grpc-floor $version (deps/floor)"
  (cd "$root/deps/floor" && go build -o "$BIN/grpc-floor" .)
  keep grpc-floor "$version"
}

kube() {
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl) todo=() c
  for c in "${cmds[@]}"; do have "$c" $KUBE_VERSION || todo+=("k8s.io/kubernetes/cmd/$c"); done
  ((${#todo[@]})) || return 0
  need_go
  log "building ${todo[*]##*/} $KUBE_VERSION (wrapper module deps/kube; a cold build takes a while)"
  local minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  (cd "$root/deps/kube" && go build -o "$BIN/" -ldflags "-X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 \
    -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION" \
    "${todo[@]}")
  for c in "${todo[@]}"; do keep "${c##*/}" $KUBE_VERSION; done
}

# The Gateway API CRDs from the Go module (Apache-2.0), standard channel, into $DEPS_DIR/crds/gateway-api:
# the control planes of the tests and the lab apply them (lab/kube.py: install_gateway_api).
gateway_api() {
  local dest=$DEPS_DIR/crds/gateway-api cached=$CACHE_DIR/gateway-api-crds-$GATEWAY_API_VERSION
  [[ -f $dest/.version && $(cat "$dest/.version") == "$GATEWAY_API_VERSION" ]] && return 0
  if [[ ! -d $cached ]]; then
    need_go
    log "Gateway API $GATEWAY_API_VERSION CRDs (go mod download)"
    local dir
    dir=$(cd "$root/deps/kube" && go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" |
      sed -nE 's/^\s*"Dir": "(.*)",?$/\1/p')
    [[ -d $dir/config/crd/standard ]] || { log "no config/crd/standard in $dir"; exit 1; }
    mkdir -p "$cached.tmp"
    cp "$dir"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$dir/LICENSE" "$cached.tmp/"
    chmod -R u+w "$cached.tmp" && mv "$cached.tmp" "$cached"
  fi
  rm -rf "$dest" && mkdir -p "$dest" && cp "$cached"/* "$dest/"
  echo "$GATEWAY_API_VERSION" >"$dest/.version"
}

venv() {
  local py=$root/.venv/bin/python stamp=$root/.venv/.installed
  [[ -x $py ]] || python3 -m venv "$root/.venv"
  if [[ ! -f $stamp || $root/pyproject.toml -nt $stamp || $root/lab/pyproject.toml -nt $stamp ]]; then
    # the lab is a distribution of its own (lab/pyproject.toml), never in the product's wheel
    log "pip install -e .[dev] -e lab"
    "$py" -m pip install -q --upgrade pip >/dev/null
    "$py" -m pip install -q -e "$root[dev]" -e "$root/lab"
    touch "$stamp"
  fi
}

what=${1:-all}
case $what in
  all) apt_packages; venv; coredns; kwok; etcd; h2spec; floor; kube; gateway_api ;;
  apt) apt_packages ;;
  venv | coredns | kwok | etcd | h2spec | floor | kube | gateway_api) $what ;;
  *) log "usage: $0 [all|apt|venv|coredns|kwok|etcd|h2spec|floor|kube|gateway_api]"; exit 2 ;;
esac
log "ready: $(ls "$BIN" | tr '\n' ' ')"
