"""Run the phase 0 bench + targets and print everything (a stand-in for the module0 check runner)."""

import json
import os
import sys
import time

import torch

from phase0_prototype import bench, checks

impl = sys.argv[1] if len(sys.argv) > 1 else "solution"
size = sys.argv[2] if len(sys.argv) > 2 else "full"
t0 = time.time()
result = bench.run(impl, size)
print(f"bench took {time.time() - t0:.0f} s")
for target in checks.TARGETS:
    o = target.evaluate(result)
    print(f"{o.target.id} | {o.target.threshold} | {o.measured} | {o.status_text}")
print(json.dumps(result.metrics, indent=1))
for title, body in result.tables.items():
    print(f"\n## {title}\n{body}")
print("\n".join(result.notes))
for c in result.comparisons:
    print(f"{c.name}: {c.seconds * 1e3:.3f} ms/token, {c.work_bytes / c.seconds / 1e9:.0f} GB/s {c.note}")
tr = result.trace
if tr is not None:
    print(f"trace: {result.trace_region}: wall {tr.wall_s * 1e3:.1f} ms busy {tr.gpu_busy} "
          f"launches {tr.launches} calls {tr.launch_calls} gap {tr.mean_gap_s}")
    for k in tr.top(8):
        print(f"  {k.share * 100:5.1f}% {k.calls:5d} {k.name[:100]}")
out = os.environ.get("OUT")
if out:
    with open(os.path.join(out, f"bench_{impl}_{size}.json"), "w") as f:
        json.dump({"metrics": result.metrics, "skipped": result.skipped, "tables": result.tables,
                   "notes": result.notes, "torch": torch.__version__}, f, indent=1)
