#!/usr/bin/env bash
# Installs everything codiag needs on a Debian/Ubuntu machine: the embedded
# Fashion-MNIST (Debian's dataset-fashion-mnist), Chromium for the report test,
# and codiag itself with its test extras and the trackers its tests use (torch and
# torchvision come with it).
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
# never downgrades what is installed (pip check stays clean): no extra pins an old release;
# the frameworks of codiag.integrations and the trackers are installed for their tests
python3 -m pip install -q -e ".[test,autoattack,ray,tensorboard,wandb,mlflow,lightning,hf,tune]"
python3 -m pip check || echo "install.sh: pip check found the conflicts above (installed before codiag)" >&2
command -v pyenv >/dev/null && pyenv rehash || true
