#!/bin/sh
# Install the edge agent on a board (Raspberry Pi OS, Jetson Linux, Debian, Ubuntu) that has
# python3 (with its venv module) and systemd: a virtual environment under /opt/edge-agent with
# the agent in it, the service user, /etc/edge-agent/agent.toml (only if absent: a config is
# never overwritten), the state directory and the systemd unit. Idempotent: a second run with
# the same wheel or source changes nothing. See docs/install.md.
#
#   sudo scripts/install.sh                         # from this source tree
#   sudo scripts/install.sh --wheel edge_fleet-0.1.0-py3-none-any.whl --extras inference
#   sudo scripts/install.sh --wheel W.whl --find-links /media/usb/wheels   # offline
#   scripts/install.sh --destdir /tmp/root          # a staging tree: the real system untouched
#
# With a DESTDIR nothing outside it is touched: no user is created (the commands are printed),
# files are not chowned and systemctl is not run. `make install` and `make deb` call this.
set -eu

PREFIX=/opt/edge-agent
SERVICE_USER=edge-agent
UNIT=edge-agent.service
DESTDIR=${DESTDIR:-}
UNIT_DIR=/etc/systemd/system
PYTHON=${PYTHON:-python3}
WHEEL=
FIND_LINKS=
EXTRAS=
SYSTEM_ONLY=0
FORCE=0
SRC=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options:
  --destdir DIR      install into DIR (a staging root); also the DESTDIR variable
  --wheel FILE       install this wheel instead of building one from the source tree
  --find-links DIR   offline: take the agent's dependencies from DIR only (pip --no-index)
  --extras LIST      pip extras, e.g. inference (models on the board); default: none
  --python PY        the interpreter the environment is made from (default: python3)
  --unit-dir DIR     where the unit goes (default: /etc/systemd/system)
  --force            reinstall the agent even if the same version is installed
  --system-only      only the user, directories and systemd steps (the .deb's postinst)
EOF
}

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --destdir) DESTDIR=$2; shift 2 ;;
        --wheel) WHEEL=$2; shift 2 ;;
        --find-links) FIND_LINKS=$2; shift 2 ;;
        --extras) EXTRAS=$2; shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --unit-dir) UNIT_DIR=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        --system-only) SYSTEM_ONLY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

# A staging root: "" is the real system. Trailing slashes dropped so paths join cleanly.
ROOT=${DESTDIR%/}
VENV=$ROOT$PREFIX
staged() { [ -n "$ROOT" ]; }

# Run a command that changes the real system; under a DESTDIR print it instead.
system() {
    if staged; then
        say "DESTDIR set, not running: $*"
    else
        "$@"
    fi
}

ensure_user() {
    if ! staged && getent passwd "$SERVICE_USER" >/dev/null; then
        : # already there (a second run, or an upgrade)
    else
        system useradd --system --user-group --no-create-home --home-dir /var/lib/edge-agent \
            --shell /usr/sbin/nologin --comment "edge fleet device agent" "$SERVICE_USER"
    fi
    # dialout: serial ports; video/render: the Raspberry Pi's VideoCore and the Jetson's GPU
    # nodes. Only groups that exist on this board (render is missing on older images).
    for group in dialout video render; do
        if staged; then
            say "DESTDIR set, not running: usermod --append --groups $group $SERVICE_USER (if $group exists)"
        elif getent group "$group" >/dev/null; then
            id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$group" \
                || usermod --append --groups "$group" "$SERVICE_USER"
        fi
    done
}

ensure_dirs() {
    # /etc/edge-agent is root's, group-writable by the service user: a remote `config-set`
    # replaces agent.toml there (atomically, by rename, with agent.toml.previous beside it).
    # Others get nothing: a device key or agent.env may sit in it.
    install -d -m 0770 "$ROOT/etc/edge-agent"
    install -d -m 0700 "$ROOT/var/lib/edge-agent"
    if ! staged; then
        chgrp "$SERVICE_USER" /etc/edge-agent
        chown "$SERVICE_USER:$SERVICE_USER" /var/lib/edge-agent
    fi
}

ensure_config() {
    config=$ROOT/etc/edge-agent/agent.toml
    if [ -e "$config" ]; then
        say "keeping $config"
    else
        install -m 0644 "$SRC/docs/agent.example.toml" "$config"
        say "wrote $config from docs/agent.example.toml: set device_id and [mqtt] in it"
    fi
}

# The source tree copied without what a wheel never contains: building in the checkout would
# leave build/ and *.egg-info behind.
build_wheel() {
    mkdir -p "$work/src" "$work/wheel"
    (cd "$SRC" && tar -cf - --exclude=./.git --exclude='./.venv*' --exclude=./models \
        --exclude=./firmware --exclude=./bench --exclude=./tests --exclude=./docs \
        --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude='./.*cache' .) | (cd "$work/src" && tar -xf -)
    "$VENV/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheel" "$work/src" >&2
    ls "$work/wheel"/*.whl
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
        say "created the environment $PREFIX (from $PYTHON)"
    fi
    wheel=$WHEEL
    [ -n "$wheel" ] || wheel=$(build_wheel)
    requirement=$wheel
    [ -z "$EXTRAS" ] || requirement="${wheel}[${EXTRAS}]"
    set -- --disable-pip-version-check
    [ -z "$FIND_LINKS" ] || set -- "$@" --no-index --find-links "$FIND_LINKS"
    [ "$FORCE" = 0 ] || set -- "$@" --force-reinstall --no-deps
    # The same version already installed: pip changes nothing ("already satisfied").
    "$VENV/bin/python" -m pip install "$@" "$requirement" >"$work/pip.log" 2>&1 \
        || { cat "$work/pip.log" >&2; die "pip install failed"; }
    if grep -q '^Successfully installed' "$work/pip.log"; then
        grep '^Successfully installed' "$work/pip.log"
        staged && relocate
    else
        say "the agent in $PREFIX is up to date (--force reinstalls it)"
    fi
}

# A virtual environment is not relocatable: its scripts' shebangs and activate files name the
# path it was made at. Made under a DESTDIR, they are rewritten to $PREFIX, and the bytecode is
# recompiled so tracebacks name the real paths. pyvenv.cfg's `home` (the base interpreter's
# directory) and bin/python (a link to it) stay: the board needs the same Python there.
relocate() {
    grep -rlF "$VENV" "$VENV/bin" "$VENV/pyvenv.cfg" 2>/dev/null | while read -r file; do
        sed -i "s|$VENV|$PREFIX|g" "$file"
    done
    "$VENV/bin/python" -m compileall -q -f -s "$ROOT" -p / "$VENV/lib" >/dev/null
}

ensure_unit() {
    # The repository's unit runs /usr/bin/edge-agent as a dynamic user; installed here it runs
    # the environment's script as the static service user that owns the state directory.
    install -d -m 0755 "$ROOT$UNIT_DIR"
    unit=$ROOT$UNIT_DIR/$UNIT
    # ProtectSystem=strict keeps /etc read-only; ReadWritePaths opens /etc/edge-agent (and
    # its group mode, above, opens it to the service user alone) for `config-set`.
    sed -e "s|^ExecStart=/usr/bin/edge-agent |ExecStart=$PREFIX/bin/edge-agent |" \
        -e "s|^DynamicUser=yes$|User=$SERVICE_USER\nGroup=$SERVICE_USER|" \
        -e "s|^ConfigurationDirectory=edge-agent$|ReadWritePaths=/etc/edge-agent|" \
        "$SRC/systemd/$UNIT" >"$work/$UNIT"
    # Written only when it differs, so a second run leaves the directory's mtime alone too.
    if ! cmp -s "$work/$UNIT" "$unit"; then
        install -m 0644 "$work/$UNIT" "$unit"
        say "installed $UNIT_DIR/$UNIT"
    fi
}

enable_unit() {
    if staged; then
        say "DESTDIR set: not running systemctl daemon-reload / enable $UNIT"
    elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl daemon-reload
        systemctl enable "$UNIT" >/dev/null 2>&1 || systemctl enable "$UNIT"
        say "enabled $UNIT; start it with: systemctl start $UNIT"
    else
        say "systemd is not running here: enable $UNIT once it is"
    fi
}

if [ "$SYSTEM_ONLY" = 1 ]; then
    ensure_user
    ensure_dirs
    enable_unit
    exit 0
fi
if ! staged && [ "$(id -u)" != 0 ]; then
    die "run as root (or give --destdir DIR for a staging tree)"
fi
# Scratch space: the copied source, the built wheel, pip's log, the rendered unit.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ensure_user
ensure_dirs
ensure_config
ensure_venv
ensure_unit
# The .deb's postinst runs this copy with --system-only.
if ! cmp -s "$0" "$VENV/share/edge-agent/install.sh"; then
    install -D -m 0755 "$0" "$VENV/share/edge-agent/install.sh"
fi
enable_unit
say "done"
