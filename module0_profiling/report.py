"""Fill a phase's PROFILING_TEMPLATE.md from one bench run: ``reports/<phase>/<device>.md/.json/.png``.

The template is Markdown with ``{{field}}`` placeholders (Module 0's profiling checklist: macro,
micro, roofline, before/after, targets). Every field is filled with a measured value or with
"n/a: <reason>" — a report with a blank is a bug (the tests check it).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from module0_profiling.hardware import DeviceInfo, Peaks
from module0_profiling.roofline import Ceiling, plot_roofline, position
from module0_profiling.targets import SKIP, BenchResult, Outcome
from module0_profiling.timing import format_seconds

PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def na(reason: str) -> str:
    return f"n/a: {reason}"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ceilings(device: DeviceInfo, peaks: Peaks | None) -> list[Ceiling]:
    out = []
    if peaks:
        out.append(Ceiling(f"measured ({peaks.matmul_dtype} matmul, copy)", peaks.matmul_tflops,
                           peaks.copy_gbps))
    sheet = device.datasheet
    if sheet:
        out.append(Ceiling(f"datasheet {sheet.name}", sheet.bf16_tflops, sheet.mem_gbps))
    return out


def _short(name: str, width: int = 70) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def build_fields(
    *,
    phase: str,
    impl: str,
    size: str,
    device: DeviceInfo,
    peaks: Peaks | None,
    result: BenchResult,
    outcomes: list[Outcome],
    roofline_png: str | None,
) -> dict[str, str]:
    f: dict[str, str] = {}
    dev = device.name
    if device.is_cuda:
        sm = (device.capability or "").replace(".", "")
        dev += f" ({device.sm_count} SMs, {device.memory_gb} GB, L2 {device.l2_mb} MB, sm_{sm})"
    f["device"] = f"{dev}, torch {device.torch_version}"
    f["date"] = time.strftime("%Y-%m-%d %H:%M")
    f["phase"] = phase
    f["impl"] = impl
    f["size"] = size
    f["context"] = (
        "\n".join(f"- {k}: {v}" for k, v in result.context.items()) if result.context
        else na("the bench recorded no context")
    )

    rows = []
    if peaks:
        sheet = device.datasheet
        rows.append(["copy bandwidth (read + write)", f"{peaks.copy_gbps:.0f} GB/s",
                     f"{sheet.mem_gbps:.0f} GB/s" if sheet else na("no datasheet entry"),
                     f"{100 * peaks.copy_gbps / sheet.mem_gbps:.0f} %" if sheet else "—"])
        rows.append([f"{peaks.matmul_dtype} matmul {peaks.matmul_n}³", f"{peaks.matmul_tflops:.1f} TFLOP/s",
                     f"{sheet.bf16_tflops:.0f} TFLOP/s" if sheet else na("no datasheet entry"),
                     f"{100 * peaks.matmul_tflops / sheet.bf16_tflops:.0f} %" if sheet else "—"])
        f["peaks"] = md_table(["ceiling", "measured", "datasheet (dense)", "measured / datasheet"], rows)
    else:
        f["peaks"] = na("peaks were not measured in this run")

    tr = result.trace
    region = f" over {result.trace_region}" if result.trace_region else ""
    if tr is None:
        for key in ("gpu_busy", "launch_count", "launch_overhead", "mean_gap", "top_kernels"):
            f[key] = na("this bench recorded no trace")
    else:
        if tr.gpu_busy is not None:
            f["gpu_busy"] = (f"{100 * tr.gpu_busy:.1f} % (union of GPU activity / wall time{region}: "
                             f"{format_seconds(tr.busy_s)} of {format_seconds(tr.wall_s)})")
        else:
            f["gpu_busy"] = na("CPU run: no GPU activity to measure")
        unit = "GPU kernels" if tr.device_kind == "cuda" else "CPU operators"
        per = f", {tr.launches / tr.iters:.1f} per iteration" if tr.iters > 1 else ""
        f["launch_count"] = f"{tr.launches} {unit} in {tr.iters} iteration(s){per}{region}"
        f["launch_overhead"] = (
            f"{format_seconds(tr.launch_overhead_s)} of CPU per launch call ({tr.launch_calls} calls)"
            if tr.launch_overhead_s is not None else na("no CUDA launch calls in the trace (CPU run)")
        )
        f["mean_gap"] = (
            format_seconds(tr.mean_gap_s) + " idle between consecutive kernels"
            if tr.mean_gap_s is not None else na("fewer than two GPU kernels in the trace")
        )
        if tr.kernels:
            f["top_kernels"] = md_table(
                ["#", "kernel" if tr.device_kind == "cuda" else "CPU operator", "calls", "total", "mean",
                 "share"],
                [[i + 1, f"`{_short(k.name)}`", k.calls, format_seconds(k.total_s), format_seconds(k.mean_s),
                  f"{100 * k.share:.1f} %"] for i, k in enumerate(tr.top(3))],
            )
        else:
            f["top_kernels"] = na("the trace holds no kernels")

    if result.ncu:
        f["ncu"] = md_table(
            ["kernel", "launches", "DRAM throughput", "SM throughput", "achieved occupancy",
             "registers/thread", "duration", "DRAM read", "global-load sectors"],
            [[f"`{_short(k['name'], 50)}`", k["n"], _opt(k["dram_pct"], "{:.1f} %"),
              _opt(k["sm_pct"], "{:.1f} %"), _opt(k["occupancy_pct"], "{:.1f} %"),
              _opt(k["registers"], "{:.0f}"), format_seconds(k["duration_s"]) if k["duration_s"] else "—",
              _opt(k["dram_read_bytes"] and k["dram_read_bytes"] / 1e6, "{:.2f} MB"),
              _opt(k["load_sectors"], "{:,.0f}")]
             for k in _ncu_by_name(result.ncu)],
        ) + ("\n\nncu replays each kernel with cold caches (`--cache-control all`), so its durations are "
             "HBM-bound figures.")
    else:
        f["ncu"] = na(result.ncu_reason or "ncu was not run")

    ach_rows = []
    for c in result.comparisons:
        bw = c.work_bytes / c.seconds / 1e9 if c.work_bytes else None
        fl = c.work_flops / c.seconds / 1e12 if c.work_flops else None
        ach_rows.append([
            c.name, format_seconds(c.seconds),
            f"{bw:.0f} GB/s" if bw is not None else "—",
            f"{100 * bw / peaks.copy_gbps:.1f} %" if bw is not None and peaks else "—",
            f"{fl:.2f} TFLOP/s" if fl is not None else "—",
            f"{100 * fl / peaks.matmul_tflops:.1f} %" if fl is not None and peaks else "—",
        ])
    f["achieved"] = (
        md_table(["version", "time", "achieved GB/s", "% of copy BW", "achieved TFLOP/s", "% of matmul peak"],
                 ach_rows)
        if ach_rows else na("this bench recorded no timed versions")
    )

    cs = ceilings(device, peaks)
    if result.roofline and cs:
        pos = [position(p, cs[0]) for p in result.roofline]
        f["roofline"] = (
            f"Ridge point (measured): {cs[0].ridge:.0f} FLOP/byte"
            + (f"; datasheet: {cs[1].ridge:.0f} FLOP/byte" if len(cs) > 1 else "")
            + "\n\n"
            + md_table(
                ["point", "AI (FLOP/byte)", "TFLOP/s", "GB/s", "bound", "% of its roof"],
                [[p["label"], f"{p['intensity']:.2f}", f"{p['tflops']:.3f}", f"{p['gbps']:.0f}", p["bound"],
                  f"{100 * p['fraction_of_roof']:.1f} %"] for p in pos],
            )
        )
    else:
        f["roofline"] = na("no roofline points or no measured peaks")
    f["roofline_png"] = f"![roofline]({roofline_png})" if roofline_png else na("no roofline plot (no points)")

    if result.comparisons:
        base = result.comparisons[0]
        f["before_after"] = md_table(
            ["version", "time", f"speed-up vs {base.name}", "note"],
            [[c.name, format_seconds(c.seconds), f"{base.seconds / c.seconds:.2f}×", c.note or ""]
             for c in result.comparisons],
        )
    else:
        f["before_after"] = na("this bench recorded no timed versions")

    f["targets"] = md_table(
        ["target", "description", "threshold", "measured", "result"],
        [[o.target.id, o.target.description, o.target.threshold, o.measured, o.status_text]
         for o in outcomes],
    ) if outcomes else na("this phase defines no targets")
    f["tables"] = ("\n\n".join(f"### {title}\n\n{body}" for title, body in result.tables.items())
                   or na("no extra tables"))
    f["notes"] = "\n".join(f"- {n}" for n in result.notes) or na("no notes")
    judged = [o for o in outcomes if o.status != SKIP]
    f["headline"] = ("\n".join(f"- **{o.target.id}** {o.target.description}: **{o.measured}** ({o.status}; wants "
                               f"{o.target.threshold})" for o in judged) or na("every target was SKIP on this machine"))
    return f


def _ncu_by_name(kernels: list) -> list[dict]:
    """Average ncu's per-launch rows by kernel name (a loop launches the same kernel many times)."""
    groups: dict[str, list] = {}
    for k in kernels:
        groups.setdefault(k.name, []).append(k)
    rows = []
    for name, ks in groups.items():
        row = {"name": name, "n": len(ks)}
        for f in ("dram_pct", "sm_pct", "occupancy_pct", "registers", "duration_s", "dram_read_bytes", "load_sectors"):
            vals = [getattr(k, f) for k in ks if getattr(k, f) is not None]
            row[f] = sum(vals) / len(vals) if vals else None
        rows.append(row)
    return rows


def _opt(v: Any, fmt: str) -> str:
    return fmt.format(v) if v is not None else "—"


def render(template: str, fields: dict[str, str]) -> str:
    """Replace every ``{{name}}``; a name the bench cannot fill becomes 'n/a: …' (never blank)."""

    def sub(m: re.Match) -> str:
        value = fields.get(m.group(1))
        return value if value else na(f"no field '{m.group(1)}' in this run")

    return PLACEHOLDER.sub(sub, template)


def _jsonable(x: Any) -> Any:
    if is_dataclass(x):
        return _jsonable(asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def post_template(phase: str) -> str:
    """The phase's ``POST_TEMPLATE.md`` (a write-up skeleton), else module 0's generic one."""
    root = Path(__file__).resolve().parent.parent
    own = root / phase / "POST_TEMPLATE.md"
    return (own if own.exists() else root / "module0_profiling" / "POST_TEMPLATE.md").read_text()


def write_report(
    *,
    out_dir: Path,
    stem: str,
    template: str,
    phase: str,
    impl: str,
    size: str,
    device: DeviceInfo,
    peaks: Peaks | None,
    result: BenchResult,
    outcomes: list[Outcome],
) -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.json``, ``<stem>.roofline.png`` (when there are points) and
    ``<stem>.post.md`` (``post_template``: a blog post's skeleton with the same figures)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    png = None
    cs = ceilings(device, peaks)
    if result.roofline and cs:
        png_path = out_dir / f"{stem}.roofline.png"
        plot_roofline(str(png_path), cs, result.roofline, title=f"{phase} on {device.name}")
        png = png_path.name
        written.append(png_path)
    fields = build_fields(phase=phase, impl=impl, size=size, device=device, peaks=peaks, result=result,
                          outcomes=outcomes, roofline_png=png)
    md = out_dir / f"{stem}.md"
    md.write_text(render(template, fields))
    post = out_dir / f"{stem}.post.md"  # the blog post's skeleton, filled with the same run's figures
    post.write_text(render(post_template(phase), fields))
    data = {
        "phase": phase, "impl": impl, "size": size, "device": _jsonable(device),
        "peaks": _jsonable(peaks), "metrics": _jsonable(result.metrics), "skipped": result.skipped,
        "targets": [{"id": o.target.id, "threshold": o.target.threshold, "measured": o.measured,
                     "status": o.status, "reason": o.reason} for o in outcomes],
        "comparisons": _jsonable(result.comparisons), "roofline": _jsonable(result.roofline),
        "trace": result.trace.to_dict() if result.trace is not None else None,
        "ncu": _jsonable(result.ncu), "context": _jsonable(result.context), "notes": result.notes,
        "date": fields["date"],
    }
    js = out_dir / f"{stem}.json"
    js.write_text(json.dumps(data, indent=2))
    return [md, js] + written + [post]
