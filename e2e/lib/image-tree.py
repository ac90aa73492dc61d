#!/usr/bin/env python3
"""Print an image's file tree and runtime configuration as normalised JSON, for comparing
images built by different tools (see e2e/lib/image-diff.py and e2e/compare-buildah).

    e2e/lib/image-tree.py LAYOUT_DIR [--ref NAME] [--ignore PATH]... [--ignore-runtime-stubs]
                          [--ignore-label KEY]...

LAYOUT_DIR is an OCI image layout (index.json, blobs/). The image is the index entry whose
org.opencontainers.image.ref.name (or io.containerd.image.name) is NAME, or the only one;
nested indexes are followed to the linux/amd64 manifest. OCI and Docker media types are
read; layers may be gzip, zstd or uncompressed (told apart by their first bytes).

Layers are applied in order with the OCI whiteout rules: `.wh.NAME` deletes NAME of the
layers below, `.wh..wh..opq` in a directory hides everything the layers below put there.
Output, with sorted keys:

  {"config": {Env, Entrypoint, Cmd, WorkingDir, User, ExposedPorts, Labels, Volumes,
              StopSignal, os, architecture},        # empty or null values are left out;
                                                    # Env is sorted (order is no meaning)
   "files": {"/path": {"type": "file"|"dir"|"symlink"|"char"|"block"|"fifo",
                       "mode": "4755", "uid": 0, "gid": 0,
                       file: "size", "sha256", and "link_group" (the first path, in
                             sorted order, of its hard-link group) when hard-linked;
                       symlink: "target"; char/block: "rdev" "MAJOR:MINOR";
                       "xattrs" when there are any}},
   "image": {"manifest", "layers"}}                 # informative: image-diff ignores it

Timestamps and user/group names are not recorded: they differ legitimately between tools.
The root directory itself is not listed.

--ignore PATH drops PATH and everything below it (repeatable).
--ignore-runtime-stubs drops what a RUN step under buildah leaves behind when it is empty:
  the directories /dev, /proc, /sys, /run and the files /etc/hostname, /etc/hosts,
  /etc/resolv.conf (a non-empty one is kept: then it is content).
--ignore-empty PATH drops PATH when it is an empty directory (once what is dropped below it
  is gone) or an empty file (repeatable).
--ignore-label KEY drops a configuration label, e.g. io.buildah.version (repeatable).
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
REF_ANNOTATIONS = ("org.opencontainers.image.ref.name", "io.containerd.image.name")
CONFIG_KEYS = ("Env", "Entrypoint", "Cmd", "WorkingDir", "User", "ExposedPorts", "Labels",
               "Volumes", "StopSignal")
RUNTIME_STUB_DIRS = ("/dev", "/proc", "/sys", "/run")
RUNTIME_STUB_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
WH = ".wh."
OPAQUE = ".wh..wh..opq"


class Fail(Exception):
    pass


class Node:
    """A file system object. Hard links are several names of one Node."""
    __slots__ = ("type", "mode", "uid", "gid", "size", "sha256", "target", "rdev", "xattrs",
                 "children")

    def __init__(self, type_, mode=0o755, uid=0, gid=0):
        self.type = type_
        self.mode, self.uid, self.gid = mode, uid, gid
        self.size = self.sha256 = self.target = self.rdev = None
        self.xattrs = {}
        self.children = {} if type_ == "dir" else None


# ----------------------------------------------------------------------------------------
# The layout.

def blob_path(layout, digest):
    algo, _, hexpart = digest.partition(":")
    path = os.path.join(layout, "blobs", algo, hexpart)
    if not os.path.isfile(path):
        raise Fail(f"blob {digest} is not in {layout}")
    return path


def read_json_blob(layout, digest):
    with open(blob_path(layout, digest), "rb") as f:
        return json.load(f)


def pick_manifest(layout, ref):
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    entries = index.get("manifests") or []
    if ref is not None:
        def matches(d):
            ann = d.get("annotations") or {}
            return any(ann.get(k) in (ref,) or (ann.get(k) or "").endswith(":" + ref)
                       for k in REF_ANNOTATIONS if k in ann)
        chosen = [d for d in entries if matches(d)]
        if not chosen:
            names = [(d.get("annotations") or {}).get(REF_ANNOTATIONS[0]) for d in entries]
            raise Fail(f"no manifest named {ref!r} in {layout}/index.json (names: {names})")
        desc = chosen[0]
    elif len(entries) == 1:
        desc = entries[0]
    else:
        names = [(d.get("annotations") or {}).get(REF_ANNOTATIONS[0]) for d in entries]
        raise Fail(f"{layout}/index.json lists {len(entries)} manifests: pick one with --ref "
                   f"(names: {names})")
    return resolve_manifest(layout, desc)


def resolve_manifest(layout, desc):
    doc = read_json_blob(layout, desc["digest"])
    media = desc.get("mediaType") or doc.get("mediaType")
    if media in INDEX_TYPES or ("manifests" in doc and "layers" not in doc):
        entries = doc.get("manifests") or []
        def plat(d):
            p = d.get("platform") or {}
            return (p.get("os"), p.get("architecture"))
        amd = [d for d in entries if plat(d) == ("linux", "amd64")]
        if amd:
            return resolve_manifest(layout, amd[0])
        if len(entries) == 1:
            return resolve_manifest(layout, entries[0])
        raise Fail(f"index {desc['digest']} has no linux/amd64 manifest")
    if "layers" not in doc or "config" not in doc:
        raise Fail(f"{desc['digest']} is not an image manifest (mediaType {media})")
    return desc["digest"], doc


def open_layer(path):
    """A file object with the layer's uncompressed tar stream, and a cleanup function."""
    f = open(path, "rb")
    magic = f.read(4)
    f.seek(0)
    if magic[:2] == b"\x1f\x8b":
        import gzip
        return gzip.GzipFile(fileobj=f, mode="rb"), f.close
    if magic == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard  # type: ignore
            return zstandard.ZstdDecompressor().stream_reader(f), f.close
        except ImportError:
            pass
        if not shutil.which("zstd"):
            raise Fail("a zstd layer needs the zstd command (apt-get install zstd) or "
                       "python3-zstandard")
        f.close()
        proc = subprocess.Popen(["zstd", "-dcq", "--", path], stdout=subprocess.PIPE)

        def done():
            proc.stdout.close()
            if proc.wait() != 0:
                raise Fail(f"zstd could not decompress {path}")
        return proc.stdout, done
    return f, f.close


# ----------------------------------------------------------------------------------------
# Applying layers.

def split(path):
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Fail(f"layer entry escapes the root: {path!r}")
    return parts


def lookup(root, parts):
    node = root
    for p in parts:
        if node.type != "dir" or p not in node.children:
            return None
        node = node.children[p]
    return node


def parent_dir(root, parts):
    """The directory that holds parts[-1], made (0755, root) where missing, as tar does."""
    node = root
    for p in parts[:-1]:
        child = node.children.get(p)
        if child is None or child.type != "dir":
            child = Node("dir")
            node.children[p] = child
        node = child
    return node


def read_entries(path):
    """The entries of one layer: (TarInfo, sha256 or None), in order."""
    stream, done = open_layer(path)
    out = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for ti in tar:
                digest = None
                if ti.isreg():
                    h = hashlib.sha256()
                    f = tar.extractfile(ti)
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                    digest = h.hexdigest()
                out.append((ti, digest))
    finally:
        done()
    return out


def apply_layer(root, entries):
    # Whiteouts first: they apply to the layers below only, wherever they sit in the tar.
    for ti, _ in entries:
        parts = split(ti.name)
        if not parts:
            continue
        base = parts[-1]
        if base == OPAQUE:
            d = lookup(root, parts[:-1])
            if d is not None and d.type == "dir":
                d.children.clear()
        elif base.startswith(WH + WH):
            continue  # other AUFS metadata (.wh..wh.plnk and the like)
        elif base.startswith(WH):
            d = lookup(root, parts[:-1])
            if d is not None and d.type == "dir":
                d.children.pop(base[len(WH):], None)
    for ti, digest in entries:
        parts = split(ti.name)
        if not parts:
            if ti.isdir():
                root.mode, root.uid, root.gid = ti.mode & 0o7777, ti.uid, ti.gid
            continue
        if parts[-1].startswith(WH):
            continue
        parent = parent_dir(root, parts)
        name = parts[-1]
        existing = parent.children.get(name)
        if ti.islnk():
            target = lookup(root, split(ti.linkname))
            if target is None or target.type == "dir":
                raise Fail(f"hard link {ti.name} -> {ti.linkname}: no such file")
            parent.children[name] = target
            continue
        if ti.isdir():
            if existing is not None and existing.type == "dir":
                node = existing  # a directory entry over a directory keeps its contents
            else:
                node = Node("dir")
                parent.children[name] = node
        else:
            if ti.isreg():
                node = Node("file")
                node.size, node.sha256 = ti.size, digest
            elif ti.issym():
                node = Node("symlink")
                node.target = ti.linkname
            elif ti.ischr() or ti.isblk():
                node = Node("char" if ti.ischr() else "block")
                node.rdev = f"{ti.devmajor}:{ti.devminor}"
            elif ti.isfifo():
                node = Node("fifo")
            else:
                raise Fail(f"unsupported tar entry type {ti.type!r} for {ti.name}")
            parent.children[name] = node
        node.mode, node.uid, node.gid = ti.mode & 0o7777, ti.uid, ti.gid
        node.xattrs = {k[len("SCHILY.xattr."):]: v for k, v in (ti.pax_headers or {}).items()
                       if k.startswith("SCHILY.xattr.")}


# ----------------------------------------------------------------------------------------
# Output.

def walk(node, prefix, out):
    for name in sorted(node.children):
        child = node.children[name]
        path = prefix + "/" + name
        out.append((path, child))
        if child.type == "dir":
            walk(child, path, out)


def describe(root, ignore, runtime_stubs, ignore_empty=()):
    paths = []
    walk(root, "", paths)

    def ignored(path):
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in ignore)

    paths = [(p, n) for p, n in paths if not ignored(p)]
    # Empty directories and files to leave out, deepest first so that a parent left empty
    # by its children's removal goes too.
    candidates = set(ignore_empty)
    if runtime_stubs:
        candidates |= set(RUNTIME_STUB_DIRS) | set(RUNTIME_STUB_FILES)
    kept = dict(paths)
    for p in sorted(candidates, key=lambda x: -x.count("/")):
        n = kept.get(p)
        if n is None:
            continue
        if n.type == "dir" and not any(q.startswith(p + "/") for q in kept):
            del kept[p]
        elif n.type == "file" and n.size == 0:
            del kept[p]
    paths = [(p, n) for p, n in paths if p in kept]

    groups = {}
    for p, n in paths:
        if n.type == "file":
            groups.setdefault(id(n), []).append(p)
    files = {}
    for p, n in paths:
        e = {"type": n.type, "mode": "%04o" % n.mode, "uid": n.uid, "gid": n.gid}
        if n.type == "file":
            e["size"], e["sha256"] = n.size, n.sha256
            group = groups[id(n)]
            if len(group) > 1:
                e["link_group"] = min(group)
        elif n.type == "symlink":
            e["target"] = n.target
        elif n.type in ("char", "block"):
            e["rdev"] = n.rdev
        if n.xattrs:
            e["xattrs"] = {k: v for k, v in sorted(n.xattrs.items())}
        files[p] = e
    return files


def config_subset(config, ignore_labels):
    c = config.get("config") or {}
    out = {}
    for k in CONFIG_KEYS:
        v = c.get(k)
        if k == "Labels" and v:
            v = {lk: lv for lk, lv in v.items() if lk not in ignore_labels}
        if k == "Env" and v:
            # A set to a runtime. BuildKit redefines a variable in place; buildah 1.28 moves
            # it to the end.
            v = sorted(v)
        if v in (None, "", [], {}):
            continue  # absent, null and empty mean the same to a runtime
        out[k] = v
    for k in ("os", "architecture"):
        if config.get(k):
            out[k] = config[k]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("layout", help="OCI image layout directory")
    p.add_argument("--ref", help="the index entry's ref name (default: the only one)")
    p.add_argument("--ignore", action="append", default=[], metavar="PATH",
                   help="leave out PATH and everything below it")
    p.add_argument("--ignore-runtime-stubs", action="store_true",
                   help="leave out empty /dev /proc /sys /run and empty /etc/hostname "
                        "/etc/hosts /etc/resolv.conf")
    p.add_argument("--ignore-empty", action="append", default=[], metavar="PATH",
                   help="leave out PATH if it is an empty directory or an empty file")
    p.add_argument("--ignore-label", action="append", default=[], metavar="KEY")
    p.add_argument("-o", "--output", help="write the JSON here instead of stdout")
    args = p.parse_args()
    try:
        digest, manifest = pick_manifest(args.layout, args.ref)
        config = read_json_blob(args.layout, manifest["config"]["digest"])
        root = Node("dir")
        for layer in manifest["layers"]:
            apply_layer(root, read_entries(blob_path(args.layout, layer["digest"])))
        ignore = ["/" + "/".join(split(i)) for i in args.ignore]
        doc = {
            "config": config_subset(config, set(args.ignore_label)),
            "files": describe(root, ignore, args.ignore_runtime_stubs,
                              ["/" + "/".join(split(i)) for i in args.ignore_empty]),
            "image": {"manifest": digest, "layers": len(manifest["layers"])},
        }
    except (Fail, OSError, tarfile.TarError, json.JSONDecodeError, KeyError) as e:
        print(f"image-tree: {args.layout}: {e}", file=sys.stderr)
        sys.exit(2)
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
