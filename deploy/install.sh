#!/usr/bin/env bash
# Install the gateway from this checkout as a systemd service; safe to run again (it upgrades).
# Usage: sudo deploy/install.sh [--split] [--postgres] [--dry-run]
set -euo pipefail
# The service user reads what root installs here, whatever root's own umask is.
umask 022

usage() {
  cat <<'EOF'
Usage: sudo deploy/install.sh [--split] [--postgres] [--dry-run]

Installs the gateway from this checkout into /opt/gateway/venv, creates the system user
"gateway", /etc/gateway/gateway.toml and /etc/gateway/gateway.env when they are missing,
installs the systemd units and starts the gateway.

  --split      run one process per protocol (gateway.target) instead of gateway.service;
               needs Redis for the channel layer
  --postgres   also install the PostgreSQL driver (database = "postgres://…")
  --dry-run    print what would be done and change nothing
EOF
}

SPLIT=0 POSTGRES=0 DRY=0
for arg in "$@"; do
  case "$arg" in
    --split) SPLIT=1 ;;
    --postgres) POSTGRES=1 ;;
    --dry-run) DRY=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
  esac
done

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/gateway
VENV="$PREFIX/venv"
ETC=/etc/gateway
STATE=/var/lib/gateway
UNITS=/etc/systemd/system
USER_NAME=gateway
SPLIT_UNITS=(gateway-web.service gateway-mqtt.service gateway-telegram.service)

if [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: must run as root: it creates a system user, /opt/gateway, /etc/gateway and systemd units." >&2
  echo "Run: sudo $0 $*   (or add --dry-run to only see the steps)" >&2
  exit 1
fi

# Every change goes through here, so --dry-run shows exactly the commands a real run would execute.
run() {
  if [ "$DRY" = 1 ]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Write stdin to a file with owner and mode set before any content lands in it (secrets included).
write_file() {
  local path="$1" owner="$2" mode="$3" tmp
  if [ "$DRY" = 1 ]; then
    printf '+ write %s (%s, mode %s)\n' "$path" "$owner" "$mode"
    cat >/dev/null
    return
  fi
  tmp="$(mktemp "$path.XXXXXX")"
  chown "$owner" "$tmp"
  chmod "$mode" "$tmp"
  cat >"$tmp"
  mv "$tmp" "$path"
}

step() { printf '==> %s\n' "$*"; }

step "checking Python (3.11 or newer)"
if ! command -v python3 >/dev/null || ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install.sh: python3 3.11 or newer is needed (Debian 12 has it: apt-get install python3)" >&2
  exit 1
fi

step "system user $USER_NAME"
if getent passwd "$USER_NAME" >/dev/null; then
  echo "    exists"
else
  # The home is the state directory systemd creates; the user never logs in.
  run useradd --system --user-group --home-dir "$STATE" --no-create-home \
    --shell /usr/sbin/nologin --comment "alert gateway" "$USER_NAME"
fi

step "$VENV from $SRC"
if [ ! -x "$VENV/bin/python" ]; then
  # Debian's python3 makes a venv only with python3-venv: try one in a scratch directory first.
  if [ "$DRY" = 1 ]; then
    echo "    (a real run installs python3-venv first if python3 cannot make a venv)"
  elif ! probe="$(mktemp -d)" || ! python3 -m venv "$probe/venv" >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null; then
      echo "install.sh: python3 cannot create a venv: install your distribution's python3-venv" >&2
      exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  fi
  rm -rf "${probe:-}"
  run install -d -m 0755 "$PREFIX"
  run python3 -m venv "$VENV"
fi
target="$SRC"
[ "$POSTGRES" = 1 ] && target="$SRC[postgres]"
# A copy, not an editable install: the service must not depend on (or be able to read) the checkout,
# which may sit under /root or /home where ProtectHome= hides it.
run "$VENV/bin/pip" install -q --upgrade "$target"

step "configuration in $ETC"
run install -d -m 0750 -o root -g "$USER_NAME" "$ETC"
if [ -e "$ETC/gateway.toml" ]; then
  echo "    $ETC/gateway.toml exists: kept"
else
  edits=(-e "s|^state_dir = .*|state_dir = \"$STATE\"|")
  # Split processes hear each other only through Redis.
  [ "$SPLIT" = 1 ] && edits+=(-e 's|^channel_layer = .*|channel_layer = "redis://127.0.0.1:6379/0"|')
  sed "${edits[@]}" "$SRC/gateway.example.toml" | write_file "$ETC/gateway.toml" "root:$USER_NAME" 0640
fi
if [ "$SPLIT" = 1 ]; then
  if grep -qs '^channel_layer = "memory"' "$ETC/gateway.toml"; then
    echo "    warning: $ETC/gateway.toml has channel_layer = \"memory\": split processes need redis://…" >&2
  fi
  if ! command -v redis-server >/dev/null; then
    echo "    note: no redis-server on this box: apt-get install redis-server, or point channel_layer elsewhere"
  fi
fi
if [ -e "$ETC/gateway.env" ]; then
  echo "    $ETC/gateway.env exists: kept"
else
  # Read by systemd (as root) for EnvironmentFile=: the service user needs no access at all.
  write_file "$ETC/gateway.env" root:root 0600 <<'EOF'
# Secrets for the gateway, as VAR=value lines; the config refers to them as ${VAR}.
# Read by systemd for gateway.service and the split units (EnvironmentFile=). Keep it mode 600.
#TELEGRAM_BOT_TOKEN=123456:ABC...
#GATEWAY_TOKEN_OPS=a-long-random-secret
EOF
fi

step "systemd units in $UNITS"
for unit in "$SRC"/deploy/systemd/*.service "$SRC"/deploy/systemd/*.target; do
  run install -m 0644 "$unit" "$UNITS/$(basename "$unit")"
done
run systemctl daemon-reload

# Start the chosen shape, and make sure the other one does not come back at boot (they conflict).
# A running service is restarted, so a re-run also puts upgraded code and units to work.
start() {
  if systemctl is-active --quiet "$1" 2>/dev/null; then
    run systemctl enable --quiet "$1"
    run systemctl restart "$1"
  else
    run systemctl enable --quiet --now "$1"
  fi
}
if [ "$SPLIT" = 1 ]; then
  # The workers' process only where the config names workers ([[workers]]): without, it exits 2.
  if grep -q '^[[:space:]]*\[\[workers\]\]' "$ETC/gateway.toml" 2>/dev/null; then
    SPLIT_UNITS+=(gateway-worker.service)
  fi
  step "starting gateway.target (${SPLIT_UNITS[*]})"
  run systemctl disable --quiet --now gateway.service
  run systemctl enable --quiet "${SPLIT_UNITS[@]}"
  start gateway.target  # a restart of the target restarts each unit (PartOf=)
else
  step "starting gateway.service"
  run systemctl disable --quiet --now gateway.target "${SPLIT_UNITS[@]}" gateway-worker.service
  start gateway.service
fi

step "done"
cat <<EOF
    config:  $ETC/gateway.toml ('systemctl reload gateway*' applies sensors, rules, tokens)
    secrets: $ETC/gateway.env
    state:   $STATE
    logs:    journalctl -u 'gateway*' -f
    status:  systemctl status 'gateway*'
EOF
