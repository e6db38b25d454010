#!/usr/bin/env bash
# Build the mvirt microVM kernel from Debian's linux-source-6.1:
#   make tinyconfig  +  kernel-config/fragments/*.config  (merge_config.sh)
#   -> check (kernel-config/check.ts) -> make bzImage vmlinux
# The result is cached under $MVIRT_CACHE_DIR (default ~/.cache/mvirt)/kernel/<key>/
# where <key> hashes the fragments, the source package version and this
# script's recipe version, so an unchanged config is never rebuilt.
#
# Usage: kernel-config/build.sh [--cached-path] [--force] [-jN]
#   --cached-path  print the cache folder if the kernel is already built
#                  (exit 0), else exit 3; builds nothing. Used by images/.
#   --force        rebuild even if cached.
# Last line on stdout: the cache folder (bzImage, vmlinux, config, meta.json).
# Progress goes to stderr.
set -euo pipefail

# Bump when the build procedure changes in a way that changes the output.
RECIPE_VERSION=1
SRC_TAR=/usr/src/linux-source-6.1.tar.xz
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE=${MVIRT_CACHE_DIR:-$HOME/.cache/mvirt}
JOBS=-j$(nproc)
MODE=build
for a in "$@"; do
  case $a in
    --cached-path) MODE=path ;;
    --force) MODE=force ;;
    -j*) JOBS=$a ;;
    -h | --help)
      sed -n '2,14p' "$0"
      exit 0
      ;;
    *)
      echo "build.sh: unknown argument '$a' (see --help)" >&2
      exit 2
      ;;
  esac
done

[ -r "$SRC_TAR" ] || {
  echo "build.sh: $SRC_TAR missing: apt-get install linux-source-6.1" >&2
  exit 1
}
SRC_VERSION=$(dpkg-query -W -f='${Version}' linux-source-6.1)
FRAGMENTS=$(LC_ALL=C ls "$HERE"/fragments/*.config)
KEY=$(
  {
    echo "recipe $RECIPE_VERSION source linux-source-6.1 $SRC_VERSION"
    for f in $FRAGMENTS; do
      echo "== $(basename "$f")"
      cat "$f"
    done
  } | sha256sum | cut -c1-16
)
OUT=$CACHE/kernel/$KEY

if [ "$MODE" = path ]; then
  if [ -f "$OUT/meta.json" ]; then
    echo "$OUT"
    exit 0
  fi
  exit 3
fi
mkdir -p "$CACHE/kernel"
# One build of a key at a time on this machine (two clones running `npm test`,
# say): the second waits for the first, then finds its result in the cache.
exec 9>"$CACHE/kernel/lock-$KEY"
if ! flock -n 9; then
  echo "kernel: another build of $KEY is running; waiting for it" >&2
  flock 9
fi
if [ "$MODE" = build ] && [ -f "$OUT/meta.json" ]; then
  echo "kernel: cached $OUT" >&2
  echo "$OUT"
  exit 0
fi

T0=$(date +%s)
N=5
step() { echo "[$1/$N] $2  (+$(($(date +%s) - T0))s)" >&2; }

WORK=$CACHE/kernel/work-$KEY
SRC=$CACHE/kernel/src-$SRC_VERSION

step 1 "extract linux-source-6.1 $SRC_VERSION"
if [ ! -f "$SRC/.mvirt-extracted" ]; then
  rm -rf "$SRC" "$SRC.tmp"
  mkdir -p "$SRC.tmp"
  tar -xJf "$SRC_TAR" -C "$SRC.tmp" --strip-components=1
  touch "$SRC.tmp/.mvirt-extracted"
  mv "$SRC.tmp" "$SRC"
fi

step 2 "tinyconfig + fragments"
rm -rf "$WORK"
mkdir -p "$WORK"
# Fixed build identity: the same fragments give the same kernel bytes.
export KBUILD_BUILD_TIMESTAMP='1970-01-01 00:00:00 UTC'
export KBUILD_BUILD_USER=mvirt KBUILD_BUILD_HOST=mvirt KBUILD_BUILD_VERSION=1
make -s -C "$SRC" O="$WORK" tinyconfig >"$WORK/config.log" 2>&1
# -m: merge only; olddefconfig then resolves dependencies once.
(cd "$WORK" && "$SRC/scripts/kconfig/merge_config.sh" -m -O "$WORK" "$WORK/.config" $FRAGMENTS) >>"$WORK/config.log" 2>&1
make -s -C "$SRC" O="$WORK" olddefconfig >>"$WORK/config.log" 2>&1

step 3 "check .config"
(cd "$ROOT" && node --import tsx "$HERE/check.ts" "$WORK/.config" $FRAGMENTS) >&2 || {
  echo "build.sh: the merged .config lacks what mvirt needs (see above; log $WORK/config.log)" >&2
  exit 1
}

step 4 "make $JOBS bzImage vmlinux (log: $WORK/build.log)"
# nice: the machine is shared; the build should yield to interactive work.
nice -n 10 make -C "$SRC" O="$WORK" "$JOBS" bzImage >"$WORK/build.log" 2>&1 &
MAKE_PID=$!
while kill -0 "$MAKE_PID" 2>/dev/null; do
  sleep 30
  kill -0 "$MAKE_PID" 2>/dev/null || break
  echo "      ... $(grep -c '^  CC' "$WORK/build.log" || true) objects compiled  (+$(($(date +%s) - T0))s)" >&2
done
if ! wait "$MAKE_PID"; then
  tail -30 "$WORK/build.log" >&2
  echo "build.sh: kernel build failed (log: $WORK/build.log)" >&2
  exit 1
fi

step 5 "store in $OUT"
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
cp "$WORK/arch/x86/boot/bzImage" "$OUT.tmp/bzImage"
cp "$WORK/vmlinux" "$OUT.tmp/vmlinux"
cp "$WORK/.config" "$OUT.tmp/config"
RELEASE=$(cat "$WORK/include/config/kernel.release")
SECS=$(($(date +%s) - T0))
cat >"$OUT.tmp/meta.json" <<EOF
{
  "key": "$KEY",
  "source": "linux-source-6.1",
  "sourceVersion": "$SRC_VERSION",
  "release": "$RELEASE",
  "recipeVersion": $RECIPE_VERSION,
  "buildSeconds": $SECS,
  "jobs": "$JOBS",
  "bzImageSha256": "$(sha256sum "$OUT.tmp/bzImage" | cut -d' ' -f1)"
}
EOF
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
rm -rf "$WORK"
echo "kernel: built $RELEASE in ${SECS}s -> $OUT" >&2
echo "$OUT"
