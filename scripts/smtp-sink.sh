#!/usr/bin/env bash
# Installs Postfix's smtp-sink, an SMTP server made for benchmarking SMTP clients (it accepts
# every message and keeps none), into the cache, and prints how to run it:
#
#   scripts/smtp-sink.sh    SMTP_SINK=$HOME/.cache/flatpack/postfix/smtp-sink
#
# The program comes from Debian's `postfix` package, unpacked rather than installed, so that
# no mail system is configured or started on the machine; the libraries it needs that the
# machine lacks are unpacked next to it. Run it as `smtp-sink [-u nobody] 127.0.0.1:PORT 256`
# (`-u` is required as root). The benchmark's e-mail ceiling and latency runs send to it.
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
FP_NAME=smtp-sink.sh
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

dir="$(fp_cache_dir)/postfix"
wrapper="$dir/smtp-sink"

# Without arguments it prints its usage, which needs the program and all its libraries.
works() { [[ -x $wrapper && "$("$wrapper" 2>&1 || true)" == *usage:* ]]; }

install() {
  works && return 0
  local work pkg
  work="$(fp_mktemp_dir flatpack-postfix)"
  chmod a+rwx "$work" # apt-get download writes as its own user where it can
  fp_log "unpacking smtp-sink from Debian's postfix package"
  # The package, and each library it depends on that is not installed here.
  local -a pkgs=(postfix)
  for pkg in $(apt-cache depends postfix | awk '$1 == "Depends:" && $2 ~ /^lib/ { print $2 }'); do
    dpkg -s "$pkg" >/dev/null 2>&1 || pkgs+=("$pkg")
  done
  if ! (cd "$work" && apt-get download "${pkgs[@]}" >&2); then
    rm -rf -- "$work"
    fp_die "downloading ${pkgs[*]} failed (see above)"
  fi
  rm -rf -- "$dir.new" && mkdir -p -- "$dir.new"
  for pkg in "$work"/*.deb; do dpkg-deb -x "$pkg" "$dir.new/root"; done
  rm -rf -- "$work"
  cat >"$dir.new/smtp-sink" <<EOF
#!/bin/sh
root="$dir/root"
LD_LIBRARY_PATH="\$root/usr/lib/postfix:\$root/usr/lib/x86_64-linux-gnu:\$root/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
  exec "\$root/usr/sbin/smtp-sink" "\$@"
EOF
  chmod +x "$dir.new/smtp-sink"
  rm -rf -- "$dir" && mv -- "$dir.new" "$dir"
  works || fp_die "$wrapper does not run: $("$wrapper" 2>&1 | head -3)"
}

fp_need_cmd apt-get dpkg-deb
mkdir -p -- "$(dirname -- "$dir")"
fp_with_lock "$dir.lock" install
fp_log "smtp-sink: $wrapper"
printf 'SMTP_SINK=%s\n' "$wrapper"
