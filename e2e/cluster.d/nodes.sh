# Extra nodes for e2e/cluster (`up --nodes N`), sourced by it: node K (2..MAX_NODES) is
# named stagecoach-K and runs its own containerd, kubelet and kube-proxy on this machine.
#
# Each extra node lives in a network namespace of its own (stagecoach-nK), so that its
# kubelet, its hostNetwork pods and its kube-proxy rules are apart from the first node's.
# The processes enter only that network namespace (nsenter --net), not a mount namespace:
# the kubelet's volume mounts must be seen by its containerd and runc, and the hostPath
# volumes of the default storage class are then the same directories on every node, which
# is how a ReadWriteMany claim is shared here (a real cluster uses a network filesystem).
#
# Addresses: a second bridge (stagecoach1, 10.243.0.1/24) links the host to each node's
# namespace (10.243.0.K). Node K's pods get 10.244.(K-1).0/24 on a bridge inside its
# namespace, and the host routes that subnet to 10.243.0.K; the first node keeps
# 10.244.0.0/24 on stagecoach0. So every pod reaches every other pod, the API server and
# the registry (10.244.0.1) through the host, with no NAT, and the host's forward guard
# still keeps all of it off every interface the script did not create.
# shellcheck shell=bash

NODES_BRIDGE=stagecoach1
NODES_GATEWAY=10.243.0.1
MAX_NODES=3
# How many nodes `up` keeps running: the largest --nodes any `up` asked for, until `down`.
NODE_COUNT_FILE=$STATE/node-count

node_count() {
  local n=1
  [[ -f $NODE_COUNT_FILE ]] && n=$(<"$NODE_COUNT_FILE")
  echo "$n"
}

# Sets N_NAME, N_IP, N_SUBNET, N_GATEWAY, N_NETNS, N_STATE, N_RUN and N_SOCK for node K.
node_vars() { # K
  local k=$1
  N_NAME=stagecoach-$k
  N_IP=10.243.0.$k
  N_SUBNET=10.244.$((k - 1)).0/24
  N_GATEWAY=10.244.$((k - 1)).1
  N_NETNS=stagecoach-n$k
  N_STATE=$STATE/nodes/$k
  N_RUN=$RUN/n$k
  N_SOCK=$N_RUN/containerd.sock
}

# The component names of node K, as `stop`, `status` and the PID files know them.
node_components() { # K
  echo "containerd-n$1 kubelet-n$1 kube-proxy-n$1"
}

# Every extra node's components, for the nodes `up` keeps.
extra_components() {
  local k out=()
  # shellcheck disable=SC2207 # three plain words per node
  for ((k = 2; k <= $(node_count); k++)); do out+=($(node_components "$k")); done
  echo "${out[*]}"
}

in_node() { nsenter --net="/run/netns/$N_NETNS" -- "$@"; }

setup_node_network() { # K (node_vars set)
  local k=$1
  if ! ip link show "$NODES_BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $NODES_BRIDGE ($NODES_GATEWAY) for the extra nodes"
    ip link add "$NODES_BRIDGE" type bridge
  fi
  ip addr show dev "$NODES_BRIDGE" | grep "inet $NODES_GATEWAY/" >/dev/null \
    || ip addr add "$NODES_GATEWAY/24" dev "$NODES_BRIDGE"
  ip link set "$NODES_BRIDGE" up
  # Between the pod bridge and the node bridge, and between nodes, forwarding is allowed;
  # from the node bridge to anywhere else it is not. Inserted above the pod bridge's rules.
  local rule
  iptables -w -C STAGECOACH-FORWARD -i "$NODES_BRIDGE" -j DROP 2>/dev/null \
    || iptables -w -I STAGECOACH-FORWARD 1 -i "$NODES_BRIDGE" -j DROP
  for rule in "-i $BRIDGE -o $NODES_BRIDGE" "-i $NODES_BRIDGE -o $BRIDGE" "-i $NODES_BRIDGE -o $NODES_BRIDGE"; do
    # shellcheck disable=SC2086 # the rule's words
    iptables -w -C STAGECOACH-FORWARD $rule -j RETURN 2>/dev/null \
      || iptables -w -I STAGECOACH-FORWARD 1 $rule -j RETURN
  done

  [[ -e /run/netns/$N_NETNS ]] || ip netns add "$N_NETNS"
  local host_if=sc-n$k
  if ! ip link show "$host_if" >/dev/null 2>&1; then
    ip link add "$host_if" type veth peer name eth0 netns "$N_NETNS"
  fi
  ip link set "$host_if" master "$NODES_BRIDGE" up
  ip -n "$N_NETNS" link set lo up
  ip -n "$N_NETNS" addr show dev eth0 | grep "inet $N_IP/" >/dev/null \
    || ip -n "$N_NETNS" addr add "$N_IP/24" dev eth0
  ip -n "$N_NETNS" link set eth0 up
  ip -n "$N_NETNS" route replace default via "$NODES_GATEWAY" dev eth0
  if ! ip -n "$N_NETNS" link show "$BRIDGE" >/dev/null 2>&1; then
    ip -n "$N_NETNS" link add "$BRIDGE" type bridge
  fi
  ip -n "$N_NETNS" addr show dev "$BRIDGE" | grep "inet $N_GATEWAY/" >/dev/null \
    || ip -n "$N_NETNS" addr add "$N_GATEWAY/24" dev "$BRIDGE"
  ip -n "$N_NETNS" link set "$BRIDGE" up
  ip route replace "$N_SUBNET" via "$N_IP" dev "$NODES_BRIDGE"
  # The namespace's own sysctls: it routes its pods' traffic, and kube-proxy's DNAT must see
  # bridged traffic there too.
  in_node sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward; echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables'

  mkdir -p "$N_STATE/cni/net.d" "$N_STATE/cni/ipam"
  write_if_changed "$N_STATE/cni/net.d/10-stagecoach.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "stagecoach",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "isDefaultGateway": true,
      "hairpinMode": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$N_STATE/cni/ipam",
        "ranges": [[{"subnet": "$N_SUBNET", "gateway": "$N_GATEWAY"}]]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

# The kubelet's cgroup root must exist before it starts; under cgroup v1 cpuset needs its
# CPUs and memory nodes filled in before anything can join it.
make_node_cgroups() { # K
  local d root=stagecoach-n$1
  for d in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
    [[ -d $d ]] || continue
    mkdir -p "$d$root"
  done
  if [[ -d /sys/fs/cgroup/cpuset/$root ]]; then
    [[ -n $(<"/sys/fs/cgroup/cpuset/$root/cpuset.cpus") ]] \
      || cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$root/cpuset.cpus"
    [[ -n $(<"/sys/fs/cgroup/cpuset/$root/cpuset.mems") ]] \
      || cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$root/cpuset.mems"
  fi
}

make_node_pki() { # K (node_vars set)
  gen_cert "kubelet-client-n$1" "system:node:$N_NAME" system:nodes client
  gen_cert "kubelet-n$1" "$N_NAME" "" server "IP:$N_IP,DNS:$N_NAME"
  [[ -f $STATE/kubelet-client-n$1.kubeconfig ]] \
    || write_kubeconfig "kubelet-client-n$1" >"$STATE/kubelet-client-n$1.kubeconfig"
}

start_node() { # K
  local k=$1
  node_vars "$k"
  make_node_pki "$k"
  setup_node_network "$k"
  make_node_cgroups "$k"
  mkdir -p "$N_STATE/containerd/root" "$N_STATE/containerd/opt" "$N_RUN" "$N_STATE/kubelet" "$N_STATE/pod-logs"
  containerd_config "$N_STATE/containerd" "$N_RUN/containerd" "$N_SOCK" "$N_STATE/cni/net.d" \
    | write_if_changed "$N_STATE/containerd/config.toml"
  PATH=$CONTAINERD_BIN:$PATH START_EXE=$CONTAINERD_BIN/containerd start "containerd-n$k" \
    nsenter --net="/run/netns/$N_NETNS" -- "$CONTAINERD_BIN/containerd" --config "$N_STATE/containerd/config.toml"
  wait_for "containerd of $N_NAME" 60 "containerd-n$k" "$CTR" --address "$N_SOCK" version
  import_pause_image "$N_SOCK" "containerd-n$k"

  kubelet_config "$N_IP" "kubelet-n$k" "$N_SOCK" "$N_STATE/pod-logs" "$N_SUBNET" "/stagecoach-n$k" \
    | write_if_changed "$N_STATE/kubelet.yaml"
  START_EXE=$KUBE_BIN/kubelet start "kubelet-n$k" nsenter --net="/run/netns/$N_NETNS" -- \
    "$KUBE_BIN/kubelet" --config "$N_STATE/kubelet.yaml" \
    --kubeconfig "$STATE/kubelet-client-n$k.kubeconfig" --root-dir "$N_STATE/kubelet" \
    --hostname-override "$N_NAME" --node-ip "$N_IP" --pod-infra-container-image "$PAUSE_IMAGE"

  kube_proxy_config "$N_NAME" "$N_IP" | write_if_changed "$N_STATE/kube-proxy.yaml"
  START_EXE=$KUBE_BIN/kube-proxy start "kube-proxy-n$k" nsenter --net="/run/netns/$N_NETNS" -- \
    "$KUBE_BIN/kube-proxy" --config "$N_STATE/kube-proxy.yaml"
}

# shellcheck disable=SC2317 # called through wait_for
nodes_ready() {
  local k
  for ((k = 2; k <= $(node_count); k++)); do
    [[ $(kc get node "stagecoach-$k" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]] || return 1
  done
}

start_extra_nodes() {
  local k
  for ((k = 2; k <= $(node_count); k++)); do start_node "$k"; done
}

# Stops the extra nodes' kubelets and kube-proxies (first) or runtimes (second), for `down`.
stop_extra_kubelets() {
  local k
  for ((k = 2; k <= MAX_NODES; k++)); do stop "kube-proxy-n$k" "kubelet-n$k"; done
}

stop_extra_runtimes() {
  local k pid
  for ((k = 2; k <= MAX_NODES; k++)); do
    node_vars "$k"
    [[ -S $N_SOCK ]] && drain_runtime "containerd-n$k" "$N_SOCK"
    stop "containerd-n$k"
    for pid in $(pgrep -f -- "-address $N_SOCK" || true); do
      [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */containerd-shim* ]] && kill -KILL "$pid" 2>/dev/null
    done
  done
  return 0
}

# After the mounts are gone: the namespaces (their veths, bridges and rules go with them),
# the node bridge and the routes through it, and the nodes' cgroups.
remove_extra_nodes_network() {
  local k d
  for ((k = 2; k <= MAX_NODES; k++)); do
    node_vars "$k"
    [[ -e /run/netns/$N_NETNS ]] && { ip netns del "$N_NETNS" || log "could not delete network namespace $N_NETNS"; }
    for d in /sys/fs/cgroup/*/"stagecoach-n$k" /sys/fs/cgroup/unified/"stagecoach-n$k"; do
      [[ -d $d ]] || continue
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
  done
  if ip link show "$NODES_BRIDGE" >/dev/null 2>&1; then ip link del "$NODES_BRIDGE"; fi
}
