#!/usr/bin/env bash
# A second Docker engine for the end-to-end tests and benchmarks of "remote" engines: a dockerd
# that shares no network with the host's default engine. It lives in its own network namespace,
# reached from the host over a veth pair on 10.213.INDEX.0/24 and only over mutual TLS, with its
# own data root, exec root (so its own managed containerd) and parent cgroup, so `stop` can find
# and remove everything it made even after the daemon was SIGKILLed.
#
#   test-engine.sh start NAME [INDEX]   start (after a full `stop`); stdout gets exactly
#                                       url=tcp://10.213.INDEX.2:2376, certs=DIR, pid=PID
#   test-engine.sh stop NAME            kill and remove everything; exit 0 when nothing is left
#   test-engine.sh kill-daemon NAME     SIGKILL dockerd and its containerd only (an engine that
#                                       goes away); containers keep running until `stop`
#   test-engine.sh partition NAME       drop every packet in the engine's netns: the engine goes
#                                       silent, no connection is reset (a network outage)
#
# NAME: 1-8 of [A-Za-z0-9_-] (the host's veth is dv-NAME, and interface names stop at 15 bytes).
# INDEX: 1..200, default 1. Runs as root. Never touches the default engine (/var/run/docker.sock):
# everything here is named after NAME or lives under /var/tmp/deskvm-engine-NAME.
#
# Progress goes to stderr; the three lines above are the only stdout.
set -uo pipefail # no -e: `stop` must carry on past every failure; `start` checks each step

log() { printf 'test-engine: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}
usage() { die "usage: $0 start NAME [INDEX] | stop NAME | kill-daemon NAME | partition NAME"; }

CMD=${1:-}
NAME=${2:-}
INDEX=${3:-1}
[[ $CMD == start || $CMD == stop || $CMD == kill-daemon || $CMD == partition ]] || usage
[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,7}$ ]] || die "NAME must be 1-8 characters of [A-Za-z0-9_-] (got '$NAME')"
[[ $INDEX =~ ^[0-9]{1,3}$ ]] && ((10#$INDEX >= 1 && 10#$INDEX <= 200)) || die "INDEX must be 1..200 (got '$INDEX')"
INDEX=$((10#$INDEX))
[[ $(id -u) == 0 ]] || die "run as root (network namespaces, dockerd)"

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}
D=/var/tmp/deskvm-engine-$NAME # short: D/exec holds containerd's unix sockets (108-byte limit)
NS=deskvm-$NAME
VETH=dv-$NAME
CG=deskvm-engine-$NAME
IP=10.213.$INDEX.2
URL=tcp://$IP:2376
DOCKERD=${DOCKERD:-/usr/sbin/dockerd}
[[ -x $DOCKERD ]] || DOCKERD=$(command -v dockerd || echo /usr/sbin/dockerd)

# --- processes ---------------------------------------------------------------------------------

# True when PID exists and is not a zombie (a killed process whose parent has not reaped it yet
# holds nothing any more).
alive() {
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

# "PID COMM" of every process whose command line names this engine's exec root or data root:
# dockerd, its containerd, the containerd shims (-address D/exec/...) and any runc (--root
# D/exec/...). Builtins only: one fork per process on a busy host would be slow.
engine_procs() {
  local f p a comm
  for f in /proc/[0-9]*/cmdline; do
    p=${f#/proc/}
    p=${p%/cmdline}
    [[ $p == "$$" || $p == "$BASHPID" ]] && continue
    { mapfile -d '' -t a <"$f"; } 2>/dev/null || continue
    ((${#a[@]})) || continue
    [[ "${a[*]}" == *"$D/exec"* || "${a[*]}" == *"$D/data"* ]] || continue
    { read -r comm <"/proc/$p/comm"; } 2>/dev/null || continue
    echo "$p $comm"
  done
  # The pidfile, in case dockerd's command line could not be read.
  if { read -r p <"$D/dockerd.pid"; } 2>/dev/null && [[ $p =~ ^[0-9]+$ ]] &&
    { read -r comm <"/proc/$p/comm"; } 2>/dev/null && [[ $comm == dockerd ]]; then
    echo "$p $comm"
  fi
}

# Every cgroup directory named $CG: under each v1 controller (and the v1 "unified" and
# name=systemd hierarchies), or once under a v2 /sys/fs/cgroup.
cgroup_dirs() {
  find /sys/fs/cgroup -maxdepth 4 -type d -name "$CG" -prune 2>/dev/null
}

# PIDs in this engine's cgroups (the containers, under --cgroup-parent=/$CG).
cgroup_pids() {
  local f p c dir re=$'/'"$CG"$'(/|\n|$)'
  for f in /proc/[0-9]*/cgroup; do
    p=${f#/proc/}
    p=${p%/cgroup}
    c=
    { read -r -d '' c <"$f"; } 2>/dev/null
    [[ -n $c && $c =~ $re ]] && echo "$p"
  done
  while read -r dir; do
    find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null
  done < <(cgroup_dirs)
}

# A frozen task (docker pause, freezer) cannot act on SIGKILL, so thaw first; v2 can also kill a
# whole subtree at once.
thaw_and_kill_cgroups() {
  local dir sub
  while read -r dir; do
    while read -r sub; do
      [[ -e $sub/freezer.state ]] && echo THAWED >"$sub/freezer.state" 2>/dev/null
      [[ -e $sub/cgroup.freeze ]] && echo 0 >"$sub/cgroup.freeze" 2>/dev/null
    done < <(find "$dir" -type d 2>/dev/null)
    [[ -e $dir/cgroup.kill ]] && echo 1 >"$dir/cgroup.kill" 2>/dev/null
  done < <(cgroup_dirs)
}

# The containerd shims' sockets live in the shared /run/containerd/s, named
# sha256(address/namespace/id) (containerd 1.5+ shim.SocketAddress); a SIGKILLed shim leaves its
# socket behind, so note them while the shims' command lines can still be read.
shim_sockets() {
  local p comm a i addr ns id
  while read -r p comm; do
    [[ $comm == containerd-shim* ]] || continue
    { mapfile -d '' -t a <"/proc/$p/cmdline"; } 2>/dev/null || continue
    addr= ns= id=
    for ((i = 0; i + 1 < ${#a[@]}; i++)); do
      case ${a[i]} in
      -address) addr=${a[i + 1]} ;;
      -namespace) ns=${a[i + 1]} ;;
      -id) id=${a[i + 1]} ;;
      esac
    done
    [[ -n $addr && -n $ns && -n $id ]] || continue
    addr=${addr#unix://}
    printf '%s' "$addr/$ns/$id" | sha256sum | { read -r h _ && echo "/run/containerd/s/$h"; }
  done < <(engine_procs)
}

# SIGKILL the engine's processes, daemons first (so nothing restarts a container in between), then
# everything in its cgroups and network namespace; rescan until none is alive, for up to 10 s.
kill_everything() {
  local deadline=$((SECONDS + 10)) p comm daemons others left
  while :; do
    daemons=() others=()
    while read -r p comm; do alive "$p" && daemons+=("$p"); done < <(engine_procs | sort -u)
    thaw_and_kill_cgroups
    while read -r p; do
      [[ $p =~ ^[0-9]+$ && $p != "$$" ]] && alive "$p" && others+=("$p")
    done < <({ cgroup_pids; ip netns pids "$NS" 2>/dev/null; } | sort -un)
    left=("${daemons[@]}" "${others[@]}")
    ((${#left[@]})) || return 0
    if ((SECONDS >= deadline)); then
      log "still alive after 10 s: ${left[*]}"
      return 1
    fi
    kill -9 "${left[@]}" 2>/dev/null
    sleep 0.2
  done
}

# --- stop ----------------------------------------------------------------------------------------

mounts_under_d() {
  local dev mp rest
  while read -r dev mp rest; do
    [[ $mp == "$D" || $mp == "$D"/* ]] || continue
    [[ $mp == *\\* ]] && mp=$(printf '%b' "$mp") # /proc/mounts escapes space, tab, \n, \ as \0NN
    printf '%s\n' "$mp"
  done </proc/self/mounts
}

unmount_all() {
  local pass i mps
  for pass in 1 2 3 4 5; do
    mapfile -t mps < <(mounts_under_d)
    ((${#mps[@]})) || return 0
    for ((i = ${#mps[@]} - 1; i >= 0; i--)); do # innermost (latest) first
      umount "${mps[i]}" 2>/dev/null || umount -l "${mps[i]}" 2>/dev/null
    done
  done
  mapfile -t mps < <(mounts_under_d)
  ((${#mps[@]})) || return 0
  log "still mounted: ${mps[*]}"
  return 1
}

remove_cgroups() {
  local try dir dirs
  for try in $(seq 20); do
    mapfile -t dirs < <(cgroup_dirs)
    ((${#dirs[@]})) || return 0
    for dir in "${dirs[@]}"; do
      find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null # deepest first
    done
    ((${#dirs[@]})) && sleep 0.1 # a memory cgroup can stay busy for a moment after its last task
  done
  mapfile -t dirs < <(cgroup_dirs)
  ((${#dirs[@]})) || return 0
  log "cgroups left (ignored): ${dirs[*]}"
  return 0
}

stop_engine() {
  local ok=0 s sockets
  mapfile -t sockets < <(shim_sockets)
  kill_everything || ok=1
  for s in "${sockets[@]}"; do rm -f "$s"; done
  unmount_all || ok=1
  remove_cgroups
  # The veth first: deleting one end removes both at once, while a deleted namespace's devices
  # go away asynchronously (and the next `start` wants the name back).
  if ip link show dev "$VETH" &>/dev/null; then
    ip link del dev "$VETH" 2>/dev/null || { log "cannot delete $VETH"; ok=1; }
  fi
  if [[ -e /run/netns/$NS ]]; then
    ip netns del "$NS" 2>/dev/null || { umount -l "/run/netns/$NS" 2>/dev/null; rm -f "/run/netns/$NS"; }
    [[ -e /run/netns/$NS ]] && { log "cannot delete netns $NS"; ok=1; }
  fi
  if [[ -e $D ]]; then
    # --one-file-system: whatever is still mounted under D is not ours to empty.
    rm -rf --one-file-system "$D" 2>/dev/null
    [[ -e $D ]] && { log "cannot remove $D"; ok=1; }
  fi
  return $ok
}

# --- kill-daemon ---------------------------------------------------------------------------------

kill_daemon() {
  local p comm pids=() deadline=$((SECONDS + 10))
  while read -r p comm; do
    [[ $comm == dockerd || $comm == containerd ]] && alive "$p" && pids+=("$p")
  done < <(engine_procs | sort -u)
  if ((${#pids[@]} == 0)); then
    log "no dockerd/containerd running for $NAME"
    return 0
  fi
  log "SIGKILL ${pids[*]}"
  kill -9 "${pids[@]}" 2>/dev/null
  for p in "${pids[@]}"; do
    while alive "$p"; do
      ((SECONDS < deadline)) || {
        log "$p still alive"
        return 1
      }
      sleep 0.1
    done
  done
}

# --- start ---------------------------------------------------------------------------------------

make_certs() {
  local t=$D/ca
  mkdir -p "$t" "$D/server" "$D/client" || return 1
  cat >"$t/openssl.cnf" <<EOF || return 1
[req]
distinguished_name = dn
prompt = no
[dn]
CN = deskvm test engine
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:$IP,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  # EC P-256, keys as PKCS#8 ("BEGIN PRIVATE KEY"): what Go, the docker CLI and rustls all read.
  local genkey=(openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out)
  "${genkey[@]}" "$t/key.pem" &&
    openssl req -x509 -new -config "$t/openssl.cnf" -extensions ca -key "$t/key.pem" -sha256 \
      -days 2 -subj "/CN=deskvm test engine $NAME CA" -out "$t/ca.pem" || return 1
  local who cn
  for who in server client; do
    [[ $who == server ]] && cn=$IP || cn="deskvm test client"
    "${genkey[@]}" "$D/$who/key.pem" &&
      openssl req -new -config "$t/openssl.cnf" -key "$D/$who/key.pem" -subj "/CN=$cn" \
        -out "$t/$who.csr" &&
      openssl x509 -req -in "$t/$who.csr" -CA "$t/ca.pem" -CAkey "$t/key.pem" \
        -set_serial "0x$(openssl rand -hex 8)" -days 2 -sha256 \
        -extfile "$t/openssl.cnf" -extensions "$who" -out "$D/$who/cert.pem" &&
      cp "$t/ca.pem" "$D/$who/ca.pem" || return 1
  done
}

make_netns() {
  ip netns add "$NS" &&
    ip link add "$VETH" type veth peer name eth0 netns "$NS" &&
    ip addr add "10.213.$INDEX.1/24" dev "$VETH" &&
    ip link set "$VETH" up &&
    ip -n "$NS" link set lo up &&
    ip -n "$NS" addr add "$IP/24" dev eth0 &&
    ip -n "$NS" link set eth0 up
}

docker_cli() {
  env -u DOCKER_HOST -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH \
    docker --tlsverify --tlscacert "$D/client/ca.pem" --tlscert "$D/client/cert.pem" \
    --tlskey "$D/client/key.pem" -H "$URL" "$@"
}

STARTED=0
start_engine() {
  # A start that fails half-way leaves nothing behind (no caller has a handle to stop it with).
  trap '[[ $STARTED == 1 ]] || { log "start failed; cleaning up"; stop_engine; }' EXIT

  log "cleaning up any earlier $NAME"
  stop_engine || die "could not clean up an earlier engine $NAME"
  umask 077
  mkdir -p "$D/data" "$D/exec" || die "cannot make $D"
  make_certs >/dev/null 2>"$D/openssl.log" || {
    cat "$D/openssl.log" >&2
    die "openssl failed"
  }
  make_netns || die "cannot set up netns $NS / veth $VETH"
  # An empty config file, so a daemon.json made for the default engine (hosts, bridge, ...)
  # cannot leak into this one.
  echo '{}' >"$D/daemon.json"

  # nsenter --net, not `ip netns exec`: the latter also unshares the mount namespace and remounts
  # /sys, which hides /sys/fs/cgroup from dockerd (and would hide its mounts from `stop`).
  # All of dockerd's flags below exist in this dockerd (20.10 from Debian; 28 has them too).
  # setsid + nohup + every fd redirected: the daemon outlives this script and holds none of its
  # caller's pipes (a caller reading our stdout to EOF would wait forever otherwise).
  log "starting dockerd in netns $NS ($URL)"
  (
    cd / &&
      exec setsid nohup env -u NOTIFY_SOCKET nsenter --net="/run/netns/$NS" -- "$DOCKERD" \
        --config-file "$D/daemon.json" \
        --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/dockerd.pid" \
        -H "$URL" --tlsverify --tlscacert "$D/server/ca.pem" \
        --tlscert "$D/server/cert.pem" --tlskey "$D/server/key.pem" \
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
        --cgroup-parent="/$CG"
  ) </dev/null >>"$D/dockerd.log" 2>&1 &
  local launched=$! deadline=$((SECONDS + 60)) pid=
  until docker_cli info --format '{{.ServerVersion}}' &>/dev/null; do
    if ! alive "$launched" || ((SECONDS >= deadline)); then
      alive "$launched" && log "dockerd did not answer on $URL within 60 s" || log "dockerd exited"
      tail -n 40 "$D/dockerd.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  { read -r pid <"$D/dockerd.pid"; } 2>/dev/null
  [[ $pid =~ ^[0-9]+$ ]] || pid=$launched
  STARTED=1
  log "engine $NAME up: dockerd $pid"
  printf 'url=%s\ncerts=%s\npid=%s\n' "$URL" "$D/client" "$pid"
}

case $CMD in
start) start_engine ;;
stop)
  stop_engine && log "engine $NAME stopped" || die "engine $NAME: cleanup incomplete"
  ;;
kill-daemon) kill_daemon ;;
partition)
  # Dropped inside the engine's netns (the host's tables are not touched): packets vanish, as
  # in a real outage, so connections stall and new ones hang instead of failing at once.
  ip netns exec "$NS" iptables -w -I INPUT 1 -j DROP &&
    ip netns exec "$NS" iptables -w -I OUTPUT 1 -j DROP ||
    die "cannot drop $NS's traffic (iptables)"
  ;;
esac
