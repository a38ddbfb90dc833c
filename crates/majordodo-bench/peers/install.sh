#!/usr/bin/env bash
# Installs what `majordodo-bench compare` needs to run its peers, where it is missing:
#   - redis-server and redis-cli from Debian (apt-get; through sudo when not root);
#   - BullMQ and ioredis at the versions pinned in node/package-lock.json, with `npm ci`,
#     into PEERS_DIR/node;
#   - celery[redis] as pinned in requirements.txt, in a Python venv at PEERS_DIR/venv.
# Usage: install.sh PEERS_DIR [redis|bullmq|celery ...]   (no names: all three)
# Idempotent: what is already there at the pinned version is left alone. Exits non-zero naming
# what is missing (apt-get, node, npm, python3) when it cannot install.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 PEERS_DIR [redis|bullmq|celery ...]" >&2; exit 2; }
DIR="$1"; shift
WANT="${*:-redis bullmq celery}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

say() { echo "peers: $*"; }
die() { echo "peers: $*" >&2; exit 1; }

install_redis() {
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    say "redis-server present ($(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/'))"
    return
  fi
  command -v apt-get >/dev/null || die "redis-server is missing and apt-get is not available to install it"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "redis-server is missing; installing it needs root or sudo"
    sudo="sudo"
  fi
  say "installing redis-server from Debian (apt-get)"
  $sudo apt-get update -q
  # The package may try to start a system service; the bench starts its own Redis instead.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q redis-server
  command -v redis-server >/dev/null || die "apt-get ran but redis-server is still missing"
}

install_bullmq() {
  command -v node >/dev/null || die "node is missing (Node.js >= 18 is needed for BullMQ)"
  command -v npm >/dev/null || die "npm is missing (it comes with Node.js)"
  local want have
  want="$(node -p "require('$HERE/node/package.json').dependencies.bullmq")"
  have="$(node -p "try{require('$DIR/node/node_modules/bullmq/package.json').version}catch(e){''}")"
  if [ "$have" = "$want" ] && cmp -s "$HERE/node/package-lock.json" "$DIR/node/package-lock.json"; then
    say "bullmq $have present"
    return
  fi
  say "installing bullmq $want (npm ci into $DIR/node)"
  mkdir -p "$DIR/node"
  cp "$HERE/node/package.json" "$HERE/node/package-lock.json" "$DIR/node/"
  (cd "$DIR/node" && npm ci --no-audit --no-fund --loglevel=error)
}

install_celery() {
  command -v python3 >/dev/null || die "python3 is missing (needed for Celery)"
  local want have
  want="$(sed -n 's/^celery\[redis\]==//p' "$HERE/requirements.txt")"
  if [ ! -x "$DIR/venv/bin/python" ]; then
    say "creating a Python venv at $DIR/venv"
    python3 -m venv "$DIR/venv" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  fi
  have="$("$DIR/venv/bin/python" -I -c 'import celery, redis; print(celery.__version__)' 2>/dev/null || true)"
  if [ "$have" = "$want" ]; then
    say "celery $have present"
    return
  fi
  say "installing celery[redis] $want (pip into $DIR/venv)"
  "$DIR/venv/bin/python" -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt"
}

for w in $WANT; do
  case "$w" in
    redis) install_redis ;;
    bullmq) install_bullmq ;;
    celery) install_celery ;;
    *) die "unknown peer $w (redis, bullmq, celery)" ;;
  esac
done
say "ready in $DIR"
