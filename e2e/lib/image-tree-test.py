#!/usr/bin/env python3
"""Self-test of image-tree.py and image-diff.py on hand-made layouts with known answers:
whiteouts, opaque directories, hard links, implicit parents, type changes, plain, gzip and
zstd layers, Docker media types, --ref, --ignore, --ignore-runtime-stubs.

    e2e/lib/image-tree-test.py        # prints "image-tree-test: ok" or fails with a diff
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def tar_bytes(entries):
    """entries: (name, kind, extra) with kind file/dir/symlink/link/fifo/char."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = extra.get("mode", 0o755 if kind == "dir" else 0o644)
            ti.uid, ti.gid = extra.get("uid", 0), extra.get("gid", 0)
            data = None
            if kind == "file":
                data = extra.get("data", b"")
                ti.size = len(data)
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, extra["target"]
            elif kind == "link":
                ti.type, ti.linkname = tarfile.LNKTYPE, extra["target"]
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            elif kind == "char":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            if "xattr" in extra:
                ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in extra["xattr"].items()}
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + d, "size": len(data)}


def layout_of(path, layers, compression, docker=False, refs=("latest",), config=None):
    os.makedirs(os.path.join(path, "blobs", "sha256"))
    descs = []
    for raw in layers:
        if compression == "gzip":
            data = gzip.compress(raw, mtime=0)
        elif compression == "zstd":
            data = subprocess.run(["zstd", "-q", "-c"], input=raw, stdout=subprocess.PIPE,
                                  check=True).stdout
        else:
            data = raw
        d = blob(path, data)
        d["mediaType"] = ("application/vnd.docker.image.rootfs.diff.tar.gzip" if docker
                          else "application/vnd.oci.image.layer.v1.tar")
        descs.append(d)
    cfg = blob(path, json.dumps({"architecture": "amd64", "os": "linux",
                                 "config": config or {"Env": ["B=2", "A=1"], "Cmd": [],
                                                      "Labels": {"x": "y"}}}).encode())
    cfg["mediaType"] = ("application/vnd.docker.container.image.v1+json" if docker
                        else "application/vnd.oci.image.config.v1+json")
    mt = ("application/vnd.docker.distribution.manifest.v2+json" if docker
          else "application/vnd.oci.image.manifest.v1+json")
    man = blob(path, json.dumps({"schemaVersion": 2, "mediaType": mt, "config": cfg,
                                 "layers": descs}).encode())
    man["mediaType"] = mt
    manifests = []
    for r in refs:
        m = dict(man)
        m["annotations"] = {"org.opencontainers.image.ref.name": r}
        manifests.append(m)
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": manifests}, f)


LAYERS = [
    tar_bytes([
        ("./", "dir", {}),
        ("etc", "dir", {}),
        ("etc/group", "file", {"data": b"g\n"}),
        ("etc/keep", "file", {"data": b"k\n"}),
        ("data", "dir", {}),
        ("data/old", "file", {"data": b"old\n"}),
        ("data/sub", "dir", {}),
        ("data/sub/x", "file", {}),
        ("bin", "dir", {}),
        ("bin/tool", "file", {"data": b"tool", "mode": 0o4755, "uid": 1000, "gid": 1000,
                              "xattr": {"security.capability": "cap"}}),
        ("bin/alias", "link", {"target": "bin/tool"}),
        ("bin/sh", "symlink", {"target": "tool"}),
        ("gone", "dir", {}),
        ("gone/deep", "file", {}),
        ("typechange", "file", {}),
        ("dev", "dir", {}),
        ("dev/null", "char", {}),
        ("run", "dir", {}),
        ("etc/hosts", "file", {}),
    ]),
    tar_bytes([
        ("etc/.wh.group", "file", {}),
        ("data/.wh..wh..opq", "file", {}),
        ("data/new", "file", {"data": b"new\n"}),
        (".wh.gone", "file", {}),
        ("typechange", "dir", {"mode": 0o700}),
        ("typechange/f", "file", {}),
        ("bin/tool", "file", {"data": b"tool2", "mode": 0o755}),  # breaks the hard link
        ("implicit/parent/file", "file", {"data": b"i"}),
        ("fifo", "fifo", {"mode": 0o600}),
        ("sys", "dir", {}),
        ("proc", "dir", {}),
        ("proc/notempty", "file", {}),
    ]),
]

EXPECTED_PATHS = {
    "/bin", "/bin/alias", "/bin/sh", "/bin/tool", "/data", "/data/new", "/dev",
    "/dev/null", "/etc", "/etc/keep", "/fifo", "/implicit", "/implicit/parent",
    "/implicit/parent/file", "/typechange", "/typechange/f", "/proc", "/proc/notempty",
}


def run_tree(*args):
    out = subprocess.run([sys.executable, os.path.join(HERE, "image-tree.py"), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise AssertionError(f"image-tree {args} failed: {out.stderr}")
    return json.loads(out.stdout)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    tmp = tempfile.mkdtemp(prefix="image-tree-test.")
    try:
        docs = {}
        kinds = [("plain", False), ("gzip", True)]
        if shutil.which("zstd"):
            kinds.append(("zstd", False))
        for comp, docker in kinds:
            path = os.path.join(tmp, comp)
            layout_of(path, LAYERS, comp, docker=docker)
            docs[comp] = run_tree(path, "--ignore-runtime-stubs")
        d = docs["plain"]
        f = d["files"]
        check(set(f) == EXPECTED_PATHS,
              f"paths: extra {sorted(set(f) - EXPECTED_PATHS)} missing {sorted(EXPECTED_PATHS - set(f))}")
        check(f["/bin/alias"]["mode"] == "4755" and f["/bin/alias"]["uid"] == 1000
              and "link_group" not in f["/bin/alias"], f"hard link broken by rewrite: {f['/bin/alias']}")
        check(f["/bin/alias"]["xattrs"] == {"security.capability": "cap"}, "xattrs")
        check(f["/bin/tool"]["mode"] == "0755" and f["/bin/tool"]["size"] == 5, "rewritten file")
        check(f["/bin/sh"] == {"type": "symlink", "mode": "0644", "uid": 0, "gid": 0,
                               "target": "tool"}, f"symlink {f['/bin/sh']}")
        check(f["/typechange"]["type"] == "dir" and f["/typechange"]["mode"] == "0700", "type change")
        check(f["/dev/null"]["type"] == "char" and f["/dev/null"]["rdev"] == "1:3", "char device")
        check(f["/fifo"]["type"] == "fifo" and f["/fifo"]["mode"] == "0600", "fifo")
        check(f["/implicit"]["mode"] == "0755", "implicit parent")
        check(d["config"] == {"Env": ["A=1", "B=2"], "Labels": {"x": "y"}, "os": "linux",
                              "architecture": "amd64"}, f"config {d['config']}")
        for comp in docs:
            check(docs[comp]["files"] == f, f"{comp} layers give another tree")

        # Hard links that survive, --ignore, stubs kept without the flag, --ref.
        path = os.path.join(tmp, "refs")
        layout_of(path, LAYERS[:1], "gzip", refs=("one", "two"))
        d1 = run_tree(path, "--ref", "two", "--ignore", "/etc", "--ignore", "/data/")
        f1 = d1["files"]
        check(f1["/bin/alias"].get("link_group") == "/bin/alias"
              and f1["/bin/tool"].get("link_group") == "/bin/alias", "hard link group")
        check(not any(p.startswith(("/etc", "/data")) for p in f1), "--ignore")
        check("/run" in f1, "an empty /run is kept without --ignore-runtime-stubs")
        d2 = run_tree(path, "--ref", "one", "--ignore-runtime-stubs")
        check("/run" not in d2["files"] and "/etc/hosts" not in d2["files"], "stubs dropped")

        # --ignore-empty: a chain of empty directories goes, a non-empty one stays.
        d3 = run_tree(path, "--ref", "one", "--ignore-empty", "/gone", "--ignore-empty", "/gone/deep",
                      "--ignore-empty", "/run", "--ignore-empty", "/etc")
        check("/gone" not in d3["files"] and "/run" not in d3["files"]
              and "/etc" in d3["files"], "--ignore-empty")

        # image-diff: same is 0, different is 1.
        a, b = os.path.join(tmp, "a.json"), os.path.join(tmp, "b.json")
        with open(a, "w") as fa:
            json.dump(docs["plain"], fa)
        with open(b, "w") as fb:
            json.dump(docs["gzip"], fb)
        diff = [sys.executable, os.path.join(HERE, "image-diff.py"), a, b]
        check(subprocess.run(diff, stdout=subprocess.DEVNULL).returncode == 0, "diff of equal trees")
        changed = json.loads(json.dumps(docs["gzip"]))
        changed["files"]["/bin/tool"]["mode"] = "0700"
        del changed["files"]["/etc/keep"]
        changed["config"]["User"] = "1000"
        with open(b, "w") as fb:
            json.dump(changed, fb)
        r = subprocess.run(diff, stdout=subprocess.PIPE, text=True)
        check(r.returncode == 1 and "only in A: /etc/keep" in r.stdout
              and '/bin/tool: mode A="0755" B="0700"' in r.stdout and "config User" in r.stdout,
              f"diff output:\n{r.stdout}")
    finally:
        shutil.rmtree(tmp)
    print("image-tree-test: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"image-tree-test: FAIL: {e}", file=sys.stderr)
        sys.exit(1)
