#!/usr/bin/env bash
# Runs a command (the test run) with loopback only: inside a new network namespace that holds nothing but `lo`,
# so no process it starts, in any language, can reach beyond 127.0.0.1 / ::1, and whose resolver is 127.0.0.1.
# `unshare -nm` as root (CI), `unshare -rnm` where unprivileged user namespaces are allowed. Where neither works
# it says so in one line and runs the command with the Python guard on (tests/netguard: Python sockets only).
# Usage: bash tests/netns.sh COMMAND [ARGS...]
set -u

# Every process the tests start inherits these: no usage stats, no cloud or instance-metadata probes.
export RAY_USAGE_STATS_ENABLED=0             # Ray: no usage-stats report
# A dashboard still posts a "disabled" report to usage-stats.ray.io (ray/dashboard/modules/usage_stats): to loopback
export RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:9/
export AWS_EC2_METADATA_DISABLED=true        # boto3/botocore and Arrow's S3: no EC2 metadata for credentials/region
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

bring_lo_up() {
  if command -v ip >/dev/null; then
    ip link set lo up
  else  # no iproute2: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP
    python3 -c 'import fcntl, socket, struct
s = socket.socket()
flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))'
  fi
}

if [ "${PERENNIAL_NETNS:-}" = inside ]; then
  unset PERENNIAL_NETNS  # a wrapper started by the tests makes a namespace of its own
  bring_lo_up || { echo "netns: could not bring lo up in the namespace" >&2; exit 2; }
  # the namespace's own resolver on loopback: a lookup that files cannot answer (torch's TCPStore client looks up
  # its peer's name) is refused on 127.0.0.1:53 instead of being sent towards the machine's resolver
  if [ "$(cat /etc/resolv.conf 2>/dev/null)" != "nameserver 127.0.0.1" ]; then  # not yet (a wrapper in a wrapper)
    resolv=$(mktemp) && echo "nameserver 127.0.0.1" >"$resolv" && mount --bind "$resolv" /etc/resolv.conf \
      && rm -f "$resolv" || { echo "netns: could not point /etc/resolv.conf at 127.0.0.1" >&2; exit 2; }
  fi
  exec "$@"
fi

if [ "$(id -u)" = 0 ]; then flags=-nm; else flags=-rnm; fi  # a network namespace, and a mount one for resolv.conf
if command -v unshare >/dev/null && unshare "$flags" true 2>/dev/null; then
  PERENNIAL_NETNS=inside exec unshare "$flags" bash "$0" "$@"
fi
echo "netns: no network namespace here (unshare $flags refused); the Python guard (tests/netguard) stands in" >&2
export PERENNIAL_NET_GUARD=1
exec "$@"
