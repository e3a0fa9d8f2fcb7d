"""Where a K-FAC step's time goes, ours beside a peer's: ``torch.profiler`` over whole update
cycles of rows of ``benchmarks/kfac_peers.py`` on its workloads.

Per row it prints kernels, host synchronisations and device-to-host copies per step, the
operators with the most device time and the most host time, and (ours) the step's phases.
Made for the GPU, where these workloads are bound by kernel launches and synchronisations
rather than arithmetic; on a CPU the device columns are empty.

    python benchmarks/kfac_gpu_profile.py [--device cuda] [--workloads cnn mlp]
        [--rows kfac "asdl kfac mc"] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import sys
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
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch build sees no CUDA device")
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
            if runner.phases is not None:
                phases = runner.phases(args.steps)
                print("phases, ms per step:", {k: round(v * 1e3 / args.steps, 3)
                                               for k, v in phases.items()})


if __name__ == "__main__":
    main()
