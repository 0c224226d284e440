#!/bin/sh
# Install Debian packages without starting their services: the test suite starts its
# own servers on free loopback ports and needs none of the packaged ones (redis-server's
# postinst would start one on :6379, or fail where no init system runs). A temporary
# policy-rc.d forbids service starts; one that already exists is left as it is.
#
#   scripts/apt-install-no-start.sh PACKAGE...      (as root, or through sudo)
set -eu
[ $# -gt 0 ] || { echo "usage: $0 PACKAGE..." >&2; exit 64; }
created=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created=1
fi
status=0
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" || status=$?
[ "$created" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit "$status"
