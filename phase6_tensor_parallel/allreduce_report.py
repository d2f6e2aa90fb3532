"""The all-reduce study's report: a markdown table per algorithm and the log-log plot (``allreduce_study``'s
analysed runs in, text and a PNG out).

Each table puts the default sweep (NCCL picks the protocol: P6.4's "measured") beside every forced
protocol's sweep, the envelope model (minimum over the protocols' own α-β lines, and which protocol it
picks), and the single minimax line fitted to the default sweep, so the gap between NCCL's per-protocol
model and one line is visible size by size. Runs without protocol sweeps (gloo, or results saved before
they existed) get the single-line columns only.
"""

from __future__ import annotations

from phase6_tensor_parallel.allreduce_study import KB, MB, PROTOCOLS, AlphaBeta, protocol_lines


def human_bytes(n: int) -> str:
    return f"{n / MB:.0f} MB" if n >= MB else f"{n / KB:.0f} KB"


def _err(model: float, t: float) -> str:
    return f"{100 * (model - t) / t:+.0f} %"


def _line_text(ab: AlphaBeta) -> str:
    return f"α = {ab.alpha_s * 1e6:.2f} µs, 1/β = {ab.link_gbps:.1f} GB/s"


def _protocol_names(r: dict) -> list[str]:
    """Protocols in NCCL's order first (LL, LL128, Simple), then any other name the run holds."""
    protos = r.get("protocols") or {}
    return [p for p in PROTOCOLS if p in protos] + [p for p in protos if p not in PROTOCOLS]


def _forced_us(pr: dict, n: int) -> str:
    if "seconds" not in pr or n not in pr["sizes"]:
        return "—"
    return f"{pr['seconds'][pr['sizes'].index(n)] * 1e6:.1f}"


def algo_table(r: dict) -> str:
    """One algorithm: per size the measured times, the envelope and single-line predictions, their errors."""
    one = AlphaBeta(**r["fit"])
    names = _protocol_names(r)
    env = "envelope_seconds" in r
    head = ["size", f"{r['algo']} µs (NCCL picks)"] + [f"{p} forced µs" for p in names]
    head += ["envelope µs", "envelope picks", "envelope error"] if env else []
    head += ["one line µs", "one-line error"] + (["busbw GB/s"] if "busbw_gbps" in r else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, n in enumerate(r["sizes"]):
        t = r["seconds"][i]
        cells = [human_bytes(n), f"{t * 1e6:.1f}"] + [_forced_us(r["protocols"][p], n) for p in names]
        if env:
            cells += [f"{r['envelope_seconds'][i] * 1e6:.1f}", r["envelope_protocol"][i],
                      _err(r["envelope_seconds"][i], t)]
        cells += [f"{one.predict(n) * 1e6:.1f}", _err(one.predict(n), t)]
        cells += [f"{r['busbw_gbps'][i]:.1f}"] if "busbw_gbps" in r else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fit_lines(r: dict) -> list[str]:
    """The fitted constants and worst errors of one algorithm, one sentence each."""
    algo, one = r["algo"], AlphaBeta(**r["fit"])
    out = []
    if "envelope_error" in r:
        used = ", ".join(protocol_lines(r))
        out.append(f"{algo}, envelope of the {used} lines vs NCCL's own choice: worst error "
                   f"{100 * r['envelope_error']:.1f} % (P6.4)")
    elif "protocols" in r:
        out.append(f"{algo}, envelope: n/a (no forced-protocol sweep succeeded)")
    else:
        out.append(f"{algo}, envelope: n/a (no forced-protocol sweeps in this run)")
    line = f"{algo}, one line: {_line_text(one)}"
    if "model_error" in r:
        line += f", worst error {100 * r['model_error']:.1f} %"
    line += " (minimax fit)"
    if "fit_lsq" in r:
        line += f"; least squares: {_line_text(AlphaBeta(**r['fit_lsq']))}, worst error {100 * r['model_error_lsq']:.1f} %"
    out.append(line)
    for p in _protocol_names(r):
        pr = r["protocols"][p]
        if "skipped" in pr:
            out.append(f"{algo}, {p} forced: skipped ({pr['skipped']})")
        else:
            out.append(f"{algo}, {p} forced: {_line_text(AlphaBeta(**pr['fit']))}, worst error "
                       f"{100 * pr['model_error']:.1f} % on its own sweep (minimax fit)")
    return out


def table(results: list[dict]) -> str:
    """Markdown for the report: per algorithm its table and its fitted lines, then the timing method."""
    parts = []
    for r in results:
        parts.append(algo_table(r) + "\n\n" + "\n\n".join(fit_lines(r)))
    method = results[0].get("method") if results else None
    return "\n\n".join(parts) + (f"\n\nTiming: {method}." if method else "")


def plot(results: list[dict], path: str) -> str | None:
    """One log-log panel per algorithm: the default sweep's points, each forced protocol's points and its
    line, the envelope and the single line; ``None`` when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, max(len(results), 1), figsize=(6 * max(len(results), 1), 4.5), squeeze=False)
    for ax, r in zip(axes[0], results, strict=False):
        sizes, us = r["sizes"], (lambda s: s * 1e6)
        ax.loglog(sizes, [us(t) for t in r["seconds"]], "o", color="black", label="measured (NCCL picks)")
        lines = protocol_lines(r)
        for j, p in enumerate(_protocol_names(r)):
            pr, color = r["protocols"][p], f"C{j + 1}"  # one colour per protocol: its points and its line
            if p not in lines:
                ax.plot([], [], " ", label=f"{p}: skipped")
                continue
            ax.loglog(pr["sizes"], [us(t) for t in pr["seconds"]], "x", color=color, label=f"{p} forced")
            ax.loglog(sizes, [us(lines[p].predict(n)) for n in sizes], ":", color=color, label=f"{p} α-β line")
        if "envelope_seconds" in r:
            ax.loglog(sizes, [us(t) for t in r["envelope_seconds"]], "-", color="black",
                      label=f"envelope (min of lines), worst {100 * r['envelope_error']:.0f} %")
        one = AlphaBeta(**r["fit"])
        label = "one line (minimax)" + (f", worst {100 * r['model_error']:.0f} %" if "model_error" in r else "")
        ax.loglog(sizes, [us(one.predict(n)) for n in sizes], "--", color="C0", label=label)
        ax.set_title(f"{r['algo']} all-reduce")
        ax.set_xlabel("message bytes")
        ax.set_ylabel("µs per all-reduce")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
