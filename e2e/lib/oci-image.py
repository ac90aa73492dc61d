#!/usr/bin/env python3
"""Write an OCI image layout from ready-made layer tarballs, without any container tool.

Layers come gzip-compressed (a registry client would otherwise compress them on every push)
with the digest of their uncompressed form (the diff ID) computed while they were written.
Identical inputs give identical digests, so pushes of unchanged layers are skipped.
"""
import argparse
import hashlib
import json
import os
import shutil


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True, help="directory of the OCI layout (replaced)")
    p.add_argument("--layer", action="append", default=[], help="gzip-compressed layer tar")
    p.add_argument("--diff-id", action="append", default=[], help="sha256:... of each layer, uncompressed")
    p.add_argument("--name", required=True, help="full image name, e.g. registry.k8s.io/pause:3.10")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--entrypoint", help="JSON list")
    p.add_argument("--cmd", help="JSON list")
    p.add_argument("--workdir")
    p.add_argument("--user")
    p.add_argument("--expose", action="append", default=[], help="a port, e.g. 80/tcp")
    args = p.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(os.path.join(args.out, "blobs", "sha256"))
    if len(args.diff_id) != len(args.layer):
        p.error("give one --diff-id per --layer")
    layers, diff_ids = [], args.diff_id
    for tar in args.layer:
        digest = sha256_file(tar)
        target = os.path.join(args.out, "blobs", "sha256", digest)
        try:
            os.link(tar, target)
        except OSError:
            shutil.copyfile(tar, target)
        layers.append({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": "sha256:" + digest,
            "size": os.path.getsize(tar),
        })

    config = {"Env": args.env}
    if args.entrypoint:
        config["Entrypoint"] = json.loads(args.entrypoint)
    if args.cmd:
        config["Cmd"] = json.loads(args.cmd)
    if args.workdir:
        config["WorkingDir"] = args.workdir
    if args.user:
        config["User"] = args.user
    if args.expose:
        config["ExposedPorts"] = {port: {} for port in args.expose}
    image_config = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "e2e/lib/oci-image.py"}
                    for _ in diff_ids],
    }
    cfg = write_blob(args.out, json.dumps(image_config, sort_keys=True).encode())
    cfg["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cfg,
        "layers": layers,
    }
    man = write_blob(args.out, json.dumps(manifest, sort_keys=True).encode())
    man["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
    # containerd's importer names the image from the first annotation; skopeo's oci:DIR:TAG
    # reference looks at the second.
    man["annotations"] = {
        "io.containerd.image.name": args.name,
        "org.opencontainers.image.ref.name": tag,
    }
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [man]}, f)
    with open(os.path.join(args.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


if __name__ == "__main__":
    main()
