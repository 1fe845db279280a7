"""Registers, shared memory, spills and theoretical occupancy of every CUDA kernel.

Compiles the kernel module (``scip_gpu.gpu_kernels.module_source()``, the options the package
uses) with ``nvcc -arch=<arch> -cubin -Xptxas -v`` and writes, per kernel: registers, stack,
spill bytes, static shared memory, the dynamic workspace of a 64x64 plane (and of 128x128), and
the blocks of 256 threads that fit on one multiprocessor (Hopper: 64K registers, 228 KiB of
shared memory with 1 KiB reserved per block, 2048 threads).

    python benchmarks/kernel_resources.py                 # sm_90 -> results/kernel-resources-sm_90.md
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SM_REGS = 65536
SM_SHARED = 228 * 1024
BLOCK_RESERVED = 1024
SM_THREADS = 2048


def parse(report: str) -> dict:
    out = {}
    name = None
    props_of = None  # the function of the last "Function properties for ..." line
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
            out[name] = {}
            continue
        if name is None:
            continue
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            props_of = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            entry = props_of == name  # (not a device function called from the entry)
            old = out[name]
            out[name].update(stack=int(m[1]) if entry else old.get("stack", 0),
                             spill_stores=old.get("spill_stores", 0) + int(m[2]),
                             spill_loads=old.get("spill_loads", 0) + int(m[3]))
        m = re.search(r"Used (\d+) registers", line)
        if m:  # (no "bytes smem" when a kernel has no static shared memory)
            smem = re.search(r"(\d+) bytes smem", line)
            out[name].update(registers=int(m[1]), static_smem=int(smem[1]) if smem else 0)
    return out


def blocks_per_sm(regs: int, smem: int, threads: int = 256) -> dict:
    warps = threads // 32
    per_warp = -(-regs * 32 // 256) * 256
    by_regs = SM_REGS // (per_warp * warps) if regs else 32
    by_smem = SM_SHARED // (smem + BLOCK_RESERVED)
    by_threads = SM_THREADS // threads
    return {"registers": by_regs, "shared": by_smem, "threads": by_threads,
            "blocks": min(by_regs, by_smem, by_threads, 32)}


def main(argv=None) -> int:
    from scip_gpu import gpu_kernels

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("kernel_resources: nvcc is not on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "module.cu"
        src.write_text(gpu_kernels.module_source())
        res = subprocess.run([nvcc, f"-arch={args.arch}", "-cubin", *gpu_kernels.OPTIONS, "-Xptxas", "-v", str(src),
                              "-o", str(Path(tmp) / "m.cubin")], capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stderr, file=sys.stderr)
        return 1
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    kernels = parse(res.stderr)
    for name, k in kernels.items():
        ws = gpu_kernels.WORKSPACE.get(name) or gpu_kernels.WORKSPACE.get(name.replace("_global", ""))
        k["workspace_64x64"] = ws(64, 64) if ws else 0
        k["workspace_128x128"] = ws(128, 128) if ws else 0
        shared_64 = 0 if name.endswith("_global") else k["workspace_64x64"]
        k["occupancy_64x64"] = blocks_per_sm(k["registers"], k["static_smem"] + shared_64)
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"kernel-resources-{args.arch}"
    base.with_suffix(".json").write_text(json.dumps({"nvcc": version, "options": list(gpu_kernels.OPTIONS),
                                                     "kernels": kernels}, indent=2) + "\n")
    lines = [f"# CUDA kernel resources ({args.arch})", "",
             f"`nvcc -arch={args.arch} -cubin {' '.join(gpu_kernels.OPTIONS)} -Xptxas -v` ({version}), "
             "256 threads per block. Workspace: the per-block dynamic shared memory of a plane "
             "(global scratch when it does not fit). Blocks/SM: what fits on one Hopper "
             "multiprocessor by registers, shared memory (64x64 planes) and threads.", "",
             "| kernel | registers | stack | spills (st/ld) | static smem | workspace 64x64 | workspace 128x128 | "
             "blocks/SM 64x64 (limit) |", "|---|---|---|---|---|---|---|---|"]
    for name in sorted(kernels):
        k = kernels[name]
        occ = k["occupancy_64x64"]
        limit = min((v, key) for key, v in occ.items() if key != "blocks")[1]
        lines.append(f"| {name} | {k['registers']} | {k['stack']} | {k['spill_stores']}/{k['spill_loads']} | "
                     f"{k['static_smem']:,} | {k['workspace_64x64']:,} | {k['workspace_128x128']:,} | "
                     f"{occ['blocks']} ({limit}) |")
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
