#!/bin/sh
# A hostile job for the µOS (busybox sh only), driven by hostile-guest.ts.
#
#   sh hostile-guest.sh main     run by the job: takes the agent channel over
#                                (or floods the console, or only spins), and
#                                restores the agent
#   sh hostile-guest.sh flood P  the flood itself on port P, in its own session
#
# Taking over: busybox init respawns /usr/libexec/mvirt/agent-run whenever it
# exits, and it runs mvirt-agent. SIGSTOP on the wrapper keeps it from
# exiting (so nothing is respawned), SIGKILL on the agent frees the
# virtio-serial port (one opener at a time), and this script opens it and
# speaks MQTT as the agent would (the host sees a new session on the same
# channel). Afterwards SIGKILL on the wrapper makes init start a fresh agent.
#
# Everything the host must not trust is precomputed on the host as printf
# formats (octal escapes, so environment strings hold binary MQTT packets):
#   H_MODE     log | qos2 | hello | output | console | spin (the control:
#              the log flood's loop writing to /dev/null, the agent untouched)
#   H_SECONDS  how long to flood
#   H_CONNECT  the CONNECT packet; H_HELLO the hello sent right after it
#   H_A, H_B   each flooded packet is H_A, a big-endian counter of H_W bytes
#              (0, 2 or 4), H_B, then H_PAYLOAD zero bytes (from a file)
#   H_START    first counter value; H_WRAP: after it the counter restarts at 1
#   H_LINE     console mode: the line written to the serial console
#   H_LOG      where this script reports (the host reads it afterwards):
#              the flood's progress every 5 s and its total
# A session the host closes (refused, or the channel recycled) is begun
# again: CONNECT and hello, as a real agent would after a reconnect.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
LOG=${H_LOG:-/tmp/hostile.log}
COUNT=/tmp/hostile.count
EOF_MARK=/tmp/hostile.eof
say() { echo "hostile: $*" >>"$LOG"; }

flood() {
  port=$1
  exec 3<>"$port" || exit 3
  # Octal escape of every byte value: o65='\101'.
  i=0
  while [ $i -lt 256 ]; do
    eval "o$i='\\$(((i >> 6) & 7))$(((i >> 3) & 7))$((i & 7))'"
    i=$((i + 1))
  done
  payload=
  # The count is written every 16 packets, every one when they are big.
  every=15
  if [ "${H_PAYLOAD:-0}" -gt 0 ]; then
    head -c "$H_PAYLOAD" /dev/zero >/tmp/hostile.payload
    payload=/tmp/hostile.payload
    every=0
  fi
  n=${H_START:-0}
  sent=0
  sessions=0
  trap 'echo "$sent $sessions" >$COUNT; exit 0' TERM
  session() {
    rm -f "$EOF_MARK"
    # Blocks while the host end is away (a virtio port write waits for it).
    printf "$H_CONNECT" >&3 || return 1
    # Drain what the broker sends (CONNACK, PUBACK, PUBREC …); EOF = the host
    # closed the channel.
    (cat <&3 >/dev/null 2>&1; : >"$EOF_MARK") &
    printf "$H_HELLO" >&3
    sessions=$((sessions + 1))
  }
  session
  while :; do
    [ -e "$EOF_MARK" ] && session
    case ${H_W:-0} in
      2) eval "c=\$o$(((n >> 8) & 255))\$o$((n & 255))" ;;
      4) eval "c=\$o$(((n >> 24) & 255))\$o$(((n >> 16) & 255))\$o$(((n >> 8) & 255))\$o$((n & 255))" ;;
      *) c= ;;
    esac
    printf "$H_A$c$H_B" >&3
    [ -n "$payload" ] && cat "$payload" >&3
    n=$((n + 1))
    [ "${H_WRAP:-0}" -gt 0 ] && [ $n -gt "$H_WRAP" ] && n=1
    sent=$((sent + 1))
    [ $((sent & every)) -eq 0 ] && echo "$sent $sessions" >$COUNT
  done
}

main() {
  exec </dev/null >"$LOG" 2>&1
  trap '' HUP PIPE
  D=${H_SECONDS:-30}
  say "mode=$H_MODE seconds=$D uptime=$(cut -d' ' -f1 /proc/uptime)"

  if [ "$H_MODE" = spin ]; then
    # As busy as a flood, for the guest's vCPU and its QEMU; nothing reaches mvirtd.
    (while :; do printf "$H_A$H_B"; done >/dev/null) &
    pid=$!
    sleep "$D"
    kill -9 $pid
    say "spin done uptime=$(cut -d' ' -f1 /proc/uptime)"
    return 0
  fi
  if [ "$H_MODE" = console ]; then
    yes "$H_LINE" >/dev/ttyS0 &
    pid=$!
    sleep "$D"
    kill -9 $pid
    say "console flood done uptime=$(cut -d' ' -f1 /proc/uptime)"
    return 0
  fi

  port=
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = mvirt.agent ] && port=/dev/${p##*/}
  done
  [ -n "$port" ] || {
    say "no mvirt.agent port"
    return 1
  }
  wrapper=
  agent=
  for p in /proc/[0-9]*; do
    c=
    read -r c <"$p/comm" 2>/dev/null
    case $c in
      agent-run) wrapper="$wrapper ${p#/proc/}" ;;
      mvirt-agent) agent="$agent ${p#/proc/}" ;;
    esac
  done
  [ -n "$wrapper" ] && [ -n "$agent" ] || {
    say "agent not found (wrapper:$wrapper agent:$agent)"
    return 1
  }
  kill -STOP $wrapper
  kill -KILL $agent
  # The port is free once the agent's descriptor is gone (it is a zombie
  # under the stopped wrapper by then).
  i=0
  until (exec 3<>"$port") 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 500 ]; then
      say "port $port still busy"
      kill -KILL $wrapper
      return 1
    fi
    usleep 20000
  done
  say "took over $port (agent$agent, wrapper$wrapper stopped)"
  rm -f "$COUNT" "$EOF_MARK"
  # Its own session, so that one signal ends it and every child holding the port.
  setsid sh "$0" flood "$port" &
  fpid=$!
  # The flood's progress every 5 s (its count is written every 16 packets).
  t=0
  while [ $((t + 5)) -le "$D" ]; do
    sleep 5
    t=$((t + 5))
    read -r sent sessions <"$COUNT" 2>/dev/null
    say "after ${t} s: sent=${sent:-0} sessions=${sessions:-0}"
  done
  [ "$t" -lt "$D" ] && sleep $((D - t))
  kill -TERM -"$fpid" 2>/dev/null
  usleep 500000
  kill -KILL -"$fpid" 2>/dev/null
  # Nothing of the flood may hold the port when the agent comes back.
  i=0
  until (exec 3<>"$port") 2>/dev/null || [ $i -gt 250 ]; do
    i=$((i + 1))
    usleep 20000
  done
  read -r sent sessions <"$COUNT" 2>/dev/null
  say "flood done sent=${sent:-0} sessions=${sessions:-0} uptime=$(cut -d' ' -f1 /proc/uptime)"
  # init respawns the wrapper, which starts a fresh agent.
  kill -KILL $wrapper
  say "agent restored"
}

case $1 in
  flood) flood "$2" ;;
  *) main ;;
esac
