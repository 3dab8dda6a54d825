# Sourced by scripts/run and scripts/test: make .venv, installing python3-venv first on Debian if needed.
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "scripts/${0##*/}: making $VENV, with the newest pip from the package index (once)" >&2
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      rm -rf "$VENV"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    else
      echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
  "$VENV/bin/pip" install -q --upgrade pip
fi

# install_once NAME SPEC: pip install -e SPEC, unless this pyproject.toml is already installed so.
# Later starts then never ask the package index (an edge box is often offline); the stamp is a
# copy of the pyproject.toml installed, written only once pip succeeded.
install_once() {
  local stamp="$VENV/.installed-$1"
  cmp -s pyproject.toml "$stamp" && return 0
  if [ -f "$stamp" ]; then
    echo "scripts/${0##*/}: pyproject.toml changed since the last install: pip install -e $2 again" >&2
  else
    echo "scripts/${0##*/}: installing the gateway and its dependencies into $VENV (pip install -e $2);" \
      "once: later runs skip this until pyproject.toml changes" >&2
  fi
  if ! "$VENV/bin/pip" install -q -e "$2"; then
    echo "scripts/${0##*/}: pip install failed (is the package index reachable?); it is tried again at the next run" >&2
    exit 1
  fi
  cp pyproject.toml "$stamp"
}
