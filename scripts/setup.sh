#!/usr/bin/env bash
# First contact on a fresh Debian 12 machine: install what is missing, build the
# default µOS image, start mvirtd on loopback and boot a VM to ready.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

say "installing dependencies"
bash scripts/install-deps.sh

say "building mvirtd, mvirt and the guest agent"
npm run --silent build

if [ "$(id -u)" = 0 ]; then DATA=${MVIRT_DATA_DIR:-/var/lib/mvirt}; else DATA=${MVIRT_DATA_DIR:-$HOME/.local/share/mvirt}; fi
mkdir -p "$DATA"

# Loopback is not an identity: mvirtd's TCP, WebSocket and HTTP listeners
# always ask for a login. An admin credential for the installing user, in a
# file only that user can read; the CLI finds it by itself.
CRED=${MVIRT_CREDENTIALS:-${XDG_CONFIG_HOME:-$HOME/.config}/mvirt/credentials.json}
say "admin credential for $(id -un): $CRED"
node --import tsx host/cli/setup-admin.ts "$DATA/users.json" "$CRED" mqtt://127.0.0.1:1883 "$(id -un)"

say "building the default µOS image into $DATA/images (cached after the first time)"
node bin/mvirt.js image build images/recipes/default.json --data-dir "$DATA"

if node bin/mvirt.js info --timeout 3 >/dev/null 2>&1; then
  say "mvirtd is already running"
else
  say "starting mvirtd on 127.0.0.1:1883, dashboard on http://127.0.0.1:8180/ (log: $DATA/mvirtd.log)"
  # --allow-anonymous: only over the unix socket $DATA/mvirt.sock (mode 0660).
  nohup node bin/mvirtd.js --data-dir "$DATA" --listen 127.0.0.1:1883 --http 127.0.0.1:8180 \
    --users "$DATA/users.json" --allow-anonymous \
    >>"$DATA/mvirtd.log" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    node bin/mvirt.js info --timeout 3 >/dev/null 2>&1 && break
    sleep 1
  done
fi
node bin/mvirt.js info

say "creating and booting the VM 'hello' (under TCG this takes a little while)"
node bin/mvirt.js vm get hello >/dev/null 2>&1 || node bin/mvirt.js vm create hello
state=$(node bin/mvirt.js vm get hello --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).state))')
case "$state" in
  ready | busy | running) ;;
  *) node bin/mvirt.js vm start hello ;;
esac
node bin/mvirt.js vm ls

say "running a job in a fresh microVM: mvirt run -- uname -a"
node bin/mvirt.js run -- uname -a

cat >&2 <<MSG

mvirt is running. Try:
  open http://127.0.0.1:8180/ (the dashboard; /metrics for Prometheus): log in as
    $(id -un) with the password in $CRED
  node bin/mvirt.js top
  node bin/mvirt.js vm ls
  node bin/mvirt.js run --vm hello -- cat /proc/cpuinfo
  mosquitto_sub --unix $DATA/mvirt.sock -t 'mvirt/+/vm/+/state' -v
  node bin/mvirt.js vm stop hello
MSG
