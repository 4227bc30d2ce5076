#!/bin/bash
# swarmcache namespace testbed: subscriber <-> gateway <-> "internet", all in network namespaces.
#
#   testbed.sh up PREFIX     create ${PREFIX}sub, ${PREFIX}gw, ${PREFIX}net (idempotent)
#   testbed.sh down PREFIX   kill every process inside them, then delete them (idempotent)
#
#   ${PREFIX}sub  10.77.1.2/24 (dev ${PREFIX}s)  default via 10.77.1.1
#   ${PREFIX}gw   10.77.1.1/24 (dev ${PREFIX}gs) + 10.77.2.1/24 (dev ${PREFIX}gn), ip_forward=1
#   ${PREFIX}net  10.77.2.2/24 (dev ${PREFIX}n)  default via 10.77.2.1
#
# Why it is built this way:
# - The veth pairs are created directly inside the namespaces (`ip -n NS link add ... peer ...
#   netns NS2`), so nothing ever appears in the root namespace, not even for an instant, and two
#   testbeds with different prefixes can run at the same time.
# - The gateway has no default route: nothing can leave the three namespaces. 10.77.2.2 (net)
#   is outside the subscriber prefix 10.77.1.0/24, so it doubles as the "non-subscriber" host.
# - The root namespace is never touched: no sysctl, rule or route outside the namespaces.
# - Name resolution stays inside too: `ip netns exec NS` bind-mounts /etc/netns/NS/* over /etc,
#   so each namespace gets a hosts file naming the testbed addresses and a resolv.conf pointing
#   at 127.0.0.1 (nothing listens there: lookups fail at once). Without it, reverse lookups such
#   as http.server's getfqdn() at bind time wait on the host's unreachable resolver for seconds.
# - Every step checks or replaces instead of adding, so `up` can be rerun on a half-built
#   testbed; `down` tolerates namespaces that are already gone.
set -eu

usage() {
    echo "usage: $0 up|down PREFIX   (PREFIX: 1-6 chars of [a-z0-9])" >&2
    exit 2
}

[ $# -eq 2 ] || usage
action=$1
prefix=$2
case "$prefix" in
    *[!a-z0-9]* | "") usage ;;
esac
[ ${#prefix} -le 6 ] || usage

SUB=${prefix}sub
GW=${prefix}gw
NET=${prefix}net
NSES="$SUB $GW $NET"
# interface names: at most 6 + 2 = 8 chars (limit 15)
IF_SUB=${prefix}s  # in sub, towards gw
IF_GWS=${prefix}gs # in gw, towards sub
IF_GWN=${prefix}gn # in gw, towards net
IF_NET=${prefix}n  # in net, towards gw

ns_exists() {
    [ -e "/var/run/netns/$1" ]
}

link_exists() { # ns ifname
    ip -n "$1" link show dev "$2" >/dev/null 2>&1
}

write_etc() { # ns
    mkdir -p "/etc/netns/$1"
    printf '%s\n' "127.0.0.1 localhost" "10.77.1.2 sub.testbed" "10.77.1.1 gw-sub.testbed" \
        "10.77.2.1 gw.testbed" "10.77.2.2 net.testbed origin.testbed" >"/etc/netns/$1/hosts"
    printf '%s\n' "nameserver 127.0.0.1" "options timeout:1 attempts:1" >"/etc/netns/$1/resolv.conf"
}

up() {
    for ns in $NSES; do
        write_etc "$ns"
        ns_exists "$ns" || ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    link_exists "$SUB" "$IF_SUB" ||
        ip -n "$SUB" link add "$IF_SUB" type veth peer name "$IF_GWS" netns "$GW"
    link_exists "$GW" "$IF_GWN" ||
        ip -n "$GW" link add "$IF_GWN" type veth peer name "$IF_NET" netns "$NET"

    ip -n "$SUB" addr replace 10.77.1.2/24 dev "$IF_SUB"
    ip -n "$GW" addr replace 10.77.1.1/24 dev "$IF_GWS"
    ip -n "$GW" addr replace 10.77.2.1/24 dev "$IF_GWN"
    ip -n "$NET" addr replace 10.77.2.2/24 dev "$IF_NET"

    ip -n "$SUB" link set "$IF_SUB" up
    ip -n "$GW" link set "$IF_GWS" up
    ip -n "$GW" link set "$IF_GWN" up
    ip -n "$NET" link set "$IF_NET" up

    ip -n "$SUB" route replace default via 10.77.1.1
    ip -n "$NET" route replace default via 10.77.2.1
    ip netns exec "$GW" sysctl -qw net.ipv4.ip_forward=1
}

kill_all_in() { # ns
    local ns=$1 pids i
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for i in 1 2 3 4 5 6 7 8 9 10; do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] || return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    for i in 1 2 3 4 5 6 7 8 9 10; do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] || return 0
        sleep 0.1
    done
    echo "testbed: processes still alive in $ns: $pids" >&2
}

down() {
    for ns in $NSES; do
        ns_exists "$ns" || continue
        kill_all_in "$ns"
    done
    for ns in $NSES; do
        if ns_exists "$ns"; then
            ip netns del "$ns"
        fi
        rm -rf "/etc/netns/$ns"
    done
    rmdir /etc/netns 2>/dev/null || true # only when no other testbed uses it
}

case "$action" in
    up) up ;;
    down) down ;;
    *) usage ;;
esac
