# shellcheck shell=bash
# What the end-to-end check scripts (e2e/operator, e2e/examples) share: one line per check
# with its time, the failure's output indented under it, and facts read from the cluster.
#
# The caller sets K=(kubectl -n NS) and passed=0 failed=0.
#
# Pipes end in `grep … >/dev/null`, never `grep -q`: -q stops reading at the first match,
# and with pipefail the writer's SIGPIPE would fail the pipeline.

# A check stops at its first failing command: without this, bash clears -e in the command
# substitution check() runs it in, and a check would pass on its last command alone.
shopt -s inherit_errexit

say() { printf '%s\n' "$*"; }

check() { # name function
  local name=$1 start=$SECONDS out rc
  # STAGECOACH_E2E_ONLY=<regex>: only the checks whose function matches, and setup.
  if [[ -n ${STAGECOACH_E2E_ONLY:-} && $2 != setup && ! $2 =~ $STAGECOACH_E2E_ONLY ]]; then
    return 0
  fi
  # Not `out=$(…) || rc=$?`: bash ignores -e in everything a `||` list runs, functions and
  # command substitutions included, and a check would run on past its first failure. Here
  # the substitution turns -e on for itself while the caller's is off.
  set +e
  out=$(set -e; "$2" 2>&1)
  rc=$?
  set -e
  if ((rc == 0)); then
    passed=$((passed + 1)); say "ok   $name ($((SECONDS - start))s)"
  else
    failed=$((failed + 1)); say "FAIL $name ($((SECONDS - start))s)"
    while IFS= read -r line; do say "     | $line"; done <<<"$out"
  fi
}

# Every stage pod's container (start, finish) in seconds since the epoch, one per line.
stage_intervals() { # build
  "${K[@]}" get pods -l "stagecoach.dev/build=$1,stagecoach.dev/stage" -o json | jq -r '.items[]
    | .status.containerStatuses[0].state.terminated
    | "\(.startedAt | fromdateiso8601) \(.finishedAt | fromdateiso8601)"'
}

# The most intervals (from stage_intervals) that share a moment.
max_overlap() {
  python3 -c '
import sys
events = []
for line in sys.stdin:
    start, end = map(int, line.split())
    events += [(start, 1), (end, -1)]
# An end and a start in the same second do not overlap: ends first.
now = best = 0
for _, step in sorted(events):
    now += step
    best = max(best, now)
print(best)'
}

# An ImageBuild with an inline Dockerfile; extra spec lines (YAML, 2-space indent) follow.
build() { # name dockerfile [extra spec lines]
  local name=$1 dockerfile=$2 extra=${3:-}
  "${K[@]}" apply -f - <<EOF
apiVersion: stagecoach.dev/v1alpha1
kind: ImageBuild
metadata: {name: $name}
spec:
  source:
    inline:
      dockerfile: $(printf '%s' "$dockerfile" | jq -Rs .)
$extra
EOF
}

# The Succeeded condition's status and reason, as "Status/Reason".
verdict() { # name
  "${K[@]}" get imagebuild "$1" \
    -o jsonpath='{.status.conditions[?(@.type=="Succeeded")].status}/{.status.conditions[?(@.type=="Succeeded")].reason}'
}

# Waits for the build's verdict (Reconciling turns False with it), then fails unless it is
# the wanted one, showing the status. Bounded by $TIMEOUT (default 240s).
settled() { # name Status/Reason
  "${K[@]}" wait --for=condition=Reconciling=False "imagebuild/$1" --timeout="${TIMEOUT:-240s}" >/dev/null || true
  local got
  got=$(verdict "$1")
  [[ $got == "$2" ]] && return 0
  echo "imagebuild/$1: wanted $2, has '$got'"
  "${K[@]}" get imagebuild "$1" -o yaml | sed -n '/^status:/,$p'
  return 1
}

no_pods() { # name
  local pods
  pods=$("${K[@]}" get pods -l "stagecoach.dev/build=$1" -o name)
  [[ -z $pods ]] || { echo "pods were created for $1: $pods"; return 1; }
}

message_has() { # name substring
  local message
  message=$("${K[@]}" get imagebuild "$1" -o jsonpath='{.status.conditions[?(@.type=="Succeeded")].message}')
  grep -qF -- "$2" <<<"$message" || { echo "imagebuild/$1: message lacks '$2': $message"; return 1; }
}

# The host directory of the namespace's cache claim (the local provisioner's hostPath).
cache_dir() {
  local pv
  pv=$("${K[@]}" get pvc stagecoach-cache -o jsonpath='{.spec.volumeName}')
  kubectl get pv "$pv" -o jsonpath='{.spec.hostPath.path}'
}

# Every blob of the namespace's cache hashes to its name, and every key is JSON naming a
# blob that exists (read on the host path).
cache_is_sound() {
  local dir bad=0 blob name key
  dir=$(cache_dir)
  [[ -d $dir/blobs/sha256 ]] || { echo "no cache at $dir"; return 1; }
  for blob in "$dir"/blobs/sha256/*; do
    name=$(basename "$blob")
    [[ $name == .* ]] && continue
    [[ $(sha256sum "$blob" | cut -d' ' -f1) == "$name" ]] || { echo "blob $name does not hash to its name"; bad=1; }
  done
  for key in "$dir"/keys/*; do
    [[ $(basename "$key") == .* ]] && continue
    jq -e . "$key" >/dev/null 2>&1 || { echo "key $(basename "$key") is not JSON"; bad=1; continue; }
    name=$(jq -r '.layer.digest // empty' "$key")
    [[ -z $name || -f $dir/blobs/sha256/${name#sha256:} ]] || { echo "key $(basename "$key") names a missing blob $name"; bad=1; }
  done
  echo "$(find "$dir/blobs/sha256" -type f | wc -l) blobs and $(find "$dir/keys" -type f | wc -l) keys checked" >&2
  ((bad == 0))
}

# A flag of the installed controller (--NAME=VALUE), or DEFAULT when it has none.
installed_flag() { # name default
  kubectl -n stagecoach-system get deployment stagecoach-controller -o json \
    | jq -r --arg f "--$1=" --arg d "$2" '.spec.template.spec.containers[0].args | map(select(startswith($f))) | .[0] // ($f + $d) | ltrimstr($f)'
}

# The installed controller's cap on a build's running stage pods (--max-parallel-pods).
max_parallel_pods() { installed_flag max-parallel-pods 8; }

# What a script that reinstalls the operator keeps of the installed one: the pod cap, the
# context limit, the collection interval, the registry timeout and the cache claims' access
# mode, as the environment of `e2e/cluster install` (the chart values given are added after
# them, so they win).
reinstall_env() { # [more chart values]
  echo "STAGECOACH_MAX_PARALLEL_PODS=$(max_parallel_pods)"
  echo "STAGECOACH_HELM_SET=builds.maxContextSize=$(installed_flag max-context-size 4Gi) builds.cache.gc.interval=$(installed_flag cache-gc-interval 1h) builds.unreachableRegistryTimeout=$(installed_flag unreachable-registry-timeout 2m) builds.cache.accessMode=$(installed_flag cache-access-mode ReadWriteOnce)${1:+ $1}"
}
