#!/usr/bin/env python3
"""Checks that the project's #include "..." edges only point down the layer order.

Layers, bottom first (docs/architecture.md, "Layers"). A file may include headers of its
own layer and of any layer of a lower rank; two layers of the same rank may not include
each other. Anything else is reported as file:line and the check fails.

  0  common/                 no project dependency
  1  kernels/                CUDA kernels, launcher headers, references; torch-free
  1  proto/ (lightrl/*.pb.h) the wire schema and its gRPC helpers
  2  policy/                 the model and its training path
  3  inference_engine/       the engine serving the model
  3  reward/                 reward functions and the reward service
  4  rollout/                rollout workers and the coordinator
  5  rl/                     losses, learner, trainer and the lightrl CLI
  6  tests/, bench/, examples/  consumers: they may include any layer; nothing includes them

kernels/ is also checked to be torch-free: no #include <torch/...>, <ATen/...>, <c10/...>.

Within rl/, the `lightrl` CLI (rl/tools/) sits above the library: a library file (rl/
outside rl/tools/) includes no rl/tools/ header, builds no command line (no string
literal that is a whole flag, like "--listen") and starts no process (no fork, exec* or
posix_spawn call). The library asks the CLI for processes through rl/worker_launcher.h.

Includes of headers that are not the project's (absl, gtest, system) are ignored; an
include without a known layer prefix is resolved against the including file's folder.

Usage: check_layers.py [ROOT]   (ROOT defaults to the repository holding this script)
Stdlib only; exit status 0 when clean, 1 with one line per violation otherwise.
"""

import os
import re
import sys

RANK = {
    "common": 0,
    "kernels": 1,
    "proto": 1,
    "policy": 2,
    "inference_engine": 3,
    "reward": 3,
    "rollout": 4,
    "rl": 5,
    "tests": 6,
    "bench": 6,
    "examples": 6,
}
# Include prefixes that name a layer other than by its folder: the generated protobuf and
# gRPC headers (proto/lightrl/**/*.proto -> "lightrl/v1/*.pb.h").
PREFIX_LAYER = {"lightrl": "proto"}
SOURCE_EXTENSIONS = (".h", ".hpp", ".cc", ".cpp", ".cu", ".cuh")
SKIP_DIRS = {".git", ".venv", "runs", "node_modules", "__pycache__"}
TORCH_PREFIXES = ("torch/", "ATen/", "c10/")

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]')
# What only the CLI (rl/tools/) may do within rl/: a string literal that is a whole flag
# (an element of a command line) and the calls that start processes.
CLI_FLAG_RE = re.compile(r'"--[A-Za-z0-9][A-Za-z0-9-]*"')
SPAWN_RE = re.compile(r'(?<![\w.>])(?:::)?(fork|vfork|execl|execlp|execle|execv|execve|execvp|execvpe|'
                      r'posix_spawn|posix_spawnp)\s*\(')


def layer_of_path(rel_path):
    """The layer of a path relative to the root, or None when it is in no layer."""
    top = rel_path.split("/", 1)[0]
    return top if top in RANK else None


def layer_of_include(root, including_rel, target):
    top = target.split("/", 1)[0]
    if "/" in target and top in RANK:
        return top
    if "/" in target and top in PREFIX_LAYER:
        return PREFIX_LAYER[top]
    # Relative to the including file's folder.
    local = os.path.normpath(os.path.join(os.path.dirname(including_rel), target))
    if not local.startswith("..") and os.path.isfile(os.path.join(root, local)):
        return layer_of_path(local.replace(os.sep, "/"))
    return None


def source_files(root):
    for layer in sorted(RANK):
        base = os.path.join(root, layer)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(
                d for d in dirnames if d not in SKIP_DIRS and not d.startswith("build"))
            for name in sorted(filenames):
                if name.endswith(SOURCE_EXTENSIONS):
                    full = os.path.join(dirpath, name)
                    yield os.path.relpath(full, root).replace(os.sep, "/")


def is_rl_library(rel):
    return rel.startswith("rl/") and not rel.startswith("rl/tools/")


def code_of(line):
    """The line without a trailing // comment (outside string literals)."""
    in_string = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\" and in_string:
            i += 2
            continue
        if c == '"':
            in_string = not in_string
        elif not in_string and line.startswith("//", i):
            return line[:i]
        i += 1
    return line


def check_cli_boundary(rel, lineno, line, violations):
    """rl/ library files leave command lines, processes and rl/tools/ to the CLI."""
    m = INCLUDE_RE.match(line)
    if m and m.group(2).startswith("rl/tools/"):
        violations.append(f"{rel}:{lineno}: the rl/ library includes \"{m.group(2)}\" of the "
                          f"CLI (rl/tools/), which sits above it")
        return
    code = code_of(line)
    flag = CLI_FLAG_RE.search(code)
    if flag:
        violations.append(f"{rel}:{lineno}: the rl/ library names the CLI flag {flag.group(0)}; "
                          f"command lines are built in rl/tools/ (rl/worker_launcher.h)")
    spawn = SPAWN_RE.search(code)
    if spawn:
        violations.append(f"{rel}:{lineno}: the rl/ library starts a process ({spawn.group(1)}); "
                          f"processes are started in rl/tools/ (rl/worker_launcher.h)")


def check(root):
    violations = []
    scanned = 0
    for rel in source_files(root):
        scanned += 1
        layer = layer_of_path(rel)
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if is_rl_library(rel):
                    check_cli_boundary(rel, lineno, line, violations)
                m = INCLUDE_RE.match(line)
                if not m:
                    continue
                kind, target = m.groups()
                if kind == "<":
                    if layer == "kernels" and target.startswith(TORCH_PREFIXES):
                        violations.append(
                            f"{rel}:{lineno}: kernels/ is torch-free, but it includes <{target}>")
                    continue
                target_layer = layer_of_include(root, rel, target)
                if target_layer is None or target_layer == layer:
                    continue
                if RANK[target_layer] >= RANK[layer]:
                    violations.append(
                        f"{rel}:{lineno}: {layer}/ (rank {RANK[layer]}) includes \"{target}\" "
                        f"of {target_layer}/ (rank {RANK[target_layer]}); includes must point "
                        f"to a lower layer")
    return scanned, violations


def main(argv):
    root = argv[1] if len(argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scanned, violations = check(root)
    for v in violations:
        print(v)
    if violations:
        print(f"check_layers: {len(violations)} violation(s) of the layer order "
              f"(see docs/architecture.md, Layers)", file=sys.stderr)
        return 1
    if scanned == 0:
        print(f"check_layers: no sources found under {root}", file=sys.stderr)
        return 1
    print(f"check_layers: {scanned} files, every include points down the layer order")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
