#!/bin/bash
# Install the real MTAs used by the logstats real-MTA tests (Debian 12, run as root).
#
# * Exim 4 (exim4-daemon-light, which also ships eximstats) is installed with apt.
#   Debian's policy-rc.d keeps the packaged service from starting; the tests start
#   their own daemon with their own config file and spool directory.
# * Postfix conflicts with Exim as a package, so it is fetched with `apt-get download`
#   and unpacked with `dpkg -x` into $POSTFIX_ROOT (default /opt/logstats-test/postfix).
#   Its binaries carry RUNPATH /usr/lib/postfix; they are re-pointed with patchelf
#   (set-gid postdrop/postqueue ignore LD_LIBRARY_PATH).
# * pflogsumm, patchelf, sasl2-bin (saslpasswd2, for Postfix cyrus SASL with a sasldb2
#   file: no saslauthd needed) and the shared libraries Postfix links against.
# * Users/groups: postfix, postdrop (Postfix), lsuser1/lsuser2 (local submitters).
# * For tests/test_systemd.py: systemd (systemd-analyze verify, systemd-sysusers),
#   python3-seccomp (runs logstats under the unit's SystemCallFilter=) and logrotate
#   (checks config/logrotate.sample).  No service is started.  The same systemd gives
#   tests/test_journal.py and tests/test_journal_source.py their private systemd-journald,
#   and journalctl (util-linux's unshare and mount are in every Debian).
# * For tests/test_metrics.py: promtool, from the package prometheus (its server is not
#   wanted: while it is installed a policy-rc.d refuses every service start, and the
#   unit it ships is left disabled and stopped).
# * For tests/test_install.py: python3-venv (a fresh venv from the system Python, as the
#   install steps make it) and man-db with groff-base (`man -l docs/logstats.1`).
# * For tests/test_events_api.py: nodejs and npm (the test runs `npm ci` in tests/js for
#   the official mailgun.js SDK, pinned by tests/js/package-lock.json). A nodejs package
#   that carries its own npm (NodeSource's) conflicts with Debian's npm: that is only
#   installed when no npm is on the PATH.
# * For tests/test_web.py: chromium (the web UI is driven in real headless Chromium).
# * For tests/test_fleet.py: a Java 17 runtime (openjdk-17-jre-headless) for pyspark's
#   local Spark, unless a java is on the PATH already.
#
# Idempotent: when everything is present it only checks and exits (well under a second).
set -euo pipefail

POSTFIX_ROOT="${POSTFIX_ROOT:-/opt/logstats-test/postfix}"
STAMP="$POSTFIX_ROOT/.installed"
export DEBIAN_FRONTEND=noninteractive

need_apt=()
for pkg in exim4-daemon-light pflogsumm patchelf sasl2-bin libsasl2-modules \
           libsasl2-modules-db libicu72 libssl3 libnsl2 libdb5.3 netbase \
           systemd python3-seccomp logrotate python3-venv man-db groff-base nodejs chromium; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        need_apt+=("$pkg")
    fi
done
if ((${#need_apt[@]})); then
    if ! apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1; then
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
    fi
fi

if ! command -v npm >/dev/null 2>&1; then
    apt-get install -y -q --no-install-recommends npm >/dev/null
fi

if ! command -v java >/dev/null 2>&1; then
    apt-get install -y -q --no-install-recommends openjdk-17-jre-headless >/dev/null
fi

if ! command -v promtool >/dev/null 2>&1; then
    # invoke-rc.d / deb-systemd-invoke start nothing while policy-rc.d exits 101
    own_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        own_policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# written by logstats tests/mta/install.sh for one install\nexit 101\n' \
            > "$own_policy"
        chmod 755 "$own_policy"
    fi
    status=0
    { apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends prometheus >/dev/null
    }; } || status=$?
    [[ -n "$own_policy" ]] && rm -f "$own_policy"
    ((status == 0)) || exit "$status"
    # not started at the next boot either (disable works without a running systemd)
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable prometheus.service >/dev/null 2>&1 || true
        if [[ -d /run/systemd/system ]]; then
            systemctl stop prometheus.service >/dev/null 2>&1 || true
        fi
    fi
fi

getent group postdrop >/dev/null || groupadd --system postdrop
getent group postfix >/dev/null || groupadd --system postfix
id -u postfix >/dev/null 2>&1 || useradd --system -g postfix -d /nonexistent -s /usr/sbin/nologin postfix
for u in lsuser1 lsuser2; do
    id -u "$u" >/dev/null 2>&1 || useradd -m -s /bin/sh "$u"
done

if [[ ! -f "$STAMP" ]]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -q postfix >/dev/null 2>&1) || {
        apt-get update -q >/dev/null
        (cd "$tmp" && apt-get download -q postfix >/dev/null)
    }
    rm -rf "$POSTFIX_ROOT"
    mkdir -p "$POSTFIX_ROOT"
    dpkg -x "$tmp"/postfix_*.deb "$POSTFIX_ROOT"
    libdir="$POSTFIX_ROOT/usr/lib/postfix"
    for f in "$POSTFIX_ROOT"/usr/sbin/* "$POSTFIX_ROOT"/usr/lib/postfix/sbin/* \
             "$POSTFIX_ROOT"/usr/lib/postfix/*.so*; do
        [[ -f "$f" && ! -L "$f" ]] || continue
        if patchelf --print-rpath "$f" >/dev/null 2>&1; then
            patchelf --set-rpath "$libdir" "$f"
        fi
    done
    chgrp postdrop "$POSTFIX_ROOT/usr/sbin/postdrop" "$POSTFIX_ROOT/usr/sbin/postqueue"
    chmod 2755 "$POSTFIX_ROOT/usr/sbin/postdrop" "$POSTFIX_ROOT/usr/sbin/postqueue"
    touch "$STAMP"
fi

# Postfix's set-gid postdrop only honours `-C DIR` for non-root users when the
# default config (/etc/postfix/main.cf) lists DIR in alternate_config_directories.
# The harness always uses the fixed config directory /run/logstats-test/postfix.
mkdir -p /etc/postfix
if ! grep -q '^alternate_config_directories = /run/logstats-test/postfix$' /etc/postfix/main.cf 2>/dev/null; then
    if [[ -s /etc/postfix/main.cf ]] && ! grep -q 'logstats tests/mta/install.sh' /etc/postfix/main.cf; then
        echo "install.sh: /etc/postfix/main.cf belongs to another Postfix; add" >&2
        echo "  alternate_config_directories = /run/logstats-test/postfix" >&2
        exit 1
    fi
    cat > /etc/postfix/main.cf <<'CF'
# Written by logstats tests/mta/install.sh (only Postfix here is the private copy in
# /opt/logstats-test/postfix; this file exists so that `sendmail -C` is allowed).
compatibility_level = 3.6
alternate_config_directories = /run/logstats-test/postfix
CF
fi
# Exim drops root privilege for `-C FILE` when the caller is neither root nor the Exim
# user, so local submissions as lsuser1 must use Exim's default configuration file.
# Debian searches /etc/exim4/exim4.conf before its autogenerated config: point it (a
# symlink) at the harness config, which only exists while the harness runs (a dangling
# symlink is skipped and the system falls back to the autogenerated config).
EXIM_CONF=/run/logstats-test/exim/exim4.conf
if [[ ! -e /etc/exim4/exim4.conf && ! -L /etc/exim4/exim4.conf ]]; then
    ln -s "$EXIM_CONF" /etc/exim4/exim4.conf
fi
exit 0
