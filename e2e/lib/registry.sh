# shellcheck shell=bash
# A throwaway image registry: Debian's docker-registry (distribution 2.8) on 127.0.0.1 with
# a free port, its storage and log under a directory of the caller's choosing. Plain HTTP.
#
#   source e2e/lib/registry.sh
#   addr=$(registry_start "$dir")    # prints 127.0.0.1:PORT once GET /v2/ answers
#   ...
#   registry_stop "$dir"             # kills it (the directory is left to the caller)
#
# Or as a command: e2e/lib/registry.sh start DIR | stop DIR.
# STAGECOACH_DOCKER_REGISTRY names another binary (as in operator/oci/tests/registry.rs).

_registry_bin() { echo "${STAGECOACH_DOCKER_REGISTRY:-$(command -v docker-registry || echo /usr/bin/docker-registry)}"; }

_registry_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Polls GET /v2/ until it answers, the process exits, or the deadline (seconds) passes.
_registry_wait() { # pid addr deadline-seconds
  local pid=$1 addr=$2 deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    [[ -e /proc/$pid ]] || return 1
    curl -fsS --max-time 2 "http://$addr/v2/" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  return 1
}

registry_start() { # dir -> prints 127.0.0.1:PORT
  local dir=$1 bin try port addr pid
  bin=$(_registry_bin)
  [[ -x $bin ]] || { echo "registry_start: docker-registry is not installed (apt-get install docker-registry)" >&2; return 1; }
  mkdir -p "$dir/data"
  dir=$(cd "$dir" && pwd)
  # The port is free when asked for and could be taken before the registry binds it; a few
  # tries make that race harmless.
  for try in 1 2 3; do
    port=$(_registry_free_port) || return 1
    addr=127.0.0.1:$port
    cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $addr
  secret: stagecoach-throwaway-registry
YAML
    # Not holding the caller's stdout: registry_start runs inside $(...).
    "$bin" serve "$dir/config.yml" </dev/null >>"$dir/registry.log" 2>&1 &
    pid=$!
    echo "$pid $(readlink -f "$bin")" >"$dir/registry.pid"
    if _registry_wait "$pid" "$addr" 20; then
      echo "$addr" >"$dir/address"
      echo "$addr"
      return 0
    fi
    registry_stop "$dir"
    echo "registry_start: try $try: no answer from http://$addr/v2/" >&2
  done
  echo "registry_start: docker-registry did not start; end of $dir/registry.log:" >&2
  tail -20 "$dir/registry.log" >&2
  return 1
}

registry_stop() { # dir
  local f=$1/registry.pid pid exe i
  [[ -f $f ]] || return 0
  read -r pid exe <"$f" || true
  # Only the process started here: same PID and still the same binary.
  if [[ -n $pid && -e /proc/$pid && $(readlink "/proc/$pid/exe" 2>/dev/null) == "$exe" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f" "$1/address"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case ${1:-} in
    start) [[ -n ${2:-} ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }; registry_start "$2" ;;
    stop) [[ -n ${2:-} ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }; registry_stop "$2" ;;
    *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
  esac
fi
