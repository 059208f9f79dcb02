#!/usr/bin/env bash
# A real, small Kubernetes control plane on this machine, without Docker or a container runtime:
# etcd + kube-apiserver + kube-controller-manager + kube-scheduler, and kwok simulating the nodes
# (pods of Deployments/StatefulSets go Running+Ready, pods of Jobs go Succeeded), plus helm and
# kubectl. Everything is built from source with Go from the Go module proxy, once, into a cache
# folder outside the repository, and reused afterwards.
#
#   scripts/kube-up.sh build        build the binaries (no-op when already built); prints the bin dir
#   scripts/kube-up.sh start DIR [--real-node]
#                                   build if needed, start a cluster with its state in DIR,
#                                   print `export KUBECONFIG=DIR/kubeconfig`. --real-node (or
#                                   KUBE_UP_REAL_NODE=1) adds a real node, agk-node: containerd + runc +
#                                   CNI, kubelet, kube-proxy, CoreDNS (scripts/kube-node.sh); its pods
#                                   really run. Images to import into it: KUBE_UP_NODE_IMAGES (docker-
#                                   archive paths, space-separated); more later: import DIR ARCHIVE...
#   scripts/kube-up.sh import DIR ARCHIVE...   import docker-archives into the real node's containerd
#   scripts/kube-up.sh stop DIR     stop the cluster started in DIR (nothing is left running)
#   scripts/kube-up.sh env [DIR]    print the bin dir (and KUBECONFIG for DIR) as shell exports
#   scripts/kube-up.sh bin-dir      print the bin dir only
#
# Cache: ${AIRFLOW_GITOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gitops}/kube/
#   <versions>/bin      the binaries            go/             GOPATH, GOMODCACHE, GOCACHE
# AIRFLOW_GITOPS_GOMODCACHE overrides only the Go module cache (to share downloads between caches).
# Everything listens on 127.0.0.1 only, on ports free at start, so clusters do not collide; with a
# real node, the API server listens on the node's bridge address instead (the pods reach it there).
set -euo pipefail

# ---- versions (all staging modules k8s.io/* pinned to the matching v0.x of K8S_VERSION) ----------
K8S_VERSION=v1.36.5        # k8s.io/kubernetes: kube-apiserver, -controller-manager, -scheduler, kubectl
K8S_STAGING_VERSION=v0.36.5 # k8s.io/api, k8s.io/client-go, ... (the staging modules of K8S_VERSION)
ETCD_VERSION=v3.6.8        # go.etcd.io/etcd/server/v3: the version k8s.io/kubernetes v1.36.5 requires
KWOK_VERSION=v0.8.0        # sigs.k8s.io/kwok (built against k8s.io/* v0.36)
HELM_VERSION=v3.21.4       # helm.sh/helm/v3 (built against k8s.io/* v0.36)
NODES=${KUBE_UP_NODES:-2}  # fake kwok nodes

VERSIONS_TAG="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
CACHE_ROOT="${AIRFLOW_GITOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gitops}"
KUBE_CACHE="$CACHE_ROOT/kube"
VERSIONS_DIR="$KUBE_CACHE/$VERSIONS_TAG"
BIN_DIR="$VERSIONS_DIR/bin"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kwok helm)

say() { echo "kube-up: $*" >&2; }
die() { echo "kube-up: error: $*" >&2; exit 1; }
# shellcheck source=kube-node.sh
source "$(dirname "${BASH_SOURCE[0]}")/kube-node.sh"

# ---- build ----------------------------------------------------------------------------------------

binaries_present() {
  local b
  for b in "${BINARIES[@]}"; do [ -x "$BIN_DIR/$b" ] || return 1; done
}

go_env() {
  local hint="install Go >= 1.21 from https://go.dev/doc/install (Debian 12's golang-go, Go 1.19, is too old); Go >= 1.21 fetches the newer Go that Kubernetes $K8S_VERSION needs through the module proxy by itself"
  command -v go >/dev/null || die "Go is not installed (needed once, to build the Kubernetes binaries). Fix: $hint"
  local v
  v=$(go env GOVERSION 2>/dev/null || true)
  v=${v#go}
  if [ -z "$v" ] || [ "${v%%.*}" -lt 1 ] || { [ "${v%%.*}" -eq 1 ] && [ "$(echo "$v" | cut -d. -f2)" -lt 21 ]; }; then
    die "Go ${v:-of unknown version} is too old to build Kubernetes $K8S_VERSION. Fix: $hint"
  fi
  export GOPATH="$KUBE_CACHE/go"
  export GOMODCACHE="${AIRFLOW_GITOPS_GOMODCACHE:-$KUBE_CACHE/go/pkg/mod}"
  export GOCACHE="$KUBE_CACHE/go/build-cache"
  export CGO_ENABLED=0 GOWORK=off GO111MODULE=on
  export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
  unset GOFLAGS GOBIN
}

build() {
  mkdir -p "$VERSIONS_DIR"
  # Two builds at once (two test runs, CI beside a developer's run) share one work folder and would move
  # each other's output away: the second waits for the first, then finds the binaries built.
  exec 9>"$VERSIONS_DIR/build.lock"
  if ! flock -n 9; then
    say "another build of these versions is running (lock $VERSIONS_DIR/build.lock): waiting for it ..."
    flock 9
  fi
  build_control_plane
  build_node
  exec 9>&-
}

build_control_plane() {
  if binaries_present; then
    say "binaries already built in $BIN_DIR (skipping the build)"
    return 0
  fi
  go_env
  local t0=$SECONDS work out mod minor ldk ldh ldw
  work="$VERSIONS_DIR/build"
  out="$work/out"
  mod="$work/kubernetes"
  rm -rf "$out"
  mkdir -p "$out" "$mod"
  say "building Kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION into $BIN_DIR"
  say "(first build: tens of minutes on 2 cores; Go cache in $KUBE_CACHE/go; log: $work/build.log)"
  : >"$work/build.log"

  # k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the staging modules k8s.io/* by
  # ./staging/... So a module of ours requires it and pins every staging module to K8S_STAGING_VERSION.
  # The etcd server is built in the same module: k8s.io/kubernetes requires exactly ETCD_VERSION.
  local staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
    cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt
    kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
    mount-utils pod-security-admission sample-apiserver streaming)
  {
    echo "// Generated by scripts/kube-up.sh: builds k8s.io/kubernetes $K8S_VERSION outside its repository."
    echo "module airflow-gitops.local/kube-build"
    echo
    echo "go 1.26.0" # k8s.io/kubernetes $K8S_VERSION's own go directive (go get raises it if needed)
    echo
    echo "require ("
    echo "	k8s.io/kubernetes $K8S_VERSION"
    echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo ")"
    echo
    echo "replace ("
    local s
    for s in "${staging[@]}"; do echo "	k8s.io/$s => k8s.io/$s $K8S_STAGING_VERSION"; done
    echo ")"
  } >"$mod/go.mod"
  rm -f "$mod/go.sum"
  (
    cd "$mod"
    # Explicit @versions: a bare package path would mean @upgrade (the newest release).
    GOFLAGS=-mod=mod go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-scheduler@$K8S_VERSION" \
      "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION" "k8s.io/kubernetes/cmd/kubelet@$K8S_VERSION" \
      "k8s.io/kubernetes/cmd/kube-proxy@$K8S_VERSION" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >>"$work/build.log" 2>&1
    grep -q "k8s.io/kubernetes $K8S_VERSION\$" go.mod && grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" go.mod \
      || { echo "go get changed the pinned versions:" && cat go.mod && exit 1; } >>"$work/build.log" 2>&1
  ) || die "resolving the Kubernetes modules failed (go get); see $work/build.log"

  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  ldk="-s -w"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldk+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldk+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  say "go build kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd ..."
  (cd "$mod" && GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldk" -o "$out/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy >>"$work/build.log" 2>&1) \
    || die "building Kubernetes $K8S_VERSION failed; see $work/build.log"
  (cd "$mod" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3 \
      >>"$work/build.log" 2>&1) || die "building etcd $ETCD_VERSION failed; see $work/build.log"

  # kwok and helm have no replace directives: plain `go install module@version`.
  say "go install kwok $KWOK_VERSION ..."
  ldw="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$K8S_VERSION"
  GOBIN="$out" go install -trimpath -ldflags "$ldw" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >>"$work/build.log" 2>&1 \
    || die "building kwok $KWOK_VERSION failed; see $work/build.log"
  say "go install helm $HELM_VERSION ..."
  local hmin
  # helm reports (and lints against) the Kubernetes version of the k8s.io modules it is built with.
  hmin="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" 2>/dev/null \
    | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' | xargs -r grep -m1 -E '^\s*k8s.io/client-go ' | awk '{print $2}')"
  hmin="${hmin#v0.}"; hmin="${hmin%%.*}"; hmin="${hmin:-$minor}"
  ldh="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ldh+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$hmin"
  ldh+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$hmin"
  GOBIN="$out" go install -trimpath -ldflags "$ldh" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >>"$work/build.log" 2>&1 \
    || die "building helm $HELM_VERSION failed; see $work/build.log"

  local b
  for b in "${BINARIES[@]}"; do [ -x "$out/$b" ] || die "build finished but $out/$b is missing; see $work/build.log"; done
  rm -rf "$BIN_DIR"
  mv "$out" "$BIN_DIR"
  say "built in $((SECONDS - t0)) s: $BIN_DIR"
}

# ---- start / stop --------------------------------------------------------------------------------

SERVICE_CIDR=10.96.0.0/16   # virtual; on the real node kube-proxy routes it to pods
SERVICE_IP=10.96.0.1        # the kubernetes.default Service
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)  # start order

need_openssl() {
  command -v openssl >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing openssl (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; } >/dev/null \
      || die "installing openssl with apt-get failed"
  else
    die "openssl is missing. Fix: sudo apt-get install -y openssl"
  fi
}

# N distinct TCP ports that are free on 127.0.0.1 now.
free_ports() {
  local n=$1
  if command -v python3 >/dev/null; then
    python3 - "$n" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
  else
    local ports=() p
    while [ ${#ports[@]} -lt "$n" ]; do
      p=$((20000 + RANDOM % 30000))
      [[ " ${ports[*]} " == *" $p "* ]] && continue
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue  # something listens there
      ports+=("$p")
    done
    echo "${ports[*]}"
  fi
}

# sign NAME SUBJECT EXTENSIONS: DIR/pki/NAME.{key,crt} signed by DIR/pki/ca.
sign() {
  local name=$1 subj=$2 ext=$3 pki="$STATE/pki"
  openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  printf '%b\n' "$ext" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 3650 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

make_pki() {
  local pki="$STATE/pki" client="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  mkdir -p "$pki"
  chmod 700 "$pki"
  openssl genrsa -out "$pki/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=airflow-gitops-kube-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$pki/ca.crt" 2>/dev/null
  # Serving certificate of kube-apiserver (also served by the controller-manager and the scheduler).
  sign serving "/CN=kube-apiserver" "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,IP:$API_HOST,IP:$SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=kubernetes-admin" "$client"
  sign controller-manager "/CN=system:kube-controller-manager" "$client"
  sign scheduler "/CN=system:kube-scheduler" "$client"
  sign kwok "/O=system:masters/CN=kwok" "$client"
  # The API server's client certificate towards kubelets (only a real node's kubelet ever sees it).
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  # Service-account token signing key pair.
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  [ -s "$pki/sa.pub" ] && [ -s "$pki/kwok.crt" ] || die "generating certificates with openssl failed (in $pki)"
}

# kubeconfig FILE USER: a self-contained kubeconfig (certificates embedded).
kubeconfig() {
  local file=$1 user=$2 pki="$STATE/pki"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: airflow-gitops-kube
  cluster:
    server: https://$API_HOST:$API_PORT
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$user.crt")
    client-key-data: $(base64 -w0 <"$pki/$user.key")
contexts:
- name: airflow-gitops-kube
  context:
    cluster: airflow-gitops-kube
    user: $user
current-context: airflow-gitops-kube
EOF
  chmod 600 "$file"
}

# The kwok configuration: the nodes it manages and the Stages that play a kubelet.
write_kwok_config() {
  cat >"$STATE/kwok.yaml" <<'EOF'
# kwok plays the kubelet of every node. Stages are kwok v0.8.0's "fast" node and pod stages
# (kustomize/stage/node/fast, node/heartbeat-with-lease, pod/fast), unchanged:
#   pod-ready    Pending pod (scheduled)      -> Running, Ready, init containers Completed
#   pod-complete Running pod owned by a Job   -> Succeeded (containers exit 0), so Jobs complete
#   pod-delete   pod with a deletionTimestamp -> deleted (what the kubelet does after stopping it)
# Pods of Deployments/StatefulSets/DaemonSets stay Running+Ready.
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  # Only the fake nodes: the real node (agk-node) has a kubelet of its own.
  manageAllNodes: false
  manageNodesWithLabelSelector: type=kwok
  nodeIP: 127.0.0.1            # node addresses on loopback
  cidr: 10.244.0.1/16          # pod IPs: fictitious (EndpointSlices refuse loopback ones); the real
                               # node's pods are in 10.88.N.0/24
  nodeLeaseDurationSeconds: 40
  # kwok's defaults, spelled out: a configuration file does not get them.
  nodeLeaseParallelism: 4
  nodePlayStageParallelism: 4
  podPlayStageParallelism: 4
  podsOnNodeSyncParallelism: 1
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values:
      - 'True'
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $lastTransitionTime | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type  | Quote}}
      {{ end }}

      {{ $hasInternalIP := false }}
      {{ $hasHostname := false }}
      {{ range .status.addresses }}
        {{ if eq .type "InternalIP" }}
          {{ $hasInternalIP = true }}
        {{ end }}
        {{ if eq .type "Hostname" }}
          {{ $hasHostname = true }}
        {{ end }}
      {{ end }}
      {{ if or (not $hasInternalIP) (not $hasHostname) }}
      addresses:
      {{ end }}
      {{ if not $hasInternalIP }}
      {{ with NodeIP }}
      - address: {{ . | Quote }}
        type: InternalIP
      {{ end }}
      {{ end }}
      {{ if not $hasHostname }}
      {{ with NodeName }}
      - address: {{ . | Quote }}
        type: Hostname
      {{ end }}
      {{ end }}

      {{ with NodePort }}
      daemonEndpoints:
        kubeletEndpoint:
          Port: {{ . }}
      {{ end }}

      allocatable:
      {{ with .status.allocatable }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: 1k
        memory: 1Ti
        pods: 1M
      {{ end }}
      capacity:
      {{ with .status.capacity }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: 1k
        memory: 1Ti
        pods: 1M
      {{ end }}

      {{ $nodeInfo := .status.nodeInfo }}
      {{ $kwokVersion := printf "kwok-%s" Version }}
      nodeInfo:
        architecture: {{ or $nodeInfo.architecture "amd64" }}
        bootID: {{ or $nodeInfo.bootID `""` }}
        containerRuntimeVersion: {{ or $nodeInfo.containerRuntimeVersion $kwokVersion }}
        kernelVersion: {{ or $nodeInfo.kernelVersion $kwokVersion }}
        kubeProxyVersion: {{ or $nodeInfo.kubeProxyVersion $kwokVersion }}
        kubeletVersion: {{ or $nodeInfo.kubeletVersion $kwokVersion }}
        machineID: {{ or $nodeInfo.machineID `""` }}
        operatingSystem: {{ or $nodeInfo.operatingSystem "linux" }}
        osImage: {{ or $nodeInfo.osImage `""` }}
        systemUUID: {{ or $nodeInfo.systemUUID `""` }}
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-heartbeat-with-lease
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values:
      - 'True'
  delay:
    durationMilliseconds: 600000
    jitterDurationMilliseconds: 610000
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $lastTransitionTime | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}

      addresses:
      {{ with .status.addresses }}
      {{ YAML . 1 }}
      {{ else }}
      {{ with NodeIP }}
      - address: {{ . | Quote }}
        type: InternalIP
      {{ end }}
      {{ with NodeName }}
      - address: {{ . | Quote }}
        type: Hostname
      {{ end }}
      {{ end }}

      {{ with NodePort }}
      daemonEndpoints:
        kubeletEndpoint:
          Port: {{ . }}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Pending'
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values:
      - 'True'
  next:
    statusTemplate: |
      {{ $now := Now }}

      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: {{ .conditionType | Quote }}
      {{ end }}

      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}

      initContainerStatuses:
      {{ range .spec.initContainers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        {{ if eq .restartPolicy "Always" }}
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
        {{ else }}
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
        {{ end }}
      {{ end }}
      {{ $hostIPs := NodeIPsWith .spec.nodeName }}
      {{ with $hostIPs }}
      hostIP: {{ index . 0 | Quote }}
      hostIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      {{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      {{ with $podIPs }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-complete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.metadata.ownerReferences.[].kind'
      operator: 'In'
      values:
      - 'Job'
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $root := . }}
      containerStatuses:
      {{ range $index, $item := .spec.containers }}
      {{ $origin := index $root.status.containerStatuses $index }}
      - image: {{ $item.image | Quote }}
        name: {{ $item.name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Succeeded
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
  next:
    delete: true
EOF
}

pid_alive() {  # pid_alive NAME: the process recorded in DIR/NAME.pid runs (and is ours)
  local f="$STATE/$1.pid" pid want=$1
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -d "/proc/$pid" ] || return 1
  [ -s "$STATE/$1.exe" ] && want=$(cat "$STATE/$1.exe")  # launched by launch_cmd
  local exe
  exe=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1)
  [ "${exe##*/}" = "$want" ]
}

# launch NAME ARGS...: run BIN_DIR/NAME in its own session (process group = its pid), logging to DIR/NAME.log.
launch() {
  local name=$1
  shift
  launch_cmd "$name" "$BIN_DIR/$name" "$@"
}

# launch_cmd NAME COMMAND ARGS...: as launch, for a command not in BIN_DIR (containerd, python3).
launch_cmd() {
  local name=$1
  shift
  : >"$STATE/$name.log"
  if [ "${1##*/}" = "$name" ]; then rm -f "$STATE/$name.exe"; else echo "${1##*/}" >"$STATE/$name.exe"; fi
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$STATE/$name.pid" "$@" \
    </dev/null >>"$STATE/$name.log" 2>&1 &
  local i
  for i in $(seq 50); do [ -s "$STATE/$name.pid" ] && break; sleep 0.1; done
  [ -s "$STATE/$name.pid" ] || fail "$name" "did not start"
  # The pid file is written just before the exec: until the exec, pid_alive sees bash, not NAME (on a
  # loaded machine wait_for then took a starting etcd for an exited one and stopped it, log empty).
  local pid
  pid=$(cat "$STATE/$name.pid")
  for i in $(seq 100); do
    pid_alive "$name" && return 0
    [ -d "/proc/$pid" ] || break
    sleep 0.05
  done
  pid_alive "$name" || fail "$name" "did not start (pid $pid)"
}

# stop_group NAME...: SIGTERM to the components' process groups at once, SIGKILL to what still runs
# 15 s later.
stop_group() {
  local name pid pids=() names=() i
  for name in "$@"; do
    if pid_alive "$name"; then
      pid=$(cat "$STATE/$name.pid")
      pids+=("$pid")
      names+=("$name")
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    for _ in $(seq 150); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    if [ -d "/proc/$pid" ]; then
      say "${names[$i]} (pid $pid) did not stop on SIGTERM; killing it"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for name in "$@"; do rm -f "$STATE/$name.pid" "$STATE/$name.exe"; done
}

# stop_all: the real node's processes and containers, everything but etcd together (the API server
# shuts down cleanly only while etcd is up), etcd, then the node's network (the API server listens on it).
stop_all() {
  node_stop
  stop_group kwok kube-scheduler kube-controller-manager kube-apiserver
  stop_group etcd
  node_remove
}

# fail COMPONENT MESSAGE: one line naming the component and its log, stop what was started, exit 1.
fail() {
  local name=$1 msg=$2
  echo "kube-up: error: $name $msg; log: $STATE/$name.log" >&2
  if [ -s "$STATE/$name.log" ]; then
    echo "kube-up: last lines of $STATE/$name.log:" >&2
    tail -n 15 "$STATE/$name.log" | sed 's/^/    /' >&2
  fi
  stop_all
  exit 1
}

kctl() { "$BIN_DIR/kubectl" --kubeconfig "$STATE/kubeconfig" --request-timeout=10s "$@"; }

# wait_for NAME SECONDS COMMAND...: until COMMAND succeeds, while NAME's process stays alive.
wait_for() {
  local name=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$name" || fail "$name" "exited during start-up"
    [ $SECONDS -lt $deadline ] || fail "$name" "was not ready after ${timeout}s"
    sleep 0.5
  done
}

port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }
healthz() { "$BIN_DIR/kubectl" --kubeconfig "$STATE/kubeconfig" --server "https://127.0.0.1:$1" --request-timeout=5s get --raw /healthz | grep -qx ok; }
readyz() { kctl get --raw /readyz | grep -qx ok; }
nodes_ready() {
  local n
  n=$(kctl get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')
  [ "$n" -ge "$NODES" ]
}
default_sa() { kctl -n default get serviceaccount default && kctl -n default get configmap kube-root-ca.crt; }

start() {
  [ -n "${1:-}" ] || die "usage: $0 start DIR [--real-node]"
  local real_node=${KUBE_UP_REAL_NODE:-0}
  case "${2:-}" in
    --real-node) real_node=1 ;;
    "") ;;
    *) die "unknown option ${2}: usage: $0 start DIR [--real-node]" ;;
  esac
  mkdir -p "$1"
  STATE="$(cd "$1" && pwd)"
  local c
  for c in "${COMPONENTS[@]}" "${NODE_COMPONENTS[@]}"; do
    pid_alive "$c" && die "a cluster is already running in $STATE ($c, pid $(cat "$STATE/$c.pid")). Stop it: $0 stop $STATE"
  done
  local t0=$SECONDS
  build_control_plane
  need_openssl
  # A previous start that was killed may have left its node behind: remove it first.
  node_stop
  node_remove
  API_HOST=127.0.0.1
  # Whatever ends start early (a failure, Ctrl-C) stops what it started.
  START_DONE=0
  trap '[ "$START_DONE" = 1 ] || stop_all' EXIT
  trap 'echo "kube-up: interrupted; stopping" >&2; exit 130' INT TERM
  if [ "$real_node" = 1 ]; then
    node_prepare
    API_HOST=$GATEWAY
  fi
  # A fresh cluster each time: remove only what a previous start in DIR wrote.
  rm -rf "$STATE/etcd" "$STATE/pki" "$STATE/kwok.yaml" "$STATE"/*.kubeconfig "$STATE/kubeconfig" "$STATE/ports" \
    "$STATE/egress-selector.yaml" "$STATE/bootstrap.yaml"
  make_pki
  [ "$real_node" = 1 ] && node_pki

  local ports
  read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT < <(free_ports 5)
  ports="ETCD_PORT=$ETCD_PORT ETCD_PEER_PORT=$ETCD_PEER_PORT API_PORT=$API_PORT KCM_PORT=$KCM_PORT SCHED_PORT=$SCHED_PORT"
  echo "$ports" | tr ' ' '\n' >"$STATE/ports"
  kubeconfig "$STATE/kubeconfig" admin
  kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
  kubeconfig "$STATE/scheduler.kubeconfig" scheduler
  kubeconfig "$STATE/kwok.kubeconfig" kwok
  write_kwok_config
  # Every connection the API server would open into "the cluster" (to node kubelets for logs/exec/
  # port-forward, to pod and service IPs for the proxy subresources and webhooks) goes through a
  # unix socket. Without a real node nothing serves it: pod and service IPs are fictitious, so none may
  # reach the network. With one, a proxy there lets through connections to its kubelet only.
  cat >"$STATE/egress-selector.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $STATE/cluster-egress.sock
EOF
  local pki="$STATE/pki"

  launch etcd --name default --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
    --unsafe-no-fsync --log-level warn
  wait_for etcd 30 port_open "$ETCD_PORT"

  launch kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$API_HOST" --secure-port "$API_PORT" --advertise-address "$API_HOST" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --endpoint-reconciler-type none \
    --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" --client-ca-file "$pki/ca.crt" \
    --cert-dir "$STATE/kube-apiserver-certs" \
    --authorization-mode Node,RBAC --allow-privileged=true \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --egress-selector-config-file "$STATE/egress-selector.yaml" \
    --profiling=false
  wait_for kube-apiserver 120 readyz

  launch kube-controller-manager --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
    --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" --client-ca-file "$pki/ca.crt" \
    --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --enable-hostpath-provisioner=true \
    --leader-elect=false --profiling=false
  launch kube-scheduler --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" \
    --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" --client-ca-file "$pki/ca.crt" \
    --leader-elect=false --profiling=false
  launch kwok --kubeconfig "$STATE/kwok.kubeconfig" --config "$STATE/kwok.yaml"
  wait_for kube-controller-manager 60 healthz "$KCM_PORT"
  wait_for kube-scheduler 60 healthz "$SCHED_PORT"

  # The fake nodes (kwok manages every node), and a default StorageClass: the controller-manager's
  # host-path provisioner binds PersistentVolumeClaims (to folders under /tmp that no pod ever uses).
  local i manifest=""
  for ((i = 0; i < NODES; i++)); do
    manifest+="apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    type: kwok
---
"
  done
  manifest+="apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: \"true\"
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
"
  echo "$manifest" >"$STATE/bootstrap.yaml"
  kctl apply -f "$STATE/bootstrap.yaml" >>"$STATE/kube-apiserver.log" 2>&1 \
    || fail kube-apiserver "refused the nodes and StorageClass (kubectl apply -f $STATE/bootstrap.yaml)"
  wait_for kwok 60 nodes_ready
  wait_for kube-controller-manager 60 default_sa
  [ "$real_node" = 1 ] && node_start

  START_DONE=1
  trap - INT TERM
  local nodes="$NODES kwok nodes"
  [ "$real_node" = 1 ] && nodes+=" + real node $NODE_NAME (pods on $POD_CIDR, host services on $GATEWAY)"
  say "cluster ready in $((SECONDS - t0)) s: $nodes, API https://$API_HOST:$API_PORT, state and logs in $STATE"
  echo "export KUBECONFIG=$STATE/kubeconfig"
}

# The host-path provisioner made a folder under /tmp/hostpath_pv for each PersistentVolume (empty unless a
# pod on the real node wrote to it); remove this cluster's ones.
remove_hostpath_pvs() {
  [ -x "$BIN_DIR/kubectl" ] && [ -s "$STATE/kubeconfig" ] && pid_alive kube-apiserver || return 0
  local p
  for p in $(kctl get pv -o jsonpath='{range .items[*]}{.spec.hostPath.path}{"\n"}{end}' 2>/dev/null); do
    case "$p" in /tmp/hostpath_pv/?*) rm -rf -- "$p" ;; esac
  done
}

stop() {
  [ -n "${1:-}" ] || die "usage: $0 stop DIR"
  [ -d "$1" ] || die "no such directory: $1"
  STATE="$(cd "$1" && pwd)"
  remove_hostpath_pvs
  stop_all
  say "stopped the cluster in $STATE"
}

import_cmd() {
  [ -n "${1:-}" ] || die "usage: $0 import DIR ARCHIVE..."
  STATE="$(cd "$1" && pwd)" || die "no such directory: $1"
  shift
  node_env && pid_alive containerd || die "no real node runs in $STATE. Start one: $0 start $STATE --real-node"
  local a
  for a in "$@"; do [ -s "$a" ] || die "no such image archive: $a"; import_archive "$a"; done
}

env_cmd() {
  echo "export PATH=\"$BIN_DIR:\$PATH\""
  if [ -n "${1:-}" ]; then echo "export KUBECONFIG=\"$(cd "$1" && pwd)/kubeconfig\""; fi
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# One compound command, read whole before it runs, ending in exit: editing this file while it runs
# (a long build) cannot make bash read on into the new text.
{
  case "${1:-}" in
    build) build; echo "$BIN_DIR" ;;
    start) start "${2:-}" "${3:-}" ;;
    stop) stop "${2:-}" ;;
    import) shift; import_cmd "$@" ;;
    env) env_cmd "${2:-}" ;;
    bin-dir) echo "$BIN_DIR" ;;
    *) usage ;;
  esac
  exit
}
