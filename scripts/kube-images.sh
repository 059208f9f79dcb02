#!/usr/bin/env bash
# The images the chart's pods run on the test cluster's real node, built without Docker or a registry:
#   base             Debian bookworm (mmdebstrap) + python3.11 + git + ssh + an `airflow` user: the
#                    stand-in for apache/airflow that the users' Dockerfile is built on (docs/kubernetes.md)
#   airflow          the users' Dockerfile (`airflow-gitops image build`) of PLATFORM_YAML on that base
#   git-sync         kubernetes/git-sync GIT_SYNC_VERSION, built from the local mirror of its repository
#   statsd-exporter  prometheus/statsd_exporter STATSD_EXPORTER_VERSION, from its Go module
# Each is an OCI archive plus a docker-archive (whose RepoTags name the image for
# `ctr -n k8s.io images import`), cached by a sha256 of its inputs and rebuilt only when they change.
#
#   scripts/kube-images.sh build [PLATFORM_YAML]  build what is missing; print one line per image:
#                                   NAME=<docker-archive path> REF=<image ref>
#                                   (PLATFORM_YAML default ./platform.yaml; its image.python must be 3.11 or
#                                   3.11.2, the base's: the lock has markers on the patch level)
#   scripts/kube-images.sh base | git-sync | statsd-exporter
#                                   build that one; print its line
#   scripts/kube-images.sh airflow [PLATFORM_YAML]   the base and the airflow image; print their lines
#   scripts/kube-images.sh dir      print the cache folder
#
# Cache: ${AIRFLOW_GITOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gitops}/images/
#   NAME-HASH/{image.oci.tar,image.docker.tar,ref,build.log}    storage/   buildah's own storage
# Heavy steps run under `nice -n ${KUBE_IMAGES_NICE:-10}`.
set -euo pipefail

# ---- versions ---------------------------------------------------------------------------------------
DEBIAN_SUITE=bookworm              # its python3.11 is the image's CPython (spec.image.python 3.11)
BASE_PYTHON=3.11.2                 # bookworm's python3.11 (image.python '3.11.2' pins the lock for it; the
                                   # users' Dockerfile checks it: a base with another Python stops the build)
GIT_SYNC_VERSION=v4.4.2            # chart 1.21.0's images.gitSync.tag
STATSD_EXPORTER_VERSION=v0.29.0    # chart 1.21.0's images.statsd.tag
GIT_SYNC_MIRROR="${GIT_SYNC_MIRROR:-/work/.mirror/kubernetes+git-sync/repo}"  # a bare clone of kubernetes/git-sync

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CACHE_ROOT="${AIRFLOW_GITOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gitops}"
IMAGES="$CACHE_ROOT/images"
KUBE_CACHE="$CACHE_ROOT/kube"   # the Go caches scripts/kube-up.sh fills (shared: nothing downloaded twice)
NICE=(nice -n "${KUBE_IMAGES_NICE:-10}")

say() { echo "kube-images: $*" >&2; }
die() { echo "kube-images: error: $*" >&2; exit 1; }

need() {  # need PROGRAM DEBIAN_PACKAGE
  command -v "$1" >/dev/null || die "$1 is missing (needed to build the test images without Docker). Fix: apt-get install -y $2"
}

# A storage of our own, so the builds touch nothing of the machine's buildah/podman images.
storage_env() {
  mkdir -p "$IMAGES/storage" "$IMAGES/run"
  local conf="$IMAGES/storage.conf"
  cat >"$conf.$$" <<EOF
[storage]
driver = "${KUBE_IMAGES_STORAGE_DRIVER:-overlay}"
graphroot = "$IMAGES/storage"
runroot = "$IMAGES/run"
EOF
  mv "$conf.$$" "$conf"
  export CONTAINERS_STORAGE_CONF="$conf"
}

# hash_of WORDS...: sha256 (hex) of the given strings and of the files named by the ones starting with @.
hash_of() {
  local w
  for w in "$@"; do
    # a file by its name and content, not its path: another checkout of the same files hits the cache
    if [[ $w == @* ]]; then printf 'file %s\n' "$(basename "${w#@}")"; sha256sum <"${w#@}"; else printf 'word %s\n' "$w"; fi
  done | sha256sum | cut -c1-64
}

# print_line NAME DIR: the line `build` prints for the image cached in DIR.
print_line() { echo "$1=$2/image.docker.tar REF=$(cat "$2/ref")"; }

# finish NAME DIR WORK REF: WORK/image.oci.tar (tagged "image") -> docker-archive named REF; WORK -> DIR.
finish() {
  local name=$1 dir=$2 work=$3 ref=$4
  skopeo copy --quiet "oci-archive:$work/image.oci.tar:image" "docker-archive:$work/image.docker.tar:$ref" \
    >>"$work/build.log" 2>&1 || die "skopeo could not write the docker-archive of $name; see $work/build.log"
  echo "$ref" >"$work/ref"
  rm -rf "$dir"
  mv "$work" "$dir"
}

# oci_from_rootfs WORK ROOTFS_TAR CONFIG_ARGS...: an OCI archive WORK/image.oci.tar (tag "image") of one
# layer, the tar as it is (owners, modes), with `umoci config` CONFIG_ARGS.
oci_from_rootfs() {
  local work=$1 tarball=$2
  shift 2
  local layout="$work/layout"
  rm -rf "$layout"
  umoci init --layout "$layout"
  umoci new --image "$layout:image"
  umoci raw add-layer --image "$layout:image" "$tarball"
  umoci config --image "$layout:image" --no-history --os linux --architecture amd64 "$@"
  umoci gc --layout "$layout"
  (cd "$layout" && tar --sort=name --mtime=@0 --owner=0 --group=0 -cf "$work/image.oci.tar" .)
  rm -rf "$layout" "$tarball"
}

# mmdebstrap_tar OUT.tar PACKAGES HOOK...: a minbase Debian rootfs as a tar, without docs and apt lists.
mmdebstrap_tar() {
  local out=$1 packages=$2
  shift 2
  local hooks=() h
  for h in "$@"; do hooks+=(--customize-hook="$h"); done
  SOURCE_DATE_EPOCH=0 "${NICE[@]}" mmdebstrap --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
    "${hooks[@]}" "$DEBIAN_SUITE" "$out"
}

# ---- base --------------------------------------------------------------------------------------------

BASE_PACKAGES=python3.11,python3.11-venv,git,openssh-client,ca-certificates,dumb-init,procps
BASE_FILES=("$HERE/images/base/entrypoint" "$HERE/images/base/clean-logs")
# The CAs this machine added to its trust store (Debian's place for them): the image trusts what the
# build host trusts, so pip and git in it pass a TLS-inspecting proxy the host is behind.
shopt -s nullglob
HOST_CAS=(/usr/local/share/ca-certificates/*.crt)
shopt -u nullglob

base_hash() {
  hash_of "$(declare -f build_base mmdebstrap_tar oci_from_rootfs finish)" "$DEBIAN_SUITE" "$BASE_PACKAGES" \
    "${BASE_FILES[@]/#/@}" ${HOST_CAS[@]+"${HOST_CAS[@]/#/@}"}
}
base_dir() { echo "$IMAGES/base-$(base_hash | cut -c1-12)"; }

build_base() {
  local dir hash work t0=$SECONDS
  hash="$(base_hash)"
  dir="$IMAGES/base-${hash:0:12}"
  if [ -f "$dir/ref" ]; then say "base: cached in $dir"; return 0; fi
  need mmdebstrap mmdebstrap; need umoci umoci; need skopeo skopeo
  work="$dir.work"
  rm -rf "$work"
  mkdir -p "$work"
  say "base: mmdebstrap $DEBIAN_SUITE + $BASE_PACKAGES (log: $work/build.log)"
  # The `airflow` user as in the official image: uid 50000, gid 0 (the OpenShift convention: any uid
  # with gid 0 can write what airflow can). The venv is airflow's, on PATH, so `USER airflow` +
  # `RUN pip install` in the users' Dockerfile installs into it, as into ~/.local in the official one.
  mmdebstrap_tar "$work/rootfs.tar" "$BASE_PACKAGES" \
    'chroot "$1" useradd --uid 50000 --gid 0 --home-dir /home/airflow --create-home --shell /bin/bash airflow' \
    'mkdir -p "$1"/opt/airflow/dags "$1"/opt/airflow/logs "$1"/opt/airflow/plugins "$1"/opt/airflow/config' \
    'chroot "$1" python3.11 -m venv /opt/venv' \
    'chroot "$1" chown -R 50000:0 /opt/airflow /opt/venv /home/airflow' \
    'chroot "$1" chmod -R g+rwX /opt/airflow /opt/venv /home/airflow' \
    "install -m 0755 '${BASE_FILES[0]}' \"\$1\"/entrypoint" \
    "install -m 0755 '${BASE_FILES[1]}' \"\$1\"/clean-logs" \
    "for ca in ${HOST_CAS[*]+${HOST_CAS[*]}}; do install -m 0644 \"\$ca\" \"\$1\"/usr/local/share/ca-certificates/; done" \
    'chroot "$1" update-ca-certificates' \
    'printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" >"$1"/etc/pip.conf' \
    >>"$work/build.log" 2>&1 || die "base: mmdebstrap failed; see $work/build.log"
  oci_from_rootfs "$work" "$work/rootfs.tar" \
    --config.user 50000:0 --config.workingdir /opt/airflow \
    --config.entrypoint /usr/bin/dumb-init --config.entrypoint -- --config.entrypoint /entrypoint \
    --clear=config.cmd \
    --config.env PATH=/opt/venv/bin:/home/airflow/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env AIRFLOW_HOME=/opt/airflow --config.env AIRFLOW_USER_HOME_DIR=/home/airflow \
    --config.env VIRTUAL_ENV=/opt/venv --config.env LANG=C.UTF-8 --config.env LC_ALL=C.UTF-8 \
    --config.env LANGUAGE=C.UTF-8 --config.env DUMB_INIT_SETSID=1 --config.env PYTHONUNBUFFERED=1 \
    --config.label org.opencontainers.image.title=airflow-gitops-test-base \
    --config.label "org.opencontainers.image.description=Debian $DEBIAN_SUITE + python3.11 stand-in for apache/airflow (scripts/kube-images.sh)" \
    >>"$work/build.log" 2>&1 || die "base: umoci failed; see $work/build.log"
  finish base "$dir" "$work" "localhost/airflow-gitops/base:${hash:0:12}"
  say "base: built in $((SECONDS - t0)) s: $dir"
}

# ---- Go programs -------------------------------------------------------------------------------------

# The Go environment of scripts/kube-up.sh (its caches: a module downloaded for the cluster is reused).
go_env() {
  command -v go >/dev/null || die "Go is not installed (needed to build git-sync and the StatsD exporter). Fix: install Go >= 1.21 from https://go.dev/doc/install"
  export GOPATH="$KUBE_CACHE/go"
  export GOMODCACHE="${AIRFLOW_GITOPS_GOMODCACHE:-$KUBE_CACHE/go/pkg/mod}"
  export GOCACHE="$KUBE_CACHE/go/build-cache"
  export CGO_ENABLED=0 GOWORK=off GO111MODULE=on GOOS=linux GOARCH=amd64
  export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
  unset GOFLAGS GOBIN
}

# ---- git-sync ----------------------------------------------------------------------------------------
# As upstream's image (its Dockerfile.in): Debian + git, openssh-client, ca-certificates, bash; the
# user git-sync 65533:65533 (/etc/passwd writable for an arbitrary uid), HOME=/tmp, GITSYNC_ROOT=/git.

GIT_SYNC_PACKAGES=git,openssh-client,ca-certificates,bash,coreutils,socat,curl

git_sync_commit() {
  [ -d "$GIT_SYNC_MIRROR" ] || die "the git-sync source mirror $GIT_SYNC_MIRROR is missing (git-sync is not on the Go module proxy). Fix: put a bare clone of https://github.com/kubernetes/git-sync there (git clone --bare), or set GIT_SYNC_MIRROR to one"
  git -C "$GIT_SYNC_MIRROR" rev-parse --verify --quiet "$GIT_SYNC_VERSION^{commit}" \
    || die "the git-sync mirror $GIT_SYNC_MIRROR has no tag $GIT_SYNC_VERSION. Fix: git -C $GIT_SYNC_MIRROR fetch --tags"
}

git_sync_hash() {  # git_sync_hash COMMIT
  hash_of "$(declare -f build_git_sync go_env mmdebstrap_tar oci_from_rootfs finish)" "$DEBIAN_SUITE" \
    "$GIT_SYNC_PACKAGES" "$GIT_SYNC_VERSION" "$1"
}
git_sync_dir() {
  local commit
  commit="$(git_sync_commit)"
  echo "$IMAGES/git-sync-$GIT_SYNC_VERSION-$(git_sync_hash "$commit" | cut -c1-8)"
}

build_git_sync() {
  local dir hash work t0=$SECONDS src commit
  commit="$(git_sync_commit)"
  hash="$(git_sync_hash "$commit")"
  dir="$IMAGES/git-sync-$GIT_SYNC_VERSION-${hash:0:8}"
  if [ -f "$dir/ref" ]; then say "git-sync: cached in $dir"; return 0; fi
  need mmdebstrap mmdebstrap; need umoci umoci; need skopeo skopeo
  go_env
  work="$dir.work"
  rm -rf "$work"
  mkdir -p "$work/src" "$work/bin"
  src="$work/src"
  say "git-sync: go build $GIT_SYNC_VERSION from $GIT_SYNC_MIRROR (log: $work/build.log)"
  git -C "$GIT_SYNC_MIRROR" archive "$commit" | tar -x -C "$src"
  # Its vendor/ folder holds every dependency: nothing is downloaded.
  (cd "$src" && "${NICE[@]}" go build -mod=vendor -trimpath \
      -ldflags "-s -w -X k8s.io/git-sync/pkg/version.VERSION=$GIT_SYNC_VERSION" -o "$work/bin/git-sync" .) \
    >>"$work/build.log" 2>&1 || die "git-sync: go build failed; see $work/build.log"
  rm -rf "$src"
  mmdebstrap_tar "$work/rootfs.tar" "$GIT_SYNC_PACKAGES" \
    'echo "git-sync:x:65533:65533::/tmp:/sbin/nologin" >>"$1"/etc/passwd && chmod 0666 "$1"/etc/passwd' \
    'echo "git-sync:x:65533:git-sync" >>"$1"/etc/group' \
    'mkdir -m 02775 "$1"/git && chown 65533:65533 "$1"/git && chmod 1777 "$1"/tmp' \
    "install -m 0755 '$work/bin/git-sync' \"\$1\"/git-sync" \
    >>"$work/build.log" 2>&1 || die "git-sync: mmdebstrap failed; see $work/build.log"
  oci_from_rootfs "$work" "$work/rootfs.tar" \
    --config.user 65533:65533 --config.workingdir /tmp --config.entrypoint /git-sync --clear=config.cmd \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env HOME=/tmp --config.env GITSYNC_ROOT=/git \
    --config.label org.opencontainers.image.title=git-sync \
    --config.label "org.opencontainers.image.version=$GIT_SYNC_VERSION" \
    >>"$work/build.log" 2>&1 || die "git-sync: umoci failed; see $work/build.log"
  rm -rf "$work/bin"
  finish git-sync "$dir" "$work" "localhost/airflow-gitops/git-sync:$GIT_SYNC_VERSION-${hash:0:8}"
  say "git-sync: built in $((SECONDS - t0)) s: $dir"
}

# ---- StatsD exporter ---------------------------------------------------------------------------------
# As upstream's image: /bin/statsd_exporter (static) as nobody (65534), nothing else but /etc/passwd,
# /etc/group and the CA bundle.

statsd_hash() { hash_of "$(declare -f build_statsd go_env oci_from_rootfs finish)" "$STATSD_EXPORTER_VERSION"; }
statsd_dir() { echo "$IMAGES/statsd-exporter-$STATSD_EXPORTER_VERSION-$(statsd_hash | cut -c1-8)"; }

build_statsd() {
  local dir hash work t0=$SECONDS root pkg=github.com/prometheus/common/version
  hash="$(statsd_hash)"
  dir="$IMAGES/statsd-exporter-$STATSD_EXPORTER_VERSION-${hash:0:8}"
  if [ -f "$dir/ref" ]; then say "statsd-exporter: cached in $dir"; return 0; fi
  need umoci umoci; need skopeo skopeo
  go_env
  work="$dir.work"
  root="$work/rootfs"
  rm -rf "$work"
  mkdir -p "$root/bin" "$root/etc/ssl/certs" "$root/tmp"
  say "statsd-exporter: go install github.com/prometheus/statsd_exporter@$STATSD_EXPORTER_VERSION (log: $work/build.log)"
  GOBIN="$root/bin" "${NICE[@]}" go install -trimpath \
    -ldflags "-s -w -X $pkg.Version=${STATSD_EXPORTER_VERSION#v} -X $pkg.Revision=$STATSD_EXPORTER_VERSION -X $pkg.Branch=HEAD -X $pkg.BuildUser=airflow-gitops -X $pkg.BuildDate=19700101-00:00:00" \
    "github.com/prometheus/statsd_exporter@$STATSD_EXPORTER_VERSION" >>"$work/build.log" 2>&1 \
    || die "statsd-exporter: go install failed; see $work/build.log"
  printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/" 2>/dev/null || true
  chmod 1777 "$root/tmp"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/rootfs.tar" . \
    && rm -rf "$root"
  oci_from_rootfs "$work" "$work/rootfs.tar" \
    --config.user 65534:65534 --config.workingdir / --config.entrypoint /bin/statsd_exporter --clear=config.cmd \
    --config.exposedports 9102/tcp --config.exposedports 9125/tcp --config.exposedports 9125/udp \
    --config.label org.opencontainers.image.title=statsd-exporter \
    --config.label "org.opencontainers.image.version=$STATSD_EXPORTER_VERSION" \
    >>"$work/build.log" 2>&1 || die "statsd-exporter: umoci failed; see $work/build.log"
  finish statsd-exporter "$dir" "$work" "localhost/airflow-gitops/statsd-exporter:$STATSD_EXPORTER_VERSION-${hash:0:8}"
  say "statsd-exporter: built in $((SECONDS - t0)) s: $dir"
}

# ---- the Airflow image: the users' Dockerfile, built by `airflow-gitops image build` on the base -------

cli() {  # the project's CLI (the venv scripts/bootstrap.sh made, else uv)
  if [ -x "$REPO/.venv/bin/airflow-gitops" ]; then "$REPO/.venv/bin/airflow-gitops" "$@"
  else command -v uv >/dev/null || die "neither $REPO/.venv nor uv: run scripts/bootstrap.sh first"; uv run --project "$REPO" airflow-gitops "$@"; fi
}
cli_nice() {  # cli under nice (a function cannot be exec'd by nice)
  if [ -x "$REPO/.venv/bin/airflow-gitops" ]; then "${NICE[@]}" "$REPO/.venv/bin/airflow-gitops" "$@"
  else "${NICE[@]}" uv run --project "$REPO" airflow-gitops "$@"; fi
}
py() {
  if [ -x "$REPO/.venv/bin/python" ]; then "$REPO/.venv/bin/python" "$@"; else uv run --project "$REPO" python "$@"; fi
}

# airflow_inputs PLATFORM_YAML: "REF HASH" - the image reference and a sha256 of what the build reads
# (the folder `render` writes: Dockerfile, requirements.txt, constraints.txt, the serving package) plus the
# base's hash.
airflow_inputs() {
  [ -f "$1" ] || die "no such platform.yaml: $1"
  py - "$1" "$(base_hash)" "$(declare -f build_airflow)" "$BASE_PYTHON" <<'PYEOF'
import hashlib, sys, tempfile
from pathlib import Path
from airflow_gitops.errors import PlatformError
from airflow_gitops.spec import SpecError, load_spec
from airflow_gitops.kubernetes import image
BASE_PYTHON = sys.argv[4]
try:
    spec = load_spec(sys.argv[1])
    if spec.image.python not in ("3.11", BASE_PYTHON):
        raise SystemExit(f"kube-images: error: {sys.argv[1]}: image.python is {spec.image.python}; the test base has Debian bookworm's Python {BASE_PYTHON}. Fix: image.python: '{BASE_PYTHON}'")
    with tempfile.TemporaryDirectory() as d:
        folder = image.write_folder(spec, Path(d) / "image")
        h = hashlib.sha256(sys.argv[2].encode() + sys.argv[3].encode())
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):  # airflow_gitops/serving/ too
            h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
except (PlatformError, SpecError) as err:
    raise SystemExit(f"kube-images: error: {err}") from None
print(f"{spec.image.repository}:{spec.image.tag} {h.hexdigest()}")
PYEOF
}

airflow_dir() { local ref hash; read -r ref hash < <(airflow_inputs "$1"); echo "$IMAGES/airflow-${hash:0:12}"; }

build_airflow() {
  local spec=$1 ref hash dir work t0=$SECONDS base_oci
  read -r ref hash < <(airflow_inputs "$spec") || die "reading $spec failed"
  [ -n "$hash" ] || die "reading $spec failed"
  dir="$IMAGES/airflow-${hash:0:12}"
  if [ -f "$dir/ref" ]; then say "airflow: cached in $dir ($ref)"; return 0; fi
  build_base
  base_oci="$(base_dir)/image.oci.tar"
  work="$dir.work"
  rm -rf "$work"
  mkdir -p "$work"
  say "airflow: airflow-gitops image build of $spec on the test base (log: $work/out/image-build.log)"
  cli_nice image build -f "$spec" -o "$work/out" --base "oci-archive:$base_oci:image" --output "$work/image.oci.tar" \
    >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; die "airflow: image build failed; see $work/build.log"; }
  skopeo copy --quiet "oci-archive:$work/image.oci.tar:$ref" "docker-archive:$work/image.docker.tar:$ref" \
    >>"$work/build.log" 2>&1 || die "skopeo could not write the docker-archive of $ref; see $work/build.log"
  echo "$ref" >"$work/ref"
  rm -rf "$work/out/image" "$dir"
  mv "$work" "$dir"
  say "airflow: built in $((SECONDS - t0)) s: $dir"
}

# ---- dispatch ----------------------------------------------------------------------------------------

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# One compound command, read whole before it runs, ending in exit (editing the file during a build is safe).
{
  mkdir -p "$IMAGES"
  storage_env
  case "${1:-}" in
    base) build_base; print_line base "$(base_dir)" ;;
    git-sync) build_git_sync; print_line git-sync "$(git_sync_dir)" ;;
    statsd-exporter) build_statsd; print_line statsd-exporter "$(statsd_dir)" ;;
    airflow) spec="${2:-platform.yaml}"; build_airflow "$spec"; print_line base "$(base_dir)"; print_line airflow "$(airflow_dir "$spec")" ;;
    build)
      spec="${2:-platform.yaml}"
      build_base; build_git_sync; build_statsd; build_airflow "$spec"
      print_line base "$(base_dir)"; print_line git-sync "$(git_sync_dir)"
      print_line statsd-exporter "$(statsd_dir)"; print_line airflow "$(airflow_dir "$spec")"
      ;;
    dir) echo "$IMAGES" ;;
    *) usage ;;
  esac
  exit
}
