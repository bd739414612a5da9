#!/usr/bin/env bash
# Installs everything codiag needs on a Debian/Ubuntu machine: the embedded
# Fashion-MNIST (Debian's dataset-fashion-mnist), Chromium for the report test,
# and codiag itself with its test extra (torch and torchvision come with it).
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends dataset-fashion-mnist chromium
else
  echo "install.sh: no apt-get here; install Fashion-MNIST under --data-root yourself" >&2
fi
python3 -m pip install -q -e ".[test,autoattack,ray]"
python3 -m pip install -q -e ".[lightning,hf,tune]"   # the frameworks of codiag.integrations, for their tests
command -v pyenv >/dev/null && pyenv rehash || true
