# shellcheck shell=bash
# The real node of scripts/kube-up.sh (sourced by it; not run on its own): containerd + runc + the CNI
# plugins from Debian's packages, a kubelet and kube-proxy of K8S_VERSION, and CoreDNS, so that pods
# scheduled to the node "agk-node" really run. Everything it makes lives under DIR/node, on one bridge of
# its own with a private /24, and `stop` removes all of it (processes, containers, mounts, network
# namespaces, cgroups, the bridge, iptables rules, sysctls) whatever state a failed start left.
#
# Layout (DIR = the cluster's folder):
#   DIR/node/env          BRIDGE, POD_CIDR, GATEWAY (the bridge's address: the node's IP, where the API
#                         server, CoreDNS and every host service the pods need listen), ports
#   DIR/node/containerd/  config, root, state, socket     DIR/node/kubelet/  the kubelet's root dir
#   DIR/node/cni/         network config, IPAM state      DIR/node/sysctl.orig  values to restore on stop
#
# Nothing leaves the machine: the pods' only route is the bridge; forwarding is allowed between pods only
# (our iptables chain drops the rest); CoreDNS answers cluster names only (no upstream).

COREDNS_VERSION=v1.15.0    # github.com/coredns/coredns: resolves Service names for the pods
PAUSE_IMAGE=localhost/airflow-gitops/pause:3.10   # the sandbox image, built here (no registry is reachable)
BUSYBOX_IMAGE=localhost/airflow-gitops/busybox:debian12  # /bin/busybox of Debian's busybox-static
NODE_NAME=agk-node
NODE_LABEL=airflow-gitops.dev/node=real          # pods for the real node select it ...
NODE_TAINT=airflow-gitops.dev/real-node          # ... and tolerate its taint; kwok-only tests stay off it
NODE_EXTRA_BINARIES=(coredns pause)
NODE_COMPONENTS=(egress-proxy containerd kubelet kube-proxy coredns)
NODE_SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables kernel.panic kernel.panic_on_oops
  vm.overcommit_memory vm.panic_on_oom kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
NODE_PACKAGES="containerd runc containernetworking-plugins iptables iproute2 umoci skopeo busybox-static"

# ---- build: CoreDNS and the pause binary ----------------------------------------------------------

node_binaries_present() {
  local b
  for b in "${NODE_EXTRA_BINARIES[@]}"; do [ -x "$BIN_DIR/$b" ] || return 1; done
}

build_node() {
  node_binaries_present && return 0
  go_env
  local t0=$SECONDS work="$VERSIONS_DIR/build-node"
  mkdir -p "$work/pause" "$BIN_DIR"
  : >"$work/build.log"
  say "go install coredns $COREDNS_VERSION ... (log: $work/build.log)"
  GOBIN="$work" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION" \
    >>"$work/build.log" 2>&1 || die "building CoreDNS $COREDNS_VERSION failed; see $work/build.log"
  # The pod sandbox's process: what registry.k8s.io/pause does (reap children, exit on SIGINT/SIGTERM).
  cat >"$work/pause/main.go" <<'EOF'
// pause: the process of a pod sandbox, as registry.k8s.io/pause: holds the pod's namespaces, reaps
// zombies, exits 0 on SIGINT or SIGTERM.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", s)
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
EOF
  printf 'module airflow-gitops.local/pause\n\ngo 1.21\n' >"$work/pause/go.mod"
  (cd "$work/pause" && go build -trimpath -ldflags "-s -w" -o "$work/pause-bin" .) >>"$work/build.log" 2>&1 \
    || die "building the pause binary failed; see $work/build.log"
  mv "$work/coredns" "$BIN_DIR/coredns"
  mv "$work/pause-bin" "$BIN_DIR/pause"
  say "built coredns and pause in $((SECONDS - t0)) s"
}

# ---- preflight -------------------------------------------------------------------------------------

node_preflight() {
  [ "$(id -u)" = 0 ] || die "the real node needs root (containerd, a bridge, iptables). Fix: run as root, or start without --real-node"
  local c missing=()
  for c in containerd containerd-shim-runc-v2 ctr runc iptables ip umoci skopeo nsenter; do
    command -v "$c" >/dev/null || missing+=("$c")
  done
  for c in bridge host-local loopback portmap; do [ -x "/usr/lib/cni/$c" ] || missing+=("/usr/lib/cni/$c"); done
  [ ${#missing[@]} -eq 0 ] || die "the real node needs ${missing[*]}. Fix: apt-get install -y $NODE_PACKAGES"
  # Two kube-proxies would fight over the machine's iptables rules for Services: one real node at a time.
  local other
  for other in $(pgrep -x kube-proxy); do
    other=$(tr '\0' ' ' <"/proc/$other/cmdline" | sed -n 's|.*--config \([^ ]*\)/node/kube-proxy.yaml.*|\1|p')
    die "a real node already runs on this machine (cluster ${other:-unknown}); one at a time. Fix: scripts/kube-up.sh stop ${other:-DIR}, or start without --real-node"
  done
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null \
    || die "the kernel module br_netfilter is not loaded (pods could not reach Services). Fix: modprobe br_netfilter"
}

# A /24 in 10.88.0.0/16 that no interface or route of this machine uses yet, and a bridge name for it.
pick_pod_network() {
  local n used
  used="$(ip -4 -o addr show; ip -4 route show)"
  for n in $(seq 0 255); do
    grep -q "10\.88\.$n\." <<<"$used" && continue
    ip link show "agk$n" >/dev/null 2>&1 && continue
    BRIDGE="agk$n" POD_CIDR="10.88.$n.0/24" GATEWAY="10.88.$n.1"
    return 0
  done
  die "no free /24 in 10.88.0.0/16 for the pod network"
}

# ---- network: bridge, forwarding rules, sysctls ------------------------------------------------------

save_sysctls() {
  local s f="$NODE/sysctl.orig"
  [ -s "$f" ] && return 0  # a failed start saved them already: keep the machine's own values
  for s in "${NODE_SYSCTLS[@]}"; do
    [ -e "/proc/sys/${s//.//}" ] && echo "$s=$(cat "/proc/sys/${s//.//}")"
  done >"$f"
}

restore_sysctls() {
  local f="$NODE/sysctl.orig" line
  [ -s "$f" ] || return 0
  while IFS= read -r line; do
    sysctl -q -w "$line" >/dev/null 2>&1 || say "could not restore sysctl $line"
  done <"$f"
  rm -f "$f"
}

chain_name() { echo "AGK-${BRIDGE#agk}"; }

network_up() {
  ip link add "$BRIDGE" type bridge || die "creating the bridge $BRIDGE failed"
  ip addr add "$GATEWAY/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -q -w net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 >/dev/null
  # Forwarding: between pods of this bridge only. Pods reach the host (INPUT) on the gateway address.
  local chain
  chain=$(chain_name)
  iptables -w -N "$chain"
  iptables -w -A "$chain" -s "$POD_CIDR" -d "$POD_CIDR" -j ACCEPT
  iptables -w -A "$chain" -m conntrack --ctstate RELATED,ESTABLISHED -d "$POD_CIDR" -j ACCEPT
  iptables -w -A "$chain" -j DROP
  iptables -w -I FORWARD 1 -i "$BRIDGE" -m comment --comment "airflow-gitops $STATE" -j "$chain"
  iptables -w -I FORWARD 1 -o "$BRIDGE" -m comment --comment "airflow-gitops $STATE" -j "$chain"
}

network_down() {
  local chain
  chain=$(chain_name)
  while iptables -w -D FORWARD -i "$BRIDGE" -m comment --comment "airflow-gitops $STATE" -j "$chain" 2>/dev/null; do :; done
  while iptables -w -D FORWARD -o "$BRIDGE" -m comment --comment "airflow-gitops $STATE" -j "$chain" 2>/dev/null; do :; done
  iptables -w -F "$chain" 2>/dev/null || true
  iptables -w -X "$chain" 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
}

# ---- the egress proxy: the API server reaches the kubelet (logs, exec, port-forward), nothing else ----

write_egress_proxy() {
  cat >"$NODE/egress-proxy.py" <<'EOF'
"""HTTP CONNECT proxy on the API server's "cluster" egress socket: only the node's kubelet is reachable."""
import os, socket, sys, threading

sock_path, allowed = sys.argv[1], set(sys.argv[2].split(","))

def pump(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def handle(client):
    try:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 8192:
            chunk = client.recv(4096)
            if not chunk:
                return client.close()
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(line) < 2 or line[0] != "CONNECT" or line[1] not in allowed:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            return client.close()
        host, port = line[1].rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=10)
        upstream.settimeout(None)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        rest = head.split(b"\r\n\r\n", 1)[1]
        if rest:
            upstream.sendall(rest)
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)
    except OSError:
        client.close()

if os.path.exists(sock_path):
    os.unlink(sock_path)
server = socket.socket(socket.AF_UNIX)
server.bind(sock_path)
os.chmod(sock_path, 0o600)
server.listen(64)
while True:
    conn, _ = server.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
EOF
}

# ---- configuration files -----------------------------------------------------------------------------

write_node_config() {
  local pki="$STATE/pki"
  mkdir -p "$NODE/containerd" "$NODE/cni/net.d" "$NODE/kubelet" "$NODE/pod-logs"
  cat >"$NODE/containerd/config.toml" <<EOF
# containerd for the real node of $STATE (written by scripts/kube-up.sh)
version = 2
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$NODE/containerd.sock"
[ttrpc]
  address = "$NODE/containerd.ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails ("can't get final child's PID").
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni/net.d"
    max_conf_num = 1
EOF
  cat >"$NODE/cni/net.d/10-agk.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "airflow-gitops",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GATEWAY"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$NODE/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$NODE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false          # this machine has cgroup v1 controllers: warn, do not refuse
cgroupDriver: cgroupfs
cgroupRoot: /$BRIDGE         # every pod cgroup under one folder of ours (removed on stop)
containerRuntimeEndpoint: unix://$NODE/containerd.sock
address: $GATEWAY
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$GATEWAY]       # CoreDNS runs on the host, on the gateway address
resolvConf: ""               # the pods get no host resolver (nothing outside this machine)
podLogsDir: $NODE/pod-logs
failSwapOn: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%"}
maxPods: 60
registerWithTaints:
- {key: $NODE_TAINT, value: "true", effect: NoSchedule}
volumeStatsAggPeriod: 0s
EOF
  cat >"$NODE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
clusterCIDR: $POD_CIDR
nodePortAddresses: [$GATEWAY/32]
iptables: {localhostNodePorts: false, masqueradeAll: false}
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  cat >"$NODE/Corefile" <<EOF
.:53 {
    bind $GATEWAY
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $STATE/coredns.kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
}

# ---- images without a registry -----------------------------------------------------------------------

# import_archive ARCHIVE: a docker-archive (named by its RepoTags) into the node's containerd.
import_archive() {
  ctr --address "$NODE/containerd.sock" -n k8s.io images import "$1" >>"$STATE/containerd.log" 2>&1 \
    || die "importing $1 into the node's containerd failed; see $STATE/containerd.log"
}

# single_binary_image NAME REF BINARY [ENTRYPOINT]: a docker-archive of an image holding only BINARY
# (at /NAME, and busybox's applets for busybox), cached by the binary's hash; imported into the node.
single_binary_image() {
  local name=$1 ref=$2 bin=$3 cache="$KUBE_CACHE/images" tar work
  # cached by what makes it: the binary, the reference and this function's text
  tar="$cache/$name-$({ sha256sum <"$bin"; echo "$ref $*"; declare -f single_binary_image; } | sha256sum | cut -c1-12).tar"
  if [ ! -s "$tar" ]; then
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/$name.XXXXXX")
    {
      umoci init --layout "$work/oci" &&
        umoci new --image "$work/oci:$name" &&
        umoci unpack --image "$work/oci:$name" "$work/bundle" &&
        install -m 0755 "$bin" "$work/bundle/rootfs/$name" &&
        if [ "$name" = busybox ]; then  # its applets on PATH (ln -s /busybox /bin/sh, ...), a /tmp
          mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/tmp" && chmod 1777 "$work/bundle/rootfs/tmp" &&
            (for a in $("$bin" --list); do ln -sf /busybox "$work/bundle/rootfs/bin/$a" || exit 1; done)
        fi &&
        umoci repack --image "$work/oci:$name" "$work/bundle" &&
        umoci config --image "$work/oci:$name" --config.entrypoint "/$name" --config.env PATH=/bin \
          ${4:+--config.user $4} &&
        skopeo copy --quiet "oci:$work/oci:$name" "docker-archive:$work/$name.tar:$ref"
    } >"$work/log" 2>&1 || die "making the image $ref failed (umoci/skopeo); see $work/log"
    mv "$work/$name.tar" "$tar"
    rm -rf "$work"
  fi
  import_archive "$tar"
}

# ---- start / stop ------------------------------------------------------------------------------------


kubelet_healthy() { curl -fsS --max-time 3 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" | grep -qx ok; }
node_ready() {
  kctl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}
proxy_healthy() { curl -fsS --max-time 3 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" >/dev/null; }
getent_dns() { python3 - "$GATEWAY" "$1" <<'EOF'
import socket, struct, sys
server, name = sys.argv[1], sys.argv[2]
q = struct.pack(">HHHHHH", 0x4147, 0x0100, 1, 0, 0, 0) + b"".join(
    bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(q, (server, 53))
data = s.recv(512)
sys.exit(0 if struct.unpack(">H", data[6:8])[0] > 0 and data[3] & 0x0F == 0 else 1)
EOF
}

# node_env: read DIR/node/env (bridge, addresses, ports) into the shell.
node_env() {
  NODE="$STATE/node"
  [ -s "$NODE/env" ] || return 1
  # shellcheck disable=SC1091
  source "$NODE/env"
}

# node_prepare: before the API server starts (it binds on the bridge's address).
node_prepare() {
  node_preflight
  build_node
  NODE="$STATE/node"
  rm -rf "$NODE"
  mkdir -p "$NODE"
  chmod 700 "$NODE"
  pick_pod_network
  read -r KUBELET_PORT KUBELET_HEALTHZ_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT < <(free_ports 4)
  cat >"$NODE/env" <<EOF
BRIDGE=$BRIDGE
POD_CIDR=$POD_CIDR
GATEWAY=$GATEWAY
KUBELET_PORT=$KUBELET_PORT
KUBELET_HEALTHZ_PORT=$KUBELET_HEALTHZ_PORT
PROXY_HEALTHZ_PORT=$PROXY_HEALTHZ_PORT
PROXY_METRICS_PORT=$PROXY_METRICS_PORT
EOF
  save_sysctls
  network_up
}

# node_pki: certificates of the node's components (after make_pki).
node_pki() {
  local client="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  sign kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  sign kubelet "/CN=$NODE_NAME" "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:$GATEWAY,DNS:$NODE_NAME"
  sign kube-proxy "/CN=system:kube-proxy" "$client"
  sign coredns "/O=system:masters/CN=coredns" "$client"
  [ -s "$STATE/pki/coredns.crt" ] || die "generating the node's certificates failed"
}

# make_cgroups: the kubelet's cgroupRoot, /<bridge>, in every hierarchy (it refuses a missing one).
make_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/; do
    [ -d "$d" ] || continue
    mkdir -p "$d$BRIDGE" || die "cannot create the cgroup $d$BRIDGE for the node's pods"
    if [ -e "$d/cpuset.cpus" ]; then  # a v1 cpuset starts empty: give it its parent's CPUs and memory nodes
      cat "$d/cpuset.cpus" >"$d$BRIDGE/cpuset.cpus"
      cat "$d/cpuset.mems" >"$d$BRIDGE/cpuset.mems"
    fi
  done
}

# node_start: after the control plane is ready.
node_start() {
  write_node_config
  write_egress_proxy
  kubeconfig "$STATE/kubelet.kubeconfig" kubelet-client
  kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy
  kubeconfig "$STATE/coredns.kubeconfig" coredns
  # The kubernetes Service: the API server does not reconcile its endpoint (--endpoint-reconciler-type
  # none), so in-cluster clients (the KubernetesExecutor) reach it only through this one.
  kctl apply -f - >>"$STATE/kube-apiserver.log" 2>&1 <<EOF || fail kube-apiserver "refused the kubernetes Service's endpoints"
apiVersion: v1
kind: Endpoints
metadata:
  name: kubernetes
  namespace: default
subsets:
- addresses: [{ip: $GATEWAY}]
  ports: [{name: https, port: $API_PORT, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: kube-up.airflow-gitops.dev}
addressType: IPv4
endpoints:
- addresses: [$GATEWAY]
  conditions: {ready: true}
ports: [{name: https, port: $API_PORT, protocol: TCP}]
EOF
  launch_cmd egress-proxy python3 "$NODE/egress-proxy.py" "$STATE/cluster-egress.sock" "$GATEWAY:$KUBELET_PORT"
  launch_cmd containerd containerd --config "$NODE/containerd/config.toml"
  wait_for containerd 60 ctr --address "$NODE/containerd.sock" version
  single_binary_image pause "$PAUSE_IMAGE" "$BIN_DIR/pause" 65535:65535
  # A shell for tests and debugging on the node (Debian's busybox-static), when installed.
  [ -x /bin/busybox ] && single_binary_image busybox "$BUSYBOX_IMAGE" /bin/busybox
  local archive
  for archive in ${KUBE_UP_NODE_IMAGES:-}; do import_archive "$archive"; done
  make_cgroups
  launch kubelet --config "$NODE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$GATEWAY" --root-dir "$NODE/kubelet" --cert-dir "$NODE/kubelet-certs" \
    --node-labels "$NODE_LABEL"
  wait_for kubelet 90 kubelet_healthy
  launch kube-proxy --config "$NODE/kube-proxy.yaml"
  wait_for kube-proxy 60 proxy_healthy
  launch coredns -conf "$NODE/Corefile"
  wait_for coredns 60 getent_dns kubernetes.default.svc.cluster.local
  wait_for kubelet 120 node_ready
}

# ctr_all: kill and delete every container of the node's containerd (the kubelet is stopped already).
ctr_all() {
  local c=(ctr --address "$NODE/containerd.sock" --timeout 10s -n k8s.io) id ns
  "${c[@]}" version >/dev/null 2>&1 || return 0
  for id in $("${c[@]}" tasks ls -q 2>/dev/null); do
    "${c[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 1
  for id in $("${c[@]}" containers ls -q 2>/dev/null); do
    # the pod's network namespace (a bind mount under /run/netns made by the CRI plugin)
    ns=$("${c[@]}" containers info "$id" 2>/dev/null \
      | python3 -c 'import json,sys
for n in json.load(sys.stdin).get("Spec",{}).get("linux",{}).get("namespaces",[]):
    if n.get("type")=="network" and n.get("path","").startswith(("/run/netns/", "/var/run/netns/")): print(n["path"])' 2>/dev/null || true)
    [ -n "$ns" ] && echo "$ns" >>"$NODE/netns"
    "${c[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
    "${c[@]}" containers delete "$id" >/dev/null 2>&1 || true
  done
}

# remove_cgroups: the pods' cgroups (all under /<bridge>) in every hierarchy, deepest first.
remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/"$BRIDGE"; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$d" ] && say "cgroup $d still has processes; left in place"
  done
  return 0
}

# unmount_under DIR: every mount point below DIR, deepest first.
unmount_under() {
  local m
  for m in $(awk -v d="$1/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "could not unmount $m"
  done
}

remove_kubelet_chains() {
  local ipt table chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      "$ipt" -w -t "$table" -S 2>/dev/null | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j KUBE-(FIREWALL|KUBELET-CANARY|MARK-|POSTROUTING)' \
        | while read -r _ rule; do eval "\"$ipt\" -w -t $table -D $rule" 2>/dev/null || true; done || true
      for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-(FIREWALL|KUBELET-CANARY|IPTABLES-HINT)$/ {print $2}'); do
        "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true
        "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

node_stop() {
  node_env || return 0
  stop_group coredns kube-proxy kubelet
  ctr_all
  stop_group containerd egress-proxy
  # Shims that outlived containerd (they serve containers by themselves) and any process left in our cgroups.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $NODE/containerd.sock" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in $(find /sys/fs/cgroup/ -path "*/$BRIDGE/*" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -s "$NODE/netns" ]; then
    local ns
    for ns in $(sort -u "$NODE/netns"); do umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true; rm -f "$ns"; done
    rm -f "$NODE/netns"
  fi
  unmount_under "$NODE"
}

# node_remove: after the control plane stopped (the API server listens on the bridge's address until then).
node_remove() {
  node_env || return 0
  # kube-proxy's KUBE-* rules are machine-wide: remove them unless another cluster's kube-proxy runs.
  pgrep -x kube-proxy >/dev/null || "$BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
  # The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT), unless another kubelet runs.
  pgrep -x kubelet >/dev/null || remove_kubelet_chains
  network_down
  remove_cgroups
  restore_sysctls
  rm -rf "$NODE"
}
