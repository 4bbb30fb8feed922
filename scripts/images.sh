#!/usr/bin/env bash
# Builds keyfleet's two container images from deploy/images/Dockerfile with buildah, offline, and
# runs them: the step `images` of scripts/test, and how to build them by hand (docs/images.md).
#
#   1. buildah (Debian's package; installed with apt-get when missing), its storage under
#      target/images/ (driver vfs, no daemon, no registry), every build with --isolation chroot.
#   2. The runtime base, localhost/keyfleet/cc-debian12: Debian's libc6, libgcc-s1 and
#      ca-certificates unpacked (apt-get download + dpkg-deb -x) into a rootfs with the CA bundle,
#      /etc/passwd and /etc/group (nonroot 65532), /tmp and /home/nonroot: distroless/cc's contents.
#      No registry is reachable here, so gcr.io/distroless/cc-debian12 cannot be pulled.
#   3. The binaries: cargo build --release --locked -p keyfleet-hub -p keyfleet-agent --bins (the
#      images hold what ships; KEYFLEET_IMAGES_PROFILE=debug for a quicker local loop).
#   4. buildah bud --target hub / agent with BINARIES=prebuilt and RUNTIME_BASE=the local base,
#      tagged as the charts' image.repository values (registry.example.com/keyfleet/keyfleet and
#      .../keyfleet-agent) with the workspace version.
#   5. Checks, each binary run INSIDE its image (buildah run --isolation chroot): the config (user
#      65532:65532, entrypoint, OCI labels), no shell anywhere in the image, `--version`; then the
#      hub image serves (sqlite, self-signed TLS), `keyfleet cluster add` from the hub image issues a
#      token, and the agent image enrolls with it against the fake Kubernetes API
#      (keyfleet-testkit kube-api) until its /readyz answers 200; both processes run as uid 65532;
#      an agent without --hub-ca uses the image's CA bundle (and refuses the self-signed hub).
#
# Where buildah cannot run at all (not installable, no chroot or mount permission), it prints
# "SKIPPED: <why>" and exits 77; scripts/test shows that line in its summary. Any other failure
# exits 1. Loopback only. Idempotent; `scripts/images.sh --clean` removes target/images/.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PROFILE=${KEYFLEET_IMAGES_PROFILE:-release}
STORE=${KEYFLEET_IMAGES_DIR:-$TARGET/images}
REGISTRY=${KEYFLEET_IMAGES_REGISTRY:-registry.example.com/keyfleet}
BASE=localhost/keyfleet/cc-debian12
BASE_PACKAGES=(libc6 libgcc-s1 ca-certificates)
export SQLX_OFFLINE=true

if [ "${1:-}" = "--clean" ]; then
  if [ -d "$STORE/storage" ] && command -v buildah >/dev/null; then
    buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver vfs rm --all >/dev/null 2>&1 || true
  fi
  rm -rf "$STORE"
  echo "removed $STORE"
  exit 0
fi

skip() {
  echo "SKIPPED: $*"
  exit 77
}
fail() {
  echo "images: FAILED: $*" >&2
  exit 1
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)
SOURCE=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^repository = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$VERSION" ] && [ -n "$SOURCE" ] || fail "no version/repository in Cargo.toml [workspace.package]"
HUB_IMAGE=$REGISTRY/keyfleet:$VERSION
AGENT_IMAGE=$REGISTRY/keyfleet-agent:$VERSION

# The charts pull what this script builds: same repositories, tag = appVersion = workspace version.
if [ "$REGISTRY" = registry.example.com/keyfleet ]; then
  for chart in keyfleet-hub:keyfleet keyfleet-agent:keyfleet-agent; do
    dir=deploy/charts/${chart%%:*}
    repo=$(sed -n '/^image:/,/^[^ ]/ s/^  repository: *//p' "$dir/values.yaml")
    app=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$dir/Chart.yaml")
    [ "$repo" = "$REGISTRY/${chart#*:}" ] || fail "$dir/values.yaml image.repository is '$repo', the image is $REGISTRY/${chart#*:}"
    [ "$app" = "$VERSION" ] || fail "$dir/Chart.yaml appVersion is '$app', the workspace version $VERSION"
  done
fi

# --- 1. buildah -------------------------------------------------------------------------------
if ! command -v buildah >/dev/null; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    skip "buildah is not installed and cannot be installed here (needs root and apt-get: apt-get install buildah)"
  fi
  echo "buildah is not installed: installing Debian's buildah"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq buildah >"$TARGET/buildah-install.log" 2>&1; then
    apt-get update -qq >>"$TARGET/buildah-install.log" 2>&1 || true
    apt-get install -y -qq buildah >>"$TARGET/buildah-install.log" 2>&1 \
      || skip "apt-get install buildah failed: $(tail -n1 "$TARGET/buildah-install.log")"
  fi
fi
[ "$(id -u)" -eq 0 ] || skip "buildah runs as root here (vfs storage, chroot isolation); rootless needs subuid ranges this script does not set up"
mkdir -p "$STORE"
B=(buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver vfs)
echo "$(buildah --version), storage $STORE/storage (vfs), isolation chroot"

WORK=$(mktemp -d "$STORE/work.XXXXXX")
chmod 755 "$WORK"
PIDS=()
# The storage under $STORE is this script's alone: at exit, every working container goes, and so
# do the images no tag names (earlier builds, the intermediate stages).
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  "${B[@]}" rm --all >/dev/null 2>&1 || true
  "${B[@]}" rmi --prune >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
new_container() { "${B[@]}" from --pull=never "$1"; } # image -> the working container's name

# --- 2. the runtime base ----------------------------------------------------------------------
start=$(now)
debs="$STORE/debs"
rm -rf "$debs" && mkdir -p "$debs"
download() { (cd "$debs" && apt-get download -qq "${BASE_PACKAGES[@]}") >"$WORK/apt.log" 2>&1; }
if ! download; then
  apt-get update -qq >>"$WORK/apt.log" 2>&1 || true
  download || { cat "$WORK/apt.log" >&2; fail "apt-get download ${BASE_PACKAGES[*]} failed"; }
fi
packages=""
for deb in "$debs"/*.deb; do
  packages+="$(dpkg-deb -f "$deb" Package)=$(dpkg-deb -f "$deb" Version) "
done
packages=${packages% }
existing=$("${B[@]}" inspect --type image --format '{{index .OCIv1.Config.Labels "dev.keyfleet.base.packages"}}' "$BASE:bookworm" 2>/dev/null || true)
if [ "$existing" = "$packages" ]; then
  echo "base $BASE:bookworm is up to date ($packages)"
else
  rootfs="$STORE/base-rootfs"
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  for deb in "$debs"/*.deb; do
    dpkg-deb -x "$deb" "$rootfs"
    # As distroless does: one dpkg status file per package, so image scanners see the versions.
    name=$(dpkg-deb -f "$deb" Package)
    mkdir -p "$rootfs/var/lib/dpkg/status.d"
    { dpkg-deb -f "$deb" Package Version Architecture Source Maintainer Description | sed '/^Description:/q'
      echo "Status: install ok installed"; } >"$rootfs/var/lib/dpkg/status.d/$name"
  done
  # Nothing that needs a shell or a package manager: maintainer scripts, docs, the iconv modules.
  rm -rf "$rootfs"/usr/share/{doc,man,lintian,info} "$rootfs/usr/sbin" "$rootfs/etc/ca-certificates" \
    "$rootfs/usr/lib/x86_64-linux-gnu/gconv"
  # The bundle update-ca-certificates would write: every Mozilla root the package ships.
  mkdir -p "$rootfs/etc/ssl/certs"
  cat "$rootfs"/usr/share/ca-certificates/mozilla/*.crt >"$rootfs/etc/ssl/certs/ca-certificates.crt"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$rootfs/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$rootfs/etc/group"
  printf '%s\n' 'hosts: files dns' 'networks: files' 'passwd: files' 'group: files' >"$rootfs/etc/nsswitch.conf"
  cp /etc/os-release "$rootfs/etc/os-release" # the release whose packages these are
  mkdir -p "$rootfs/tmp" "$rootfs/root" "$rootfs/home/nonroot"
  chmod 1777 "$rootfs/tmp"
  chmod 700 "$rootfs/root" "$rootfs/home/nonroot"
  chown 65532:65532 "$rootfs/home/nonroot"
  [ -e "$rootfs/lib64/ld-linux-x86-64.so.2" ] || fail "libc6 has no /lib64/ld-linux-x86-64.so.2"

  ctr=$("${B[@]}" from scratch 2>"$WORK/from.err") \
    || skip "buildah from scratch failed: $(tail -n1 "$WORK/from.err")"
  mnt=$("${B[@]}" mount "$ctr" 2>"$WORK/mount.err") \
    || skip "buildah mount (vfs) failed: $(tail -n1 "$WORK/mount.err")"
  cp -a "$rootfs/." "$mnt/" # cp -a, not buildah copy: it keeps owners (/home/nonroot) and modes
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" config --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "dev.keyfleet.base.packages=$packages" \
    --label "org.opencontainers.image.title=cc-debian12 (local)" \
    --label "org.opencontainers.image.description=glibc, libgcc_s and CA certificates from Debian's ${BASE_PACKAGES[*]}: distroless/cc's contents" \
    "$ctr"
  "${B[@]}" commit -q --rm "$ctr" "$BASE:bookworm" >/dev/null
  echo "base $BASE:bookworm built from $packages ($(elapsed "$start") s)"
fi

# Can buildah run a process in an image here? The base's own dynamic loader, before anything of ours.
probe=$(new_container "$BASE:bookworm")
if ! "${B[@]}" run --isolation chroot "$probe" -- /lib64/ld-linux-x86-64.so.2 --version >"$WORK/probe.out" 2>"$WORK/probe.err"; then
  skip "buildah run --isolation chroot cannot run a process here: $(grep -v '^$' "$WORK/probe.err" | tail -n1)"
fi
echo "buildah run --isolation chroot works: $(head -n1 "$WORK/probe.out")"

# --- 3. the binaries --------------------------------------------------------------------------
start=$(now)
if [ "$PROFILE" = release ]; then profile_flag=(--release); else profile_flag=(--profile "$PROFILE"); fi
cargo build "${profile_flag[@]}" --locked -p keyfleet-hub -p keyfleet-agent --bins
cargo build --locked -p keyfleet-testkit --bin keyfleet-testkit
build_secs=$(elapsed "$start")
echo "binaries ($PROFILE) built in ${build_secs} s"
for bin in keyfleet keyfleet-agent; do
  ldd "$TARGET/$PROFILE/$bin" | grep -Ev 'linux-vdso|libc\.so|libm\.so|libgcc_s\.so|ld-linux|libpthread|libdl|librt' \
    && fail "$bin links a library the base does not have (above)"
done

# --- 4. the images ----------------------------------------------------------------------------
# The build context holds only the two binaries (hard links), as the Dockerfile's prebuilt stage
# expects them: target/<profile>/keyfleet{,-agent}.
ctx="$WORK/context"
mkdir -p "$ctx/target/$PROFILE"
for bin in keyfleet keyfleet-agent; do
  ln -f "$TARGET/$PROFILE/$bin" "$ctx/target/$PROFILE/$bin" 2>/dev/null || cp "$TARGET/$PROFILE/$bin" "$ctx/target/$PROFILE/$bin"
done
start=$(now)
for target in hub agent; do
  if [ "$target" = hub ]; then tag=$HUB_IMAGE; else tag=$AGENT_IMAGE; fi
  "${B[@]}" bud --isolation chroot --pull=never --layers=false --quiet \
    --file deploy/images/Dockerfile --target "$target" --tag "$tag" \
    --build-arg BINARIES=prebuilt --build-arg PROFILE="$PROFILE" \
    --build-arg RUNTIME_BASE="$BASE:bookworm" \
    --build-arg VERSION="$VERSION" --build-arg SOURCE="$SOURCE" \
    "$ctx" >"$WORK/bud-$target.log" 2>&1 || { cat "$WORK/bud-$target.log" >&2; fail "buildah bud --target $target"; }
done
image_secs=$(elapsed "$start")
echo "images built in ${image_secs} s: $HUB_IMAGE, $AGENT_IMAGE"
"${B[@]}" images --format '  {{.Name}}:{{.Tag}} {{.Size}}' | grep -v '<none>'

# --- 5. checks --------------------------------------------------------------------------------
passed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }

check_image() { # image title binary
  local image=$1 title=$2 bin=$3 config ctr mnt shells out
  config=$("${B[@]}" inspect --type image "$image") || fail "buildah inspect $image"
  python3 - "$config" "$title" "$bin" "$VERSION" "$SOURCE" <<'EOF' || fail "$image: config"
import json, sys
config, title, binary, version, source = json.loads(sys.argv[1])["OCIv1"]["config"], *sys.argv[2:]
labels = config.get("Labels") or {}
want = {"org.opencontainers.image.title": title, "org.opencontainers.image.version": version,
        "org.opencontainers.image.source": source, "org.opencontainers.image.licenses": "Apache-2.0"}
errors = [f"label {k}={labels.get(k)!r}, want {v!r}" for k, v in want.items() if labels.get(k) != v]
if config.get("User") != "65532:65532":
    errors.append(f"User {config.get('User')!r}, want '65532:65532'")
if config.get("Entrypoint") != [binary]:
    errors.append(f"Entrypoint {config.get('Entrypoint')!r}, want {[binary]!r}")
for e in errors:
    print("   ", e)
sys.exit(1 if errors else 0)
EOF
  ok "$image: user 65532:65532, entrypoint $bin, OCI labels (title $title, version $VERSION, source, licenses)"

  ctr=$(new_container "$image")
  mnt=$("${B[@]}" mount "$ctr")
  shells=$(find "$mnt" ! -type d \( -name sh -o -name bash -o -name dash -o -name busybox -o -name 'apt*' -o -name dpkg \) -print)
  [ -z "$shells" ] || fail "$image has a shell or package manager: $shells"
  [ "$(stat -c %u "$mnt/home/nonroot")" = 65532 ] || fail "$image: /home/nonroot is not owned by 65532"
  grep -q '^nonroot:x:65532:65532:' "$mnt/etc/passwd" || fail "$image: no nonroot 65532 in /etc/passwd"
  [ -s "$mnt/etc/ssl/certs/ca-certificates.crt" ] || fail "$image: no CA bundle"
  "${B[@]}" umount "$ctr" >/dev/null
  ok "$image: no shell (sh, bash, dash, busybox) and no package manager; /etc/passwd nonroot, CA bundle"

  out=$("${B[@]}" run --isolation chroot "$ctr" -- "$bin" --version 2>&1) || fail "$image: $bin --version: $out"
  [ "$out" = "$title $VERSION" ] || fail "$image: $bin --version printed '$out', want '$title $VERSION'"
  ok "$image: '$bin --version' inside the image: $out"
}
check_image "$HUB_IMAGE" keyfleet /usr/local/bin/keyfleet
check_image "$AGENT_IMAGE" keyfleet-agent /usr/local/bin/keyfleet-agent

# Waits (bounded, 60 s) until the command succeeds; the process PID must stay alive meanwhile.
wait_until() { # what pid command...
  local what=$1 pid=$2
  shift 2
  for _ in $(seq 1 600); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  echo "timed out waiting for $what" >&2
  return 1
}
# The uid of the process listening on 127.0.0.1:PORT (the one inside the image).
listener_uid() {
  local pid
  pid=$(ss -Hltnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2)
  [ -n "$pid" ] || return 1
  awk '/^Uid:/ { print $2 }' "/proc/$pid/status"
}
http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1"; }
is_200() { [ "$(http_status "$1")" = 200 ]; }

# The fake Kubernetes API the agent's kubeconfig points at (on the host, loopback).
"$TARGET/debug/keyfleet-testkit" kube-api --addr 127.0.0.1:0 --state-dir "$WORK/kube" \
  >"$WORK/kube.out" 2>"$WORK/kube.err" &
PIDS+=($!)
wait_until "kube-api ready" "${PIDS[-1]}" grep -q '^ready https://' "$WORK/kube.out" \
  || { cat "$WORK/kube.err" >&2; fail "keyfleet-testkit kube-api did not start"; }
chmod -R a+rX "$WORK/kube"

# The hub from its image: sqlite and a self-signed CA under /data (a bind mount it owns).
mkdir -p "$WORK/hub"
printf 'images:%s\n' "$(openssl rand -hex 32)" >"$WORK/hub/admin-token"   # name:token
chown -R 65532:65532 "$WORK/hub"
chmod 600 "$WORK/hub/admin-token"
hub_ctr=$(new_container "$HUB_IMAGE")
"${B[@]}" run --isolation chroot --network host -v "$WORK/hub:/data" "$hub_ctr" -- \
  keyfleet serve --database sqlite:///data/keyfleet.db --migrate \
  --grpc-addr 127.0.0.1:0 --ops-addr 127.0.0.1:0 --tls-self-signed /data/tls \
  --admin-token-file /data/admin-token --ready-file /data/ready.json >"$WORK/hub.log" 2>&1 &
PIDS+=($!)
hub_pid=${PIDS[-1]}
wait_until "the hub's ready file" "$hub_pid" test -s "$WORK/hub/ready.json" \
  || { cat "$WORK/hub.log" >&2; fail "the hub did not start in its image"; }
read -r grpc_addr ops_addr < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["grpc_addr"], d["ops_addr"])' "$WORK/hub/ready.json")
wait_until "hub /readyz" "$hub_pid" is_200 "http://$ops_addr/readyz" \
  || { cat "$WORK/hub.log" >&2; fail "the hub's /readyz is not 200"; }
uid=$(listener_uid "${ops_addr##*:}") || fail "no process listens on $ops_addr"
[ "$uid" = 65532 ] || fail "the hub runs as uid $uid, not 65532"
ok "hub image: keyfleet serve (sqlite, self-signed TLS) ready on $grpc_addr, /readyz 200, uid $uid"

# The admin CLI from the hub image registers a cluster and prints its token as JSON.
cli_ctr=$(new_container "$HUB_IMAGE")
"${B[@]}" run --isolation chroot --network host -v "$WORK/hub:/data" "$cli_ctr" -- \
  keyfleet cluster add images-e2e -o json --hub "https://$grpc_addr" --hub-ca /data/tls/ca.pem \
  --admin-token-file /data/admin-token >"$WORK/cluster-add.json" 2>"$WORK/cluster-add.err" \
  || { cat "$WORK/cluster-add.err" >&2; fail "keyfleet cluster add in the hub image"; }
token=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
d = d[0] if isinstance(d, list) else d
print(d["token"])' "$WORK/cluster-add.json") || { cat "$WORK/cluster-add.json" >&2; fail "no token in cluster add -o json"; }
ok "hub image: keyfleet cluster add images-e2e -o json issued an enrollment token"

# The agent from its image enrolls with it and syncs with the fake cluster.
run_agent() { # container log [extra env...]
  local ctr=$1 log=$2
  shift 2
  "${B[@]}" run --isolation chroot --network host -v "$WORK/kube:/kube:ro" -v "$WORK/hub/tls:/hub-tls:ro" \
    --env KEYFLEET_AGENT_HUB_URL="https://$grpc_addr" --env KEYFLEET_AGENT_KUBECONFIG=/kube/kubeconfig \
    --env KEYFLEET_AGENT_OPS_ADDR=127.0.0.1:0 --env KEYFLEET_AGENT_NAMESPACE=default \
    --env KEYFLEET_AGENT_LOG_FORMAT=json "$@" "$ctr" -- keyfleet-agent >"$log" 2>&1 &
  PIDS+=($!)
}
agent_ops() { sed -n '/ops endpoint listening/ s/.*"addr":"\([0-9.:]*\)".*/\1/p' "$1" | head -n1; }
has_agent_ops() { [ -n "$(agent_ops "$1")" ]; }
agent_ctr=$(new_container "$AGENT_IMAGE")
run_agent "$agent_ctr" "$WORK/agent.log" --env KEYFLEET_AGENT_HUB_CA=/hub-tls/ca.pem \
  --env KEYFLEET_AGENT_ENROLLMENT_TOKEN="$token"
agent_pid=${PIDS[-1]}
wait_until "the agent's ops address" "$agent_pid" has_agent_ops "$WORK/agent.log" \
  || { cat "$WORK/agent.log" >&2; fail "the agent did not start in its image"; }
agent_addr=$(agent_ops "$WORK/agent.log")
wait_until "agent /readyz" "$agent_pid" is_200 "http://$agent_addr/readyz" \
  || { cat "$WORK/agent.log" "$WORK/hub.log" >&2; fail "the agent's /readyz is not 200"; }
uid=$(listener_uid "${agent_addr##*:}") || fail "no process listens on $agent_addr"
[ "$uid" = 65532 ] || fail "the agent runs as uid $uid, not 65532"
ok "agent image: enrolled with the hub image over TLS, synced with the fake cluster, /readyz 200, uid $uid"

# Without --hub-ca the agent trusts the image's CA bundle: it reads it, and so refuses the hub's
# self-signed certificate (without a bundle it would stop at "needs its CA (--hub-ca)").
probe_ctr=$(new_container "$AGENT_IMAGE")
run_agent "$probe_ctr" "$WORK/agent-system-ca.log" --env KEYFLEET_AGENT_ENROLLMENT_TOKEN=not-a-token \
  --env KEYFLEET_AGENT_CREDENTIAL_SECRET=keyfleet-agent-credential-probe
probe_pid=${PIDS[-1]}
wait_until "the agent's TLS refusal" "$probe_pid" grep -Eqi 'UnknownIssuer|unknown ?issuer|invalid peer certificate' "$WORK/agent-system-ca.log" \
  || { cat "$WORK/agent-system-ca.log" >&2; fail "the agent without --hub-ca did not verify the hub against the image's CA bundle"; }
grep -q 'needs its CA' "$WORK/agent-system-ca.log" && fail "the agent found no CA bundle in its image"
ok "agent image: without --hub-ca it verifies with /etc/ssl/certs/ca-certificates.crt (refuses the self-signed hub)"

echo "images: ${passed} checks passed; binaries ($PROFILE) ${build_secs} s, images ${image_secs} s; $HUB_IMAGE, $AGENT_IMAGE in $STORE/storage"
