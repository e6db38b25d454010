#!/bin/sh
# A hostile job for the µOS (busybox sh only), driven by hostile-guest.ts.
#
#   sh hostile-guest.sh main     run by the job: takes the agent channel over
#                                (or floods the console, or only spins), and
#                                restores the agent
#   sh hostile-guest.sh flood P  the flood itself on port P, in its own session
#   sh hostile-guest.sh acl P    the ACL attack on port P, in its own session
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
# H_MODE=acl (hostile-acl.ts) opens one MQTT session after another instead,
# each the bytes the host built, and keeps what comes back:
#   stdin      every session's bytes, one after another, as base64
#   H_PLAN     a line per session: name, hold (s), offset and length in
#              them, then a count of bytes to await from the host and the
#              length of what to write once they came (0 0: nothing)
#   H_SECONDS  bound of the whole attack
# Each session's received bytes go to $ACL_DIR/NNN.in, and the log says who
# closed it: the host (EOF), or the guest (DISCONNECT once its hold is over).
# A session the host closes (refused, or the channel recycled) is begun
# again: CONNECT and hello, as a real agent would after a reconnect.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
LOG=${H_LOG:-/tmp/hostile.log}
COUNT=/tmp/hostile.count
EOF_MARK=/tmp/hostile.eof
ACL_DIR=/tmp/hostile-acl
ACL_BIN=/tmp/hostile-acl.bin
say() { echo "hostile: $*" >>"$LOG"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

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

# A reader of the port into file $1, started in the background ($r); returns
# once it is blocked in read(2). Were the host to close the session and come
# back before the reader read, it would wait on the next host end instead of
# seeing the end of this one (a port read returns EOF only while the host end
# is away), so nothing is sent before it waits.
reader() {
  cat <&3 >>"$1" &
  r=$!
  i=0
  while [ $i -lt 500 ]; do
    s=
    read -r _ _ s _ <"/proc/$r/stat" 2>/dev/null
    case $s in S | '') return 0 ;; esac
    i=$((i + 1))
    usleep 10000
  done
}

# Wait at most $2 s for the reader $1 to end. 0: the host closed the session
# (EOF); otherwise the reader was killed.
ended() {
  # Without the port: a timer must not hold it when the agent comes back.
  (
    sleep "$2"
    kill "$1"
  ) 3>&- >/dev/null 2>&1 &
  k=$!
  wait "$1"
  st=$?
  kill "$k" 2>/dev/null
  return $st
}

# $2 bytes of the attack from offset $1 to the port.
send() {
  tail -c +$(($1 + 1)) "$ACL_BIN" 2>/dev/null | head -c "$2" >&3
}

# One session: $1 number, $2 name, $3 hold (s), $4 offset, $5 length, $6
# bytes to await, $7 length of what follows them.
acl_session() {
  out=$ACL_DIR/$1.in
  : >"$out"
  # Blocks while the host end is away (a port write waits for it). PINGREQ:
  # a fresh host end skips what precedes a CONNECT, and the session still
  # open before the first one (the killed agent's) answers it.
  printf '\300\000' >&3
  if [ "$7" -gt 0 ]; then
    send "$4" "$5"
    # What the host answers first (CONNACK, PUBACK), a byte at a time so
    # that nothing more is taken; it keeps the session open meanwhile.
    timeout 10 dd bs=1 count="$6" <&3 >>"$out" 2>/dev/null
    reader "$out"
    send $(($4 + $5)) "$7"
  else
    reader "$out"
    send "$4" "$5"
  fi
  by=host
  if ! ended "$r" "$3"; then
    by=guest
    reader "$out"
    printf '\340\000' >&3
    ended "$r" 30 || by=nobody
  fi
  say "session $1 $2 closed-by=$by bytes=$(wc -c <"$out") uptime=$(uptime_s)"
}

acl() {
  exec 3<>"$1" || exit 3
  n=0
  echo "$H_PLAN" | while read -r name hold off len want more; do
    n=$((n + 1))
    acl_session "$(printf %03d $n)" "$name" "$hold" "$off" "$len" "$want" "$more"
  done
  say "acl done uptime=$(uptime_s)"
}

# Sets $port, $wrapper and $agent, stops the wrapper and kills the agent;
# returns once the port can be opened.
takeover() {
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
}

# The port back to the agent: init respawns the wrapper, which starts a fresh one.
restore() {
  # Nothing of the attack may hold the port when the agent comes back.
  i=0
  until (exec 3<>"$port") 2>/dev/null || [ $i -gt 250 ]; do
    i=$((i + 1))
    usleep 20000
  done
  kill -KILL $wrapper
  say "agent restored"
}

main() {
  if [ "$H_MODE" = acl ]; then
    rm -rf "$ACL_DIR" "$ACL_BIN"
    mkdir -p "$ACL_DIR"
    base64 -d >"$ACL_BIN" || return 1
  fi
  # Appending, as say() and every child do: a descriptor at its own offset
  # would write over their lines.
  : >"$LOG"
  exec </dev/null >>"$LOG" 2>&1
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

  takeover || return 1
  if [ "$H_MODE" = acl ]; then
    say "acl: $(echo "$H_PLAN" | wc -l) sessions, $(wc -c <"$ACL_BIN") bytes"
    # Its own session, as the flood's: one signal ends all of it.
    setsid sh "$0" acl "$port" &
    apid=$!
    (
      sleep "$D"
      kill -KILL -"$apid"
    ) >/dev/null 2>&1 &
    w=$!
    wait "$apid"
    kill "$w" 2>/dev/null
    kill -KILL -"$apid" 2>/dev/null
    restore
    return 0
  fi
  rm -f "$COUNT" "$EOF_MARK"
  # The flood's count. Its writer truncates, then writes: an empty read is a
  # write under way (a reading of 0 mid-flood once looked like a stall), so
  # read again.
  count() {
    sent=
    i=0
    while [ -z "$sent" ] && [ $i -lt 50 ]; do
      [ $i -gt 0 ] && usleep 2000
      read -r sent sessions <"$COUNT" 2>/dev/null
      i=$((i + 1))
    done
  }
  # Its own session, so that one signal ends it and every child holding the port.
  setsid sh "$0" flood "$port" &
  fpid=$!
  # The flood's progress every 5 s (its count is written every 16 packets).
  t=0
  while [ $((t + 5)) -le "$D" ]; do
    sleep 5
    t=$((t + 5))
    count
    say "after ${t} s: sent=${sent:-0} sessions=${sessions:-0}"
  done
  [ "$t" -lt "$D" ] && sleep $((D - t))
  kill -TERM -"$fpid" 2>/dev/null
  usleep 500000
  kill -KILL -"$fpid" 2>/dev/null
  count
  say "flood done sent=${sent:-0} sessions=${sessions:-0} uptime=$(cut -d' ' -f1 /proc/uptime)"
  restore
}

case $1 in
  flood) flood "$2" ;;
  acl) acl "$2" ;;
  *) main ;;
esac
