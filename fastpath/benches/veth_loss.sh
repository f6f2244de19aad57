#!/bin/bash
# veth_loss.sh - loss below the generator's ceiling: the peers tool's topology (generator ->
# g0 <-veth-> f0 [forwarder on CPU 1] f1 <-veth-> s0 sink, RPS of f0 and s0 on CPU 1), but
# with a paced generator (examples/pacedgen.rs) at fixed rates instead of a saturating one.
# For each forwarder and rate it prints what was offered, what the kernel accepted from the
# generator, what arrived at s0, and the loss (offered - arrived).
#
# usage (root, from the workspace root, after
#   CARGO_TARGET_DIR=target-fastpath2 cargo build --release -p fastpath --bin fastpath --example pacedgen):
#   fastpath/benches/veth_loss.sh [--rates "100000 200000 ..."] [--secs 3] [--fwd "fastpath tc-mirred"]
set -u
T=${CARGO_TARGET_DIR:-target-fastpath2}
FP=$T/release/fastpath
GEN=$T/release/examples/pacedgen
RATES="100000 200000 300000 400000 500000 600000 700000 800000"
SECS=3
FWDS="fastpath tc-mirred"
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) RATES="$2"; shift 2 ;;
    --secs) SECS="$2"; shift 2 ;;
    --fwd) FWDS="$2"; shift 2 ;;
    *) echo "unknown arg $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ -x "$FP" ] && [ -x "$GEN" ] || { echo "build $FP and $GEN first (see the header)" >&2; exit 1; }
G=fpl_gen F=fpl_fwd S=fpl_sink
MAC_G0=02:00:00:00:00:01 MAC_S0=02:00:00:00:02:01
FWD_PID=""
cleanup() {
  [ -n "$FWD_PID" ] && kill -TERM "$FWD_PID" 2>/dev/null && wait "$FWD_PID" 2>/dev/null
  for n in $G $F $S; do ip netns del $n 2>/dev/null; done
}
trap cleanup EXIT
for n in $G $F $S; do
  ip netns del $n 2>/dev/null
  ip netns add $n
  ip -n $n link set lo up
  ip netns exec $n sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip -n $G link add g0 address $MAC_G0 type veth peer name f0 netns $F
ip -n $S link add s0 address $MAC_S0 type veth peer name f1 netns $F
ip -n $G link set g0 up
ip -n $F link set f0 up
ip -n $F link set f1 up
ip -n $S addr add 198.18.0.2/24 dev s0
ip -n $S link set s0 up
ip netns exec $S sysctl -qw net.ipv4.icmp_msgs_per_sec=0
ip netns exec $F sh -c 'echo 2 > /sys/class/net/f0/queues/rx-0/rps_cpus'
ip netns exec $S sh -c 'echo 2 > /sys/class/net/s0/queues/rx-0/rps_cpus'
rx() { ip netns exec $S cat /sys/class/net/s0/statistics/rx_packets; }
# Function-call IPIs received by CPU 1 (RPS kicks its backlog with one when it was idle).
ipis() { awk '/^ *CAL:/{print $3}' /proc/interrupts; }

start_fwd() {
  case "$1" in
    fastpath)
      ip netns exec $F taskset -c 1 "$FP" forward --in f0 --out f1 --cpu 1 --backend af-packet \
        --flow-offload --idle sleep --napi-threads >/tmp/veth_loss.fastpath.log 2>&1 &
      FWD_PID=$!; sleep 2 ;;
    tc-mirred)
      ip netns exec $F tc qdisc add dev f0 ingress
      ip netns exec $F tc filter add dev f0 parent ffff: protocol all prio 1 u32 match u32 0 0 \
        action mirred egress redirect dev f1 ;;
  esac
}
stop_fwd() {
  case "$1" in
    fastpath) kill -TERM "$FWD_PID"; wait "$FWD_PID" 2>/dev/null; FWD_PID="" ;;
    tc-mirred) ip netns exec $F tc qdisc del dev f0 ingress ;;
  esac
}

echo "forwarder rate_pps offered_pps offered accepted arrived loss loss_pct cpu1_ipis_per_1k"
for fwd in $FWDS; do
  start_fwd "$fwd"
  # warm-up (the first frames of a flow take the user-space path)
  ip netns exec $G taskset -c 0 "$GEN" g0 $MAC_S0 $MAC_G0 10000 0.5 >/dev/null
  sleep 0.3
  for rate in $RATES; do
    r0=$(rx); i0=$(ipis)
    out=$(ip netns exec $G taskset -c 0 "$GEN" g0 $MAC_S0 $MAC_G0 "$rate" "$SECS")
    sleep 0.5
    r1=$(rx); i1=$(ipis)
    offered=$(echo "$out" | sed -n 's/.*offered=\([0-9]*\).*/\1/p')
    accepted=$(echo "$out" | sed -n 's/.*accepted=\([0-9]*\).*/\1/p')
    arrived=$((r1 - r0))
    awk -v f="$fwd" -v r="$rate" -v o="$offered" -v a="$accepted" -v x="$arrived" \
      -v s="$SECS" -v ip=$((i1 - i0)) \
      'BEGIN{printf "%s %d %d %d %d %d %d %.3f %.1f\n", f, r, o/s, o, a, x, o-x, (o>0?100*(o-x)/o:0), (o>0?1000*ip/o:0)}'
  done
  stop_fwd "$fwd"
done
