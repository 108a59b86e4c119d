#!/usr/bin/env python3
"""Write a layered no-op job graph as a kiln workflow and as a build.ninja.

usage: gen_dag.py OUT_DIR LAYERS WIDTH SHELL NINJA_DIR

OUT_DIR/.kiln/workflows/dag.yml  -- LAYERS x WIDTH jobs, each needing 1-3 jobs of the layer
                                    before, every step `run: "true"` under defaults.run.shell
NINJA_DIR/build.ninja            -- the same graph (kept out of OUT_DIR, which kiln copies
                                    into every job's workspace), each edge running `/bin/sh -c true`
The graph is the same for the same arguments (fixed seed).
"""
import os
import random
import sys


def main() -> None:
    out, layers, width, shell = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ninja_dir = sys.argv[5]
    rng = random.Random(2000)
    needs = {}
    for layer in range(layers):
        for i in range(width):
            name = f"j{layer}_{i}"
            if layer == 0:
                needs[name] = []
            else:
                k = rng.randint(1, 3)
                needs[name] = sorted({f"j{layer - 1}_{rng.randrange(width)}" for _ in range(k)})
    wf_dir = os.path.join(out, ".kiln", "workflows")
    os.makedirs(wf_dir, exist_ok=True)
    with open(os.path.join(wf_dir, "dag.yml"), "w") as f:
        f.write("name: dag\non: push\n")
        if shell != "default":
            f.write(f"defaults:\n  run:\n    shell: {shell}\n")
        f.write("jobs:\n")
        for name, deps in needs.items():
            f.write(f"  {name}:\n    runs-on: local\n")
            if deps:
                f.write(f"    needs: [{', '.join(deps)}]\n")
            f.write('    steps:\n      - run: "true"\n')
    os.makedirs(ninja_dir, exist_ok=True)
    with open(os.path.join(ninja_dir, "build.ninja"), "w") as f:
        f.write("rule noop\n  command = /bin/sh -c true\n\n")
        for name, deps in needs.items():
            dep_files = " ".join(f"out/{d}" for d in deps)
            f.write(f"build out/{name}: noop {dep_files}\n")


if __name__ == "__main__":
    main()
