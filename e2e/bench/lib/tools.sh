# shellcheck shell=bash
# shellcheck disable=SC2154 # reg, CACHE, E2E_DIR and BENCH_DIR are the caller's.
# What the in-cluster benchmarks share: the images of the builders Stagecoach is compared
# with, made here from the executables e2e/bench/build-tools builds, and pushed to the
# cluster's registry once per version; and a buildkitd pod.
# The caller sets reg (the cluster's registry), CACHE, E2E_DIR and BENCH_DIR.

# kaniko's executor and CA certificates under /kaniko, as kaniko's own image has them.
# Prints the image.
kaniko_image() {
  local tools
  tools=$("$BENCH_DIR/build-tools")
  local kaniko_dir version image dir diff_id
  kaniko_dir=$(grep /kaniko- <<<"$tools")
  version=${kaniko_dir##*/kaniko-}
  image=$reg/bench/kaniko:$version
  if ! skopeo inspect --raw --tls-verify=false "docker://$image" >/dev/null 2>&1; then
    dir=$CACHE/images/kaniko-$version
    rm -rf "$dir" && mkdir -p "$dir/rootfs/kaniko/ssl/certs" "$dir/rootfs/etc" "$dir/rootfs/tmp"
    cp "$kaniko_dir/executor" "$dir/rootfs/kaniko/executor"
    cp /etc/ssl/certs/ca-certificates.crt "$dir/rootfs/kaniko/ssl/certs/"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$dir/rootfs/etc/passwd"
    tar -C "$dir/rootfs" -cf "$dir/layer.tar" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner .
    diff_id=$(sha256sum "$dir/layer.tar" | cut -d' ' -f1)
    gzip -1 -n "$dir/layer.tar"
    python3 "$E2E_DIR/lib/oci-image.py" --out "$dir/oci" --name "bench/kaniko:$version" \
      --layer "$dir/layer.tar.gz" --diff-id "sha256:$diff_id" --entrypoint '["/kaniko/executor"]' \
      --env PATH=/kaniko:/bin --env SSL_CERT_DIR=/kaniko/ssl/certs --env HOME=/root
    skopeo copy -q --dest-tls-verify=false "oci:$dir/oci" "docker://$image"
  fi
  echo "$image"
}

# buildkitd, buildctl and a static runc on the busybox base image, with a configuration for
# the cluster's registry over plain HTTP. Prints the image.
buildkit_image() {
  local tools
  tools=$("$BENCH_DIR/build-tools")
  local buildkit_dir runc_dir version image busybox dir diff_id
  buildkit_dir=$(grep /buildkit- <<<"$tools")
  runc_dir=$(grep /runc-static- <<<"$tools")
  version=${buildkit_dir##*/buildkit-}
  image=$reg/bench/buildkit:$version
  if ! skopeo inspect --raw --tls-verify=false "docker://$image" >/dev/null 2>&1; then
    busybox=$CACHE/images/busybox/rootfs
    [[ -d $busybox ]] || { echo "no busybox root at $busybox (run e2e/cluster up)" >&2; return 1; }
    dir=$CACHE/images/buildkit-$version
    rm -rf "$dir" && mkdir -p "$dir"
    cp -a "$busybox" "$dir/rootfs"
    mkdir -p "$dir/rootfs/usr/bin" "$dir/rootfs/etc/buildkit" "$dir/rootfs/etc/ssl/certs" \
      "$dir/rootfs/var/lib/buildkit" "$dir/rootfs/run"
    cp "$buildkit_dir/buildkitd" "$buildkit_dir/buildctl" "$runc_dir/runc" "$dir/rootfs/usr/bin/"
    cp /etc/ssl/certs/ca-certificates.crt "$dir/rootfs/etc/ssl/certs/"
    cat >"$dir/rootfs/etc/buildkit/buildkitd.toml" <<TOML
[worker.oci]
  enabled = true
  snapshotter = "overlayfs"
  networkMode = "host"
[worker.containerd]
  enabled = false
[registry."$reg"]
  http = true
  insecure = true
TOML
    tar -C "$dir/rootfs" -cf "$dir/layer.tar" --sort=name --mtime=@0 --numeric-owner .
    diff_id=$(sha256sum "$dir/layer.tar" | cut -d' ' -f1)
    gzip -1 -n "$dir/layer.tar"
    python3 "$E2E_DIR/lib/oci-image.py" --out "$dir/oci" --name "bench/buildkit:$version" \
      --layer "$dir/layer.tar.gz" --diff-id "sha256:$diff_id" --entrypoint '["/usr/bin/buildkitd"]' \
      --env PATH=/usr/bin:/bin
    skopeo copy -q --dest-tls-verify=false "oci:$dir/oci" "docker://$image"
  fi
  echo "$image"
}

# A privileged buildkitd pod named NAME in NS, with VOLUME (a pod volume, as YAML flow) at
# /context; returns once its socket answers.
buildkit_daemon() { # ns name image volume
  kubectl -n "$1" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $2}
spec:
  containers:
  - name: buildkitd
    image: $3
    args: [--addr, unix:///run/buildkit/buildkitd.sock]
    securityContext: {privileged: true}
    volumeMounts: [{name: context, mountPath: /context}, {name: state, mountPath: /var/lib/buildkit}]
  volumes:
  - $4
  - {name: state, emptyDir: {}}
YAML
  kubectl -n "$1" wait --for=condition=Ready "pod/$2" --timeout=120s >/dev/null
  # Ready is the container running; the socket comes a moment later.
  until kubectl -n "$1" exec "$2" -- buildctl --addr unix:///run/buildkit/buildkitd.sock debug workers >/dev/null 2>&1; do
    sleep 0.2
  done
}
