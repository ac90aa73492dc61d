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
#   node      library/node:18               the debian layer plus Debian's nodejs (apt in a chroot)
#   nginx     library/nginx:1.22            the debian layer plus Debian's nginx-light
#   node-runtime  distroless/nodejs18-debian12:nonroot   no shell, no package manager: node at
#                 /nodejs/bin/node (the entrypoint), the files it loads, CA certificates, user
#                 nonroot (65532); laid out like gcr.io/distroless/nodejs18-debian12 so
#                 Dockerfiles written for that image work with a registry argument changed

declare -F log >/dev/null || log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
declare -F die >/dev/null || die() { log "ERROR: $*"; exit 1; }

layer_from_tar() { # out.tar.gz tar-arguments...: deterministic, so an unchanged tree keeps its digest
  local out=$1; shift
  # One pass over the tree yields both the compressed blob and the uncompressed digest.
  local fifo=$out.fifo gz
  rm -f "$fifo" && mkfifo "$fifo"
  gzip -1 -n <"$fifo" >"$out.tmp" &
  gz=$!
  tar -cf - --sort=name --mtime=@0 --numeric-owner "$@" | tee "$fifo" | sha256sum | cut -d' ' -f1 >"$out.diffid"
  wait "$gz" || die "could not compress the layer $out"
  rm -f "$fifo"
  mv "$out.tmp" "$out"
}

layer_from_dir() { layer_from_tar "$2" --owner=0 --group=0 -C "$1" .; } # dir out.tar.gz, all owned by root

layer_from_list() { layer_from_tar "$3" --no-recursion -C "$1" -T "$2"; } # dir list out.tar.gz, owners kept

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

# Installs Debian packages with apt in a chroot of the minimal root filesystem, leaving the
# tree in <dir>/rootfs and the files the install added or changed (by ctime against a marker)
# as the layer <dir>/packages.tar.gz. apt removes no file of the base, so no whiteouts.
debian_with_packages() { # dir package...
  local dir=$1; shift
  [[ $(id -u) == 0 ]] || die "installing packages in a chroot must run as root"
  build_debian_base
  local root=$dir/rootfs
  rm -rf --one-file-system "$dir" && mkdir -p "$root"
  tar -xzf "$(debian_base_layer)" -C "$root"
  cp /etc/resolv.conf "$root/etc/resolv.conf.stagecoach"
  touch "$root/.marker"
  mv "$root/etc/resolv.conf.stagecoach" "$root/etc/resolv.conf"
  # apt needs a few device nodes (the base layer has none); they are removed again below.
  local node name major minor
  for node in null:1:3 zero:1:5 random:1:8 urandom:1:9; do
    IFS=: read -r name major minor <<<"$node"
    mknod -m 666 "$root/dev/$name" c "$major" "$minor"
  done
  # No service starts in a chroot.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
  log "installing $* from Debian $DEBIAN_SUITE in a chroot (log: $LOGS/images.log)"
  {
    chroot "$root" apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends "$@"
  } >>"$LOGS/images.log" 2>&1 || die "apt-get install $* failed (log: $LOGS/images.log)"
  [[ -z $(mounts_under "$root") ]] || die "apt left mounts under $root"
  rm -rf "$root/usr/sbin/policy-rc.d" "${root:?}"/dev/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/log/apt "$root"/var/log/dpkg.log
  : >"$root/etc/resolv.conf"
}

# The packages layer of debian_with_packages, from its marker; call after any edits.
packages_layer() { # dir
  local dir=$1 root=$1/rootfs
  (cd "$root" && find . -cnewer .marker ! -path ./.marker ! -path ./etc/resolv.conf ! -path ./dev | sed 's|^\./||' | sort) \
    >"$dir/packages.list"
  layer_from_list "$root" "$dir/packages.list" "$dir/packages.tar.gz"
}

node_image_dir() { echo "$IMAGES/node-$DEBIAN_SUITE"; }

build_node_image() {
  local dir; dir=$(node_image_dir)
  [[ -f $dir/oci/index.json ]] && return 0
  debian_with_packages "$dir" nodejs ca-certificates
  packages_layer "$dir"
  local base; base=$(debian_base_layer)
  python3 "$E2E_DIR/lib/oci-image.py" --out "$dir/oci" --name library/node:18 \
    --layer "$base" --diff-id "sha256:$(cat "$base.diffid")" \
    --layer "$dir/packages.tar.gz" --diff-id "sha256:$(cat "$dir/packages.tar.gz.diffid")" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd '["node"]'
}

nginx_image_dir() { echo "$IMAGES/nginx-$DEBIAN_SUITE"; }

build_nginx_image() {
  local dir; dir=$(nginx_image_dir)
  [[ -f $dir/oci/index.json ]] && return 0
  debian_with_packages "$dir" nginx-light
  local root=$dir/rootfs
  # Like the nginx image users know: one server on port 80 for /usr/share/nginx/html in
  # conf.d, logs to the container's output.
  rm -f "$root/etc/nginx/sites-enabled/default"
  mkdir -p "$root/usr/share/nginx/html" "$root/etc/nginx/conf.d"
  printf '<!doctype html>\n<title>nginx</title>\n<p>nginx from Debian packages</p>\n' \
    >"$root/usr/share/nginx/html/index.html"
  cat >"$root/etc/nginx/conf.d/default.conf" <<'CONF'
server {
    listen 80;
    root /usr/share/nginx/html;
    index index.html;
}
CONF
  ln -sf /dev/stdout "$root/var/log/nginx/access.log"
  ln -sf /dev/stderr "$root/var/log/nginx/error.log"
  packages_layer "$dir"
  local base; base=$(debian_base_layer)
  python3 "$E2E_DIR/lib/oci-image.py" --out "$dir/oci" --name library/nginx:1.22 \
    --layer "$base" --diff-id "sha256:$(cat "$base.diffid")" \
    --layer "$dir/packages.tar.gz" --diff-id "sha256:$(cat "$dir/packages.tar.gz.diffid")" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --expose 80/tcp --cmd '["nginx", "-g", "daemon off;"]'
}

node_runtime_image_dir() { echo "$IMAGES/node-runtime-$DEBIAN_SUITE"; }

# From the node image's tree: node, every library the loader maps for it (ldd in the
# chroot), the dynamic loader, CA certificates, passwd/group with root and nonroot (65532),
# /tmp. Library paths are kept as ldd names them, under /usr with /lib and /lib64 links
# (merged /usr).
build_node_runtime_image() {
  local dir; dir=$(node_runtime_image_dir)
  [[ -f $dir/oci/index.json ]] && return 0
  local node_root; node_root=$(node_image_dir)/rootfs
  [[ -x $node_root/usr/bin/node ]] || { rm -rf "$(node_image_dir)"; build_node_image; }
  log "making the distroless-like nodejs18 image from the node image's files"
  local root=$dir/rootfs
  rm -rf "$dir" && mkdir -p "$root/nodejs/bin" "$root/usr/lib" "$root/usr/lib64" "$root/etc/ssl/certs" "$root/home/nonroot"
  mkdir -m 1777 "$root/tmp"
  ln -s usr/lib "$root/lib" && ln -s usr/lib64 "$root/lib64"
  cp "$node_root/usr/bin/node" "$root/nodejs/bin/node"
  local lib dest
  while read -r lib; do
    dest=${lib#/usr}; dest=/usr$dest
    mkdir -p "$root$(dirname "$dest")"
    cp -L "$node_root$lib" "$root$dest"
  done < <(chroot "$node_root" ldd /usr/bin/node | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
  # Debian's node loads a few builtins from files instead of its binary; libnode names them.
  local file
  while read -r file; do
    [[ -f $node_root$file ]] || die "$file, which libnode loads, is not in the node image"
    mkdir -p "$root$(dirname "$file")" && cp -L "$node_root$file" "$root$file"
  done < <(grep -aoE '/usr/share/nodejs/[-a-z/._]+\.js' "$node_root"/usr/lib/x86_64-linux-gnu/libnode.so.* | sort -u)
  cp -L "$node_root/etc/ssl/certs/ca-certificates.crt" "$root/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  chown 65532:65532 "$root/home/nonroot"
  chroot "$root" /nodejs/bin/node -e 'require("http"); fetch; process.exit(0)' || die "node does not run in the node-runtime tree"
  layer_from_dir_owned "$root" "$dir/layer.tar.gz"
  python3 "$E2E_DIR/lib/oci-image.py" --out "$dir/oci" --name distroless/nodejs18-debian12:nonroot \
    --layer "$dir/layer.tar.gz" --diff-id "sha256:$(cat "$dir/layer.tar.gz.diffid")" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --user 65532 --workdir /home/nonroot --entrypoint '["/nodejs/bin/node"]'
}

layer_from_dir_owned() { # dir out.tar.gz: every path, owners kept
  local dir=$1 out=$2
  (cd "$dir" && find . ! -path . | sed 's|^\./||' | sort) >"$out.list"
  layer_from_list "$dir" "$out.list" "$out"
  rm -f "$out.list"
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

push_node_image() {
  image_exists library/node:18 && return 0
  build_node_image
  push_image "$(node_image_dir)/oci" library/node:18 library/node:latest
}

push_nginx_image() {
  image_exists library/nginx:1.22 && return 0
  build_nginx_image
  push_image "$(nginx_image_dir)/oci" library/nginx:1.22 library/nginx:latest
}

push_node_runtime_image() {
  image_exists distroless/nodejs18-debian12:nonroot && return 0
  build_node_runtime_image
  push_image "$(node_runtime_image_dir)/oci" distroless/nodejs18-debian12:nonroot
}

# What e2e/cluster up pushes into its registry.
push_base_images() {
  push_busybox_image
  push_golang_image
}
