#!/usr/bin/env bash
# Makes sure schemathesis (from PyPI, a pinned version) is installed in a virtualenv under
# the cache dir, for the orders API's contract test, and prints where it is:
#
#   SCHEMATHESIS=/root/.cache/flatpack/schemathesis-4.32.5/bin/schemathesis
#
# Idempotent: creates the venv and installs with pip only when that version is missing
# (needs python3 with its venv module, and PyPI). Logs go to stderr; stdout carries only the
# line above.
#
#   eval "$(bash scripts/schemathesis.sh)" && export SCHEMATHESIS
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FP_NAME=schemathesis.sh
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

version=4.32.5
venv="$(fp_cache_dir)/schemathesis-$version"
bin="$venv/bin/schemathesis"

if ! "$bin" --version 2>/dev/null | grep -qF "$version"; then
  fp_need_cmd python3
  fp_log "installing schemathesis $version into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" >&2 || fp_die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version" >&2
  "$bin" --version 2>/dev/null | grep -qF "$version" || fp_die "pip finished but $bin is not schemathesis $version"
fi

fp_log "$("$bin" --version 2>/dev/null)"
printf 'SCHEMATHESIS=%s\n' "$bin"
