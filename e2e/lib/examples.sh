# shellcheck shell=bash
# Applies an example from examples/ to the local cluster, as a user would with
# `kubectl apply --server-side -k examples/NAME`, but with the local registry in place of the
# public ones: the build arguments REGISTRY (docker.io) and DISTROLESS (gcr.io/distroless)
# point at $STAGECOACH_REGISTRY, GO_VERSION at the golang image e2e/images made, and push
# targets at registry.example.com go to $STAGECOACH_REGISTRY. Used by e2e/examples and
# e2e/quickstart.
#
# The caller sets STAGECOACH_REGISTRY (from `e2e/cluster env`) and sources base-images.sh
# (for golang_tag); serve and get use K=(kubectl -n NS) and NS.

apply_example() { # dir namespace [imagebuild name: only that one of the example's builds]
  local dir=$1 ns=$2 only=${3:-} manifests go
  if [[ -f $dir/kustomization.yaml ]]; then
    manifests=$(kubectl kustomize "$dir") || return 1
  else
    manifests=$(cat "$dir/imagebuild.yaml") || return 1
  fi
  go=$(golang_tag)
  kubectl -n "$ns" create --dry-run=client -o json -f - <<<"$manifests" \
    | jq --arg reg "$STAGECOACH_REGISTRY" --arg go "${go%.*}" --arg only "$only" '
      def local_image: sub("^registry\\.example\\.com"; $reg);
      def localize:
        if .kind != "ImageBuild" then . else
          (.spec.buildArgs //= {})
          | .spec.buildArgs |= with_entries(
              if .key == "REGISTRY" then .value = $reg
              elif .key == "DISTROLESS" then .value = ($reg + "/distroless")
              elif .key == "GO_VERSION" then .value = $go
              else . end)
          | if .spec.image then .spec.image |= local_image else . end
          | if .spec.targets then .spec.targets |= map(if .image then .image |= local_image else . end) else . end
        end;
      {apiVersion: "v1", kind: "List", items: ((if .kind == "List" then .items else [.] end)
        | map(select($only == "" or .kind != "ImageBuild" or .metadata.name == $only) | localize))}' \
    | kubectl -n "$ns" apply --server-side -f -
}

# Runs an image as a pod that is Ready once port 8080 accepts connections (a TCP probe, so
# no request reaches the app before the test's own).
serve() { # pod image
  "${K[@]}" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, labels: {app: $1}}
spec:
  containers:
    - name: app
      image: $2
      ports: [{containerPort: 8080}]
      readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
EOF
  "${K[@]}" wait --for=condition=Ready "pod/$1" --timeout=120s >/dev/null \
    || { echo "pod $1 ($2) is not ready:"; "${K[@]}" get pod "$1" -o yaml | sed -n '/^status:/,$p'; "${K[@]}" logs "$1" | tail; return 1; }
}

# An HTTP GET to a pod's port 8080 through the API server's proxy.
get() { # pod path
  kubectl get --raw "/api/v1/namespaces/$NS/pods/$1:8080/proxy$2"
}
