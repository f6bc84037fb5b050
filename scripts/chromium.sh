#!/usr/bin/env bash
# Makes sure Debian's headless-capable Chromium is installed, for the dashboard's browser
# test, and prints where it is:
#
#   CHROMIUM=/usr/bin/chromium
#
# Idempotent: installs with apt-get only when /usr/bin/chromium is missing (needs root or
# sudo, and Debian's package archive). Logs go to stderr; stdout carries only the line above.
#
#   eval "$(bash scripts/chromium.sh)" && export CHROMIUM
set -euo pipefail

CHROMIUM=/usr/bin/chromium

log() { printf 'chromium.sh: %s\n' "$*" >&2; }

if [[ ! -x "$CHROMIUM" ]]; then
  command -v apt-get >/dev/null || { log "error: $CHROMIUM is missing and there is no apt-get to install it"; exit 1; }
  sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || { log "error: installing chromium needs root or sudo"; exit 1; }
    sudo=(sudo)
  fi
  log "installing Debian's chromium package"
  "${sudo[@]}" apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q chromium >&2
  [[ -x "$CHROMIUM" ]] || { log "error: apt-get finished but $CHROMIUM is still missing"; exit 1; }
fi

log "$("$CHROMIUM" --version 2>/dev/null || echo 'chromium (version unknown)')"
printf 'CHROMIUM=%s\n' "$CHROMIUM"
