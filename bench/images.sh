#!/usr/bin/env bash
# Registry images (issue 23's benchmark), on a 1-node netns cluster with Debian's
# docker-registry in the cluster's underlay (192.168.0.1:5000) and an image of ~10 MB built
# here from busybox-static and incompressible padding, pushed with skopeo:
#   - first pull: `service create` of the image until its task runs (pull, unpack, crun);
#   - task start with the image cached, against a built-in stand-in task (ratio, same run,
#     interleaved round by round): `service create` until running, then `service rm`;
#   - RSS per running task: every process in the task's cgroup (crun and the container's
#     httpd; the stand-in's own server), summed, over TASKS replicas.
#
# Usage: bench/images.sh   Env: ROUNDS=5, TASKS=10, SWARMKIT. Needs root and the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
SK=${SWARMKIT:-target/release/swarmkit}
[ -x "$SK" ] || cargo build --release --quiet
SK=$(realpath "$SK")
ROUNDS=${ROUNDS:-5}
TASKS=${TASKS:-10}
C=bench-images
REG=192.168.0.1:5000
work=$(mktemp -d)
registry_pid=
cleanup() {
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true
  "$SK" cluster down "$C" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# The image: one layer (busybox and 9 MiB that do not compress), as an OCI layout.
build_image() {
  local root=$work/rootfs out=$work/layout
  mkdir -p "$root/bin" "$root/srv" "$root/proc" "$root/dev" "$root/sys" "$root/etc" \
    "$out/blobs/sha256"
  cp "$(command -v busybox)" "$root/bin/busybox"
  for a in sh httpd; do ln -s busybox "$root/bin/$a"; done
  echo hello >"$root/srv/index.html"
  head -c $((9 * 1024 * 1024)) /dev/urandom >"$root/padding"
  tar --sort=name --mtime=@0 --owner=0 --group=0 -C "$root" -cf "$work/layer.tar" .
  local diff_id; diff_id=$(sha "$work/layer.tar")
  gzip -n -1 -c "$work/layer.tar" >"$work/layer.tar.gz"
  local layer; layer=$(sha "$work/layer.tar.gz")
  local layer_size; layer_size=$(stat -c %s "$work/layer.tar.gz")
  cp "$work/layer.tar.gz" "$out/blobs/sha256/$layer"
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["httpd","-f","-p","80","-h","/srv"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$diff_id" >"$work/config.json"
  local config; config=$(sha "$work/config.json")
  cp "$work/config.json" "$out/blobs/sha256/$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
    "$config" "$(stat -c %s "$work/config.json")" "$layer" "$layer_size" >"$work/manifest.json"
  local manifest; manifest=$(sha "$work/manifest.json")
  cp "$work/manifest.json" "$out/blobs/sha256/$manifest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"1"}}]}' \
    "$manifest" "$(stat -c %s "$work/manifest.json")" >"$out/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
  echo "image: $(du -sh "$work/layer.tar.gz" | cut -f1) compressed" >&2
}

"$SK" cluster down "$C" >/dev/null 2>&1 || true
"$SK" cluster up --name "$C" --nodes 1 --insecure-registry "$REG" >/dev/null
U=sk-$C.underlay
cat >"$work/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $REG
EOF
ip netns exec "$U" docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
deadline=$(( $(date +%s) + 20 ))
until ip netns exec "$U" curl -sf "http://$REG/v2/" >/dev/null; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "registry not up: $(cat "$work/registry.log")" >&2; exit 1; }
  sleep 0.1
done
build_image
ip netns exec "$U" timeout 120 skopeo copy --quiet --dest-tls-verify=false \
  "oci:$work/layout:1" "docker://$REG/bench:1"

# Until the service's tasks run (service create's own wait), bounded.
create() { timeout 120 "$SK" --cluster "$C" service create --name "$@" >/dev/null; }

t0=$(now)
create first "$REG/bench:1"
t1=$(now)
echo "first pull and start (~10 MB image): $(echo "$t1 - $t0" | bc) s"
"$SK" --cluster "$C" service rm first >/dev/null

declare -a standin image
for r in $(seq "$ROUNDS"); do
  t0=$(now); create "s$r" whoami; t1=$(now)
  standin+=("$(echo "$t1 - $t0" | bc)")
  t0=$(now); create "i$r" "$REG/bench:1"; t1=$(now)
  image+=("$(echo "$t1 - $t0" | bc)")
  "$SK" --cluster "$C" service rm "s$r" "i$r" >/dev/null
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms=$(median "${standin[@]}"); mi=$(median "${image[@]}")
echo "task start, stand-in: median ${ms} s of ${standin[*]}"
echo "task start, cached image: median ${mi} s of ${image[*]}"
echo "ratio image/stand-in: $(echo "scale=2; $mi / $ms" | bc)"

# RSS: every process in each task's memory cgroup, summed, per task.
rss_per_task() {
  local service=$1 total=0 n=0
  for id in $("$SK" --cluster "$C" service ps -q --no-trunc "$service"); do
    local procs=/sys/fs/cgroup/memory/swarmkit/$C/$id/cgroup.procs
    [ -r "$procs" ] || procs=/sys/fs/cgroup/swarmkit/$C/$id/cgroup.procs
    for p in $(cat "$procs"); do
      total=$(( total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) ))
    done
    n=$((n + 1))
  done
  echo "$(( total / n )) KiB over $n tasks"
}
create rs --replicas "$TASKS" whoami
create ri --replicas "$TASKS" "$REG/bench:1"
echo "RSS per task, stand-in: $(rss_per_task rs)"
echo "RSS per task, image (crun + httpd): $(rss_per_task ri)"
