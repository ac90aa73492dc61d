# shellcheck shell=bash
# Applies an example from examples/ to the local cluster, as a user would with
# `kubectl apply --server-side -k examples/NAME`, but with the local registry in place of the
# public ones: the build arguments REGISTRY (docker.io) and DISTROLESS (gcr.io/distroless)
# point at $STAGECOACH_REGISTRY, GO_VERSION at the golang image e2e/images made, and push
# targets at registry.example.com go to $STAGECOACH_REGISTRY. Used by e2e/examples and
# e2e/quickstart.
#
# The caller sets STAGECOACH_REGISTRY (from `e2e/cluster env`) and sources base-images.sh
# (for golang_tag).

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
