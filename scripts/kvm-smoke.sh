#!/usr/bin/env bash
# scripts/kvm-smoke.sh: cloud-hypervisor, Firecracker and QEMU over vsock for
# real, on a host with a working KVM, /dev/vhost-vsock and the programs
# installed (README "cloud-hypervisor and Firecracker"). For each backend:
# boot one µOS VM (agent over vsock: QEMU's vhost-vsock and the host relay,
# the hybrid vsock of the other two), run a
# job in it, pause and resume it, suspend it (state saved, process ended) and
# start it again from the saved state, run a job again; prints the timings.
# Not run by `npm test`: the dev and CI machines have no usable KVM (their
# /dev/kvm never runs a vCPU), which is why the backends are tested against
# spec-checked fakes there (harness/fake-vmm/).
#
#   bash scripts/kvm-smoke.sh [--images-dir DIR] [--image NAME] [--backends "qemu cloud-hypervisor firecracker"]
#
# Needs: `npm run build` done, a built µOS image (`node bin/mvirt.js image build
# images/recipes/default.json --data-dir test-output/data`, the default
# --images-dir test-output/data/images), /dev/kvm readable and writable.
set -euo pipefail
cd "$(dirname "$0")/.."

images_dir=test-output/data/images
image=default
backends="qemu cloud-hypervisor firecracker"
while [ $# -gt 0 ]; do
  case "$1" in
    --images-dir) images_dir="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --backends) backends="$2"; shift 2 ;;
    *) echo "kvm-smoke: unknown argument $1" >&2; exit 2 ;;
  esac
done

fail() { echo "kvm-smoke: $*" >&2; exit 1; }
[ -r /dev/kvm ] && [ -w /dev/kvm ] || fail "/dev/kvm is missing or not open to $(id -un)"
[ -f dist/mvirtd.js ] || fail "run npm run build first"
[ -f "$images_dir/$image/manifest.json" ] || fail "no image $image in $images_dir"

data=$(mktemp -d /tmp/mvirt-kvm-smoke.XXXXXX)
sock="$data/mvirt.sock"
log="$data/mvirtd.log"
node bin/mvirtd.js --data-dir "$data" --images-dir "$images_dir" --listen off --http off \
  --unix-socket "$sock" --bridge off --network none --host-id smoke --no-templates \
  --stop-vms-on-exit >"$log" 2>&1 &
daemon=$!
cleanup() {
  kill "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
export MVIRT_BROKER="$sock" MVIRT_HOST=smoke
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$log" >&2; fail "mvirtd did not start"; }

ms() { date +%s%3N; }
step() { # step NAME CMD...: run CMD, print its wall time
  local name="$1" t0 t1
  shift
  t0=$(ms)
  if ! out=$("$@" 2>&1); then
    echo "$out" >&2
    fail "$name failed"
  fi
  t1=$(ms)
  printf '  %-28s %6d ms\n' "$name" $((t1 - t0))
}

node bin/mvirt.js info >/dev/null || fail "mvirt cannot reach mvirtd"
echo "host: $(uname -r), $(nproc) CPUs"
for b in $backends; do
  echo "$b: $(node bin/mvirt.js info --json | node -e '
    const i = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const b = i.backends.find((x) => x.name === process.argv[1]);
    if (!b) return console.log("unknown backend");
    const ch = b.capabilities?.channels ?? [];
    console.log(`${b.available ? "available" : "UNAVAILABLE: " + b.reason}, ${b.version ?? "?"}, agent channels ${ch.join(" ")}${ch[0] === "vsock" ? "" : " (NO VSOCK: see mvirtd.log)"}`);
  ' "$b")"
  vm="smoke-${b%%-*}"
  step "create" node bin/mvirt.js vm create "$vm" --backend "$b" --image "$image" --network none --kind service
  step "boot → ready (vsock agent)" node bin/mvirt.js vm start "$vm"
  step "job: uname -r" node bin/mvirt.js run --vm "$vm" -- uname -r
  step "pause" node bin/mvirt.js vm pause "$vm"
  step "resume" node bin/mvirt.js vm resume "$vm"
  step "suspend (state saved)" node bin/mvirt.js vm suspend "$vm"
  step "start from saved state" node bin/mvirt.js vm start "$vm"
  step "job after the restore" node bin/mvirt.js run --vm "$vm" -- cat /proc/uptime
  step "stop" node bin/mvirt.js vm stop "$vm"
done
echo "kvm-smoke: ok"
