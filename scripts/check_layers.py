#!/usr/bin/env python3
"""Checks that the folders of src/ include each other only downwards.

Each folder of src/ belongs to a layer (LAYERS below, lowest first). A file may
include headers of its own folder and of folders in lower layers; a header of
a higher layer, or of another folder of the same layer, is a violation. A
header is attributed to the folder that holds it (src/<folder>/x.h), or, for a
public header include/turnpike/x.h, to the folder whose x.c implements it.

Prints the folder graph and every violation with file:line; exits 1 on any.
The build links one static library per layer in the same order, so a call
that goes upwards fails to link as well.

usage: scripts/check_layers.py [REPO]
"""
import os
import re
import sys

# lowest first; folders on one line form one layer and may not include each other
LAYERS = [
    ["core"],
    ["policy", "config", "tls", "auth"],
    ["rt"],
    ["transport", "upstream", "store"],
    ["http"],
    ["admin"],
]
# leaves that sit in the same layer but have a fixed order among themselves
ALLOWED_SAME_LAYER = {("config", "tls"), ("tls", "config"), ("policy", "config")}

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def main():
    repo = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    src = os.path.join(repo, "src")
    rank = {f: i for i, layer in enumerate(LAYERS) for f in layer}
    impl = {}  # x.c basename -> folder, for public headers
    files = []
    for d, _, names in os.walk(src):
        for n in names:
            if n.endswith((".c", ".h")):
                rel = os.path.relpath(os.path.join(d, n), src)
                files.append(rel)
                if n.endswith(".c") and os.sep in rel:
                    impl.setdefault(n[:-2], rel.split(os.sep)[0])
    edges, bad = {}, []
    for rel in sorted(files):
        if os.sep not in rel:
            continue  # src/main.c wires everything together: above every layer
        folder = rel.split(os.sep)[0]
        if folder not in rank:
            bad.append(f"src/{rel}: folder '{folder}' has no layer in scripts/check_layers.py")
            continue
        with open(os.path.join(src, rel), errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                path = m.group(2)
                if path.startswith("turnpike/"):
                    target = impl.get(os.path.basename(path)[:-2])
                elif m.group(1) == '"' and "/" in path:
                    target = path.split("/")[0]
                else:
                    continue
                if not target or target == folder:
                    continue
                edges.setdefault(folder, set()).add(target)
                if target not in rank:
                    continue
                if rank[target] > rank[folder] or (
                    rank[target] == rank[folder] and (folder, target) not in ALLOWED_SAME_LAYER
                ):
                    bad.append(f"src/{rel}:{lineno}: {folder}/ includes {path} ({target}/ is not below it)")
    for f in sorted(edges):
        print(f"{f} -> {', '.join(sorted(edges[f]))}")
    for b in bad:
        print(b)
    print(f"{len(bad)} layering violation(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
