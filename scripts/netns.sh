#!/usr/bin/env bash
# Two network namespaces joined by a veth pair: the reference topology for XDP tests and
# benchmarks.
#
#   qn-srv: qn-veth-s 10.99.0.1/24 fd99::1/64  <-->  qn-cli: qn-veth-c 10.99.0.2/24 fd99::2/64
#
# Usage: netns.sh up [--queues N]   (idempotent: an existing topology is rebuilt)
#        netns.sh down              (deletes exactly what `up` creates, by name)
# Needs root. GRO is switched on for both ends (veth needs NAPI for XDP redirect/TX into
# it); that uses ethtool when installed (apt-get install ethtool).
set -euo pipefail

SRV_NS=qn-srv
CLI_NS=qn-cli
SRV_IF=qn-veth-s
CLI_IF=qn-veth-c

die() { echo "netns.sh: $*" >&2; exit 1; }

down() {
    # Deleting a namespace deletes the veth end inside it, and with it the pair.
    for ns in "$SRV_NS" "$CLI_NS"; do
        if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
            ip netns del "$ns"
        fi
    done
}

gro_on() {
    local ns=$1 dev=$2
    if command -v ethtool >/dev/null; then
        ip netns exec "$ns" ethtool -K "$dev" gro on >/dev/null
    else
        echo "netns.sh: ethtool not installed; GRO left as is on $dev (XDP redirect into veth needs it)" >&2
    fi
}

up() {
    local queues=1
    while [ $# -gt 0 ]; do
        case $1 in
            --queues) queues=${2:-}; shift 2 || die "--queues needs a number" ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ $queues =~ ^[1-9][0-9]*$ ]] || die "--queues must be a positive integer"
    [ "$(id -u)" -eq 0 ] || die "must run as root"

    down
    ip netns add "$SRV_NS"
    ip netns add "$CLI_NS"
    ip link add "$SRV_IF" netns "$SRV_NS" numtxqueues "$queues" numrxqueues "$queues" type veth \
        peer name "$CLI_IF" netns "$CLI_NS" numtxqueues "$queues" numrxqueues "$queues"
    ip -n "$SRV_NS" addr add 10.99.0.1/24 dev "$SRV_IF"
    ip -n "$CLI_NS" addr add 10.99.0.2/24 dev "$CLI_IF"
    # nodad: usable at once, no duplicate-address-detection delay.
    ip -n "$SRV_NS" addr add fd99::1/64 dev "$SRV_IF" nodad
    ip -n "$CLI_NS" addr add fd99::2/64 dev "$CLI_IF" nodad
    for ns in "$SRV_NS" "$CLI_NS"; do ip -n "$ns" link set lo up; done
    ip -n "$SRV_NS" link set "$SRV_IF" up
    ip -n "$CLI_NS" link set "$CLI_IF" up
    gro_on "$SRV_NS" "$SRV_IF"
    gro_on "$CLI_NS" "$CLI_IF"
    echo "netns.sh: $SRV_NS/$SRV_IF <-> $CLI_NS/$CLI_IF up with $queues queue(s)"
}

case ${1:-} in
    up) shift; up "$@" ;;
    down) [ "$(id -u)" -eq 0 ] || die "must run as root"; down ;;
    *) die "usage: $0 up [--queues N] | down" ;;
esac
