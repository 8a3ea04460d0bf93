#!/bin/sh
# Build dist/edge-agent_<version>_<arch>.deb with dpkg-deb from a staging tree that
# scripts/install.sh lays out (the environment under /opt/edge-agent, the unit under
# /lib/systemd/system, the config as a conffile). The environment is made in the staging tree
# and relocated to /opt/edge-agent (install.sh's relocate()), so the package assumes the same
# Python at the same path on the board as here (default /usr/bin/python3): build it on the
# board's OS release and architecture (e.g. in a Raspberry Pi OS container). docs/install.md.
#
#   scripts/build-deb.sh [--wheel FILE] [--find-links DIR] [--extras LIST] [--out DIR]
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=$SRC/dist
PYTHON=${PYTHON:-/usr/bin/python3}
PASS=
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=$2; shift 2 ;;
        --wheel|--find-links|--extras) PASS="$PASS $1 $2"; shift 2 ;;
        *) echo "build-deb.sh: unknown option: $1" >&2; exit 2 ;;
    esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/root
# shellcheck disable=SC2086 # PASS holds option/value pairs, none with spaces
PYTHON=$PYTHON "$SRC/scripts/install.sh" --destdir "$stage" --unit-dir /lib/systemd/system $PASS
# The state directory is made by postinst (owned by the service user), not shipped.
rm -rf "${stage:?}/var"

version=$("$stage/opt/edge-agent/bin/python" -c \
    'import importlib.metadata as m; print(m.version("edge-fleet"))')
arch=$(dpkg --print-architecture)
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
install -d "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<CONTROL
Package: edge-agent
Version: $version
Architecture: $arch
Maintainer: Edge fleet maintainers <edge-fleet@localhost>
Depends: python$pyver, systemd, adduser | passwd
Section: net
Priority: optional
Installed-Size: $(du -sk "$stage" | cut -f1)
Description: Edge fleet device agent (telemetry, events and commands over MQTT)
 The agent in its own Python environment under /opt/edge-agent, run by systemd
 (edge-agent.service) as the edge-agent system user. Built for Python $pyver.
CONTROL
# A conffile: dpkg keeps a locally changed config on upgrade (and asks) and removes it only
# on purge.
echo /etc/edge-agent/agent.toml >"$stage/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$SRC/scripts/deb/$script" "$stage/DEBIAN/$script"
done

mkdir -p "$OUT"
deb=$OUT/edge-agent_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
