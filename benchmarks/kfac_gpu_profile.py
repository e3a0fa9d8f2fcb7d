"""Where a K-FAC step's time goes, ours beside a peer's: ``torch.profiler`` over whole update
cycles of rows of ``benchmarks/kfac_peers.py`` on its workloads.

Per row it prints kernels, host synchronisations and device-to-host copies per step, the
operators with the most device time and the most host time, and (ours) the step's phases.
Made for the GPU, where these workloads are bound by kernel launches and synchronisations
rather than arithmetic; on a CPU the device columns are empty.

    python benchmarks/kfac_gpu_profile.py [--device cuda] [--workloads cnn mlp]
        [--rows kfac "asdl kfac mc"] [--steps 20] [--sync-sources]

With ``--sync-sources`` (CUDA) it also lists where each row's host synchronisations come from
(``torch.cuda.set_sync_debug_mode``), by the innermost frames of the call stack.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import traceback
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kfac_peers  # noqa: E402

SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workloads", nargs="+", default=["cnn", "mlp"])
    parser.add_argument("--rows", nargs="+", default=["kfac", "asdl kfac mc"])
    parser.add_argument("--steps", type=int, default=20, help="profiled steps (a cycle: 20)")
    parser.add_argument("--sync-sources", action="store_true",
                        help="list where the host synchronisations come from (CUDA)")
    args = parser.parse_args()
    device = kfac_peers.parse_device(parser, args.device)
    warnings.filterwarnings("ignore", message="Using a non-full backward hook")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    entries = [e for e in kfac_peers.ENTRIES if e.name in args.rows]
    for workload in kfac_peers.workloads(args.workloads, device=device):
        for entry in entries:
            runner = entry.build(workload, kfac_peers.Settings(5, 20))
            for _ in range(2 * args.steps):  # warm-up: allocations, first decompositions
                runner.step()
            sync()
            with torch.profiler.profile(activities=activities) as profile:
                for _ in range(args.steps):
                    runner.step()
                sync()
            events = profile.key_averages()
            kernels = sum(e.count for e in events
                          if e.device_type == torch.autograd.DeviceType.CUDA)
            syncs = sum(e.count for e in events if e.key in SYNCS)
            copies = sum(e.count for e in events if "Memcpy" in e.key and "DtoH" in e.key)
            print(f"\n=== {workload.name} {entry.name}: per step {kernels / args.steps:.1f} "
                  f"kernels, {syncs / args.steps:.2f} syncs, {copies / args.steps:.2f} "
                  "device-to-host copies")
            if device.type == "cuda":
                print(events.table(sort_by="self_cuda_time_total", row_limit=12,
                                   max_name_column_width=48))
            print(events.table(sort_by="cpu_time_total", row_limit=12,
                               max_name_column_width=48))
            if args.sync_sources and device.type == "cuda":
                print("host synchronisations per step, by source:")
                for where, count in sync_sources(runner.step, args.steps).most_common(8):
                    print(f"  {count / args.steps:5.2f}  {where}")
            if runner.phases is not None:
                phases = runner.phases(args.steps)
                print("phases, ms per step:", {k: round(v * 1e3 / args.steps, 3)
                                               for k, v in phases.items()})


def sync_sources(step, steps: int) -> collections.Counter[str]:
    """Where ``steps`` calls of ``step`` synchronise with the host: the two innermost frames
    outside torch of each synchronisation ``torch.cuda.set_sync_debug_mode`` reports."""
    sources: collections.Counter[str] = collections.Counter()
    shown = warnings.showwarning

    def record(message, category, *args, **kwargs) -> None:
        frames = [f for f in traceback.extract_stack()[:-1]
                  if f"{os.sep}torch{os.sep}" not in f.filename and "warnings" not in f.filename]
        sources[" < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                           for f in frames[-2:][::-1])] += 1

    torch.cuda.synchronize()
    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    step()
                torch.cuda.synchronize()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        warnings.showwarning = shown
    return sources


if __name__ == "__main__":
    main()
