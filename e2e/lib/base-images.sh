# shellcheck shell=bash
# Base images made from Debian packages and this machine's Go: nothing is pulled.
# Sourced by e2e/cluster and e2e/images.
#
# The caller sets:
#   E2E_DIR          the e2e directory (for lib/oci-image.py)
#   IMAGES           the image cache ($STAGECOACH_CACHE/images)
#   LOGS             where images.log goes
#   TARGET_REGISTRY  HOST:PORT that push_* and image_exists talk to (plain HTTP)
#   DEBIAN_SUITE     from e2e/versions.env
# and may define log and die (defaults below).
#
# Images (cached under $IMAGES, each an OCI layout in <dir>/oci):
#   busybox   library/busybox:latest        busybox-static, /bin symlinks, passwd/group
#   debian    library/debian:$DEBIAN_SUITE  debootstrap --variant=minbase, one layer
#   golang    library/golang:<go version>   the debian layer plus this machine's GOROOT

declare -F log >/dev/null || log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
declare -F die >/dev/null || die() { log "ERROR: $*"; exit 1; }

layer_from_dir() { # dir out.tar.gz: deterministic, so an unchanged tree keeps its digest
  local dir=$1 out=$2
  # One pass over the tree yields both the compressed blob and the uncompressed digest.
  local fifo=$out.fifo gz
  rm -f "$fifo" && mkfifo "$fifo"
  gzip -1 -n <"$fifo" >"$out.tmp" &
  gz=$!
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir" -cf - . \
    | tee "$fifo" | sha256sum | cut -d' ' -f1 >"$out.diffid"
  wait "$gz" || die "could not compress the layer from $dir"
  rm -f "$fifo"
  mv "$out.tmp" "$out"
}

push_image() { # oci-dir name:tag...
  local dir=$1; shift
  local ref
  for ref in "$@"; do
    skopeo copy -q --dest-tls-verify=false "oci:$dir" "docker://$TARGET_REGISTRY/$ref" >>"$LOGS/images.log" 2>&1 \
      || die "pushing $ref failed (log: $LOGS/images.log)"
  done
}

image_exists() { skopeo inspect --raw --tls-verify=false "docker://$TARGET_REGISTRY/$1" >/dev/null 2>&1; }

build_busybox_image() {
  local dir=$IMAGES/busybox
  [[ -f $dir/oci/index.json ]] && return 0
  log "making the busybox image from busybox-static"
  rm -rf "$dir" && mkdir -p "$dir/rootfs/bin" "$dir/rootfs/etc" "$dir/rootfs/root"
  mkdir -m 1777 "$dir/rootfs/tmp"
  cp /bin/busybox "$dir/rootfs/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] || ln -s busybox "$dir/rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$dir/rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/rootfs/etc/group"
  layer_from_dir "$dir/rootfs" "$dir/layer.tar.gz"
  python3 "$E2E_DIR/lib/oci-image.py" --out "$dir/oci" --name library/busybox:latest \
    --layer "$dir/layer.tar.gz" --diff-id "sha256:$(cat "$dir/layer.tar.gz.diffid")" \
    --env PATH=/bin --cmd '["sh"]'
}

golang_tag() {
  if [[ -n ${GOLANG_IMAGE_TAG:-} ]]; then echo "$GOLANG_IMAGE_TAG"; return; fi
  local v; v=$(go env GOVERSION); echo "${v#go}"
}

# debootstrap uses the mirror apt already uses (or STAGECOACH_DEBIAN_MIRROR).
debian_mirror() {
  if [[ -n ${STAGECOACH_DEBIAN_MIRROR:-} ]]; then echo "$STAGECOACH_DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
  if [[ -z $uri ]]; then
    uri=$(awk '/^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*\/debian\/?$/) { print $i; exit } }' /etc/apt/sources.list 2>/dev/null)
  fi
  [[ -n $uri ]] || die "no Debian mirror in apt's sources; set STAGECOACH_DEBIAN_MIRROR"
  echo "$uri"
}

mounts_under() { awk -v p="$1" '$5 == p || index($5, p "/") == 1 {print $5}' /proc/self/mountinfo; }

# The minimal Debian root filesystem as one gzip layer (with its .diffid): the debian
# image's only layer and the golang image's first.
debian_base_layer() { echo "$IMAGES/debian-$DEBIAN_SUITE-minbase.tar.gz"; }

build_debian_base() {
  local base; base=$(debian_base_layer)
  [[ -f $base ]] && return 0
  [[ $(id -u) == 0 ]] || die "debootstrap must run as root"
  log "debootstrapping a minimal Debian $DEBIAN_SUITE root filesystem (a few minutes; log: $LOGS/images.log)"
  local root=$IMAGES/debian-rootfs.tmp
  rm -rf --one-file-system "$root"
  local mirror; mirror=$(debian_mirror)
  debootstrap --variant=minbase "$DEBIAN_SUITE" "$root" "$mirror" >>"$LOGS/images.log" 2>&1 \
    || die "debootstrap failed (log: $LOGS/images.log)"
  [[ -z $(mounts_under "$root") ]] || die "debootstrap left mounts under $root"
  # Device nodes come from the runtime; package caches are dead weight in an image.
  rm -rf "${root:?}"/dev/* "${root:?}"/var/cache/apt/archives/*.deb "${root:?}"/var/lib/apt/lists/*
  layer_from_dir "$root" "$base"
  rm -rf --one-file-system "$root"
}

debian_image_dir() { echo "$IMAGES/debian-$DEBIAN_SUITE"; }

build_debian_image() {
  local dir; dir=$(debian_image_dir)
  [[ -f $dir/oci/index.json ]] && return 0
  build_debian_base
  local base; base=$(debian_base_layer)
  log "making the debian:$DEBIAN_SUITE image"
  python3 "$E2E_DIR/lib/oci-image.py" --out "$dir/oci" --name "library/debian:$DEBIAN_SUITE" \
    --layer "$base" --diff-id "sha256:$(cat "$base.diffid")" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd '["bash"]'
}

golang_image_dir() { echo "$IMAGES/golang-$(golang_tag)-$DEBIAN_SUITE"; }

build_golang_image() {
  local tag; tag=$(golang_tag)
  local dir; dir=$(golang_image_dir)
  [[ -f $dir/oci/index.json ]] && return 0
  build_debian_base
  local base; base=$(debian_base_layer)
  log "making the golang:$tag image (Go from $(go env GOROOT))"
  rm -rf "$dir" && mkdir -p "$dir/go/usr/local" "$dir/go/go/bin" "$dir/go/go/src"
  cp -a "$(go env GOROOT)" "$dir/go/usr/local/go"
  chmod 1777 "$dir/go/go" "$dir/go/go/bin" "$dir/go/go/src"
  layer_from_dir "$dir/go" "$dir/go.tar.gz"
  rm -rf "$dir/go"
  # GOTOOLCHAIN=local: there is nothing to download a toolchain from. CGO is off because
  # the image has no C compiler and the point is static binaries.
  python3 "$E2E_DIR/lib/oci-image.py" --out "$dir/oci" --name "library/golang:$tag" \
    --layer "$base" --diff-id "sha256:$(cat "$base.diffid")" \
    --layer "$dir/go.tar.gz" --diff-id "sha256:$(cat "$dir/go.tar.gz.diffid")" \
    --env PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env GOROOT=/usr/local/go --env GOPATH=/go --env GOTOOLCHAIN=local --env CGO_ENABLED=0 \
    --env GOFLAGS=-buildvcs=false --workdir /go --cmd '["bash"]'
}

# Each push_* makes its image only when the registry lacks it, so a warm registry costs one
# `skopeo inspect` per image.
push_busybox_image() {
  image_exists library/busybox:latest && return 0
  build_busybox_image
  push_image "$IMAGES/busybox/oci" library/busybox:latest
}

push_debian_image() {
  image_exists "library/debian:$DEBIAN_SUITE" && return 0
  build_debian_image
  push_image "$(debian_image_dir)/oci" "library/debian:$DEBIAN_SUITE"
}

push_golang_image() {
  local tag; tag=$(golang_tag)
  # `latest` is pushed last, so it stands for all three tags.
  image_exists "library/golang:latest" && return 0
  build_golang_image
  push_image "$(golang_image_dir)/oci" "library/golang:$tag" "library/golang:${tag%.*}" \
    library/golang:latest
}

# What e2e/cluster up pushes into its registry.
push_base_images() {
  push_busybox_image
  push_golang_image
}
