#!/usr/bin/env python3
"""Compare two outputs of e2e/lib/image-tree.py.

    e2e/lib/image-diff.py A.json B.json [--label-a NAME] [--label-b NAME] [--max N]

Prints the differences (configuration keys, paths only on one side, attributes that differ)
and exits 1 if there are any, 0 if the images are the same, 2 on bad input. A path missing
on one side is printed once, with the number of paths below it. The "image" part (manifest
digest, layer count) is informative and never a difference.
"""
import argparse
import json
import sys


def load(path):
    try:
        with open(path) as f:
            doc = json.load(f)
        return doc["config"], doc["files"], doc.get("image", {})
    except (OSError, ValueError, KeyError) as e:
        print(f"image-diff: {path}: {e}", file=sys.stderr)
        sys.exit(2)


def short(entry):
    t = entry["type"]
    s = f'{t} {entry["mode"]} {entry["uid"]}:{entry["gid"]}'
    if t == "file":
        s += f' {entry["size"]} bytes'
        if "link_group" in entry:
            s += f' (hard link group {entry["link_group"]})'
    elif t == "symlink":
        s += f' -> {entry["target"]}'
    elif t in ("char", "block"):
        s += f' {entry["rdev"]}'
    return s


def fmt(v):
    return json.dumps(v, sort_keys=True)


def only_in(files, others):
    """Top-most paths of `files` missing from `others`, each with the count below it."""
    missing = sorted(p for p in files if p not in others)
    out = []
    for p in missing:
        if out and p.startswith(out[-1][0] + "/"):
            out[-1][1] += 1
        else:
            out.append([p, 0])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--label-a", default="A")
    ap.add_argument("--label-b", default="B")
    ap.add_argument("--max", type=int, default=200, help="print at most N differences")
    args = ap.parse_args()
    ca, fa, ia = load(args.a)
    cb, fb, ib = load(args.b)
    A, B = args.label_a, args.label_b
    lines = []

    for k in sorted(set(ca) | set(cb)):
        if ca.get(k) != cb.get(k):
            lines.append(f"config {k}:\n    {A}: {fmt(ca.get(k))}\n    {B}: {fmt(cb.get(k))}")

    for side, files, others in ((A, fa, fb), (B, fb, fa)):
        for p, below in only_in(files, others):
            extra = f", and {below} paths below it" if below else ""
            lines.append(f"only in {side}: {p} ({short(files[p])}{extra})")

    for p in sorted(set(fa) & set(fb)):
        ea, eb = fa[p], fb[p]
        if ea == eb:
            continue
        keys = sorted(k for k in set(ea) | set(eb) if ea.get(k) != eb.get(k))
        parts = [f"{k} {A}={fmt(ea.get(k))} {B}={fmt(eb.get(k))}" for k in keys]
        lines.append(f"{p}: " + "; ".join(parts))

    for line in lines[:args.max]:
        print(line)
    if len(lines) > args.max:
        print(f"... and {len(lines) - args.max} more differences")
    if ia.get("layers") != ib.get("layers"):
        print(f"(note, not a difference: {ia.get('layers')} layers in {A}, "
              f"{ib.get('layers')} in {B})")
    if lines:
        print(f"image-diff: {len(lines)} differences between {A} and {B}")
        sys.exit(1)


if __name__ == "__main__":
    main()
