"""GPU-busy %, gaps and launch overhead on synthetic traces whose answers are known by hand."""

import random

import pytest
import torch

from module0_profiling.trace import (
    REGION,
    mean_gap,
    parse_ncu_csv,
    profile_region,
    summarize_chrome_trace,
    union_length,
)


def _ev(name, cat, ts, dur, tid=1):
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "tid": tid}


def test_union_length_merges_overlaps():
    assert union_length([(0, 10), (5, 15), (20, 30)]) == 25
    assert union_length([]) == 0
    # random disjoint intervals: the union is their sum
    starts = sorted(random.sample(range(0, 10_000, 20), 30))
    ivs = [(s, s + random.randint(1, 19)) for s in starts]
    assert union_length(ivs) == sum(e - s for s, e in ivs)


def test_mean_gap():
    assert mean_gap([(0, 10), (15, 20), (30, 40)]) == pytest.approx((5 + 10) / 2)
    assert mean_gap([(0, 10)]) is None
    assert mean_gap([(0, 10), (5, 12)]) == 0


def test_summary_of_synthetic_gpu_trace():
    # region 0..100 µs; kernels busy 10..30, 25..40 (overlap), 60..70 -> union 40 µs
    events = [
        _ev(REGION, "user_annotation", 0, 100),
        _ev("gemv", "kernel", 10, 20, tid=7),
        _ev("gemv", "kernel", 25, 15, tid=8),
        _ev("copy", "gpu_memcpy", 60, 10, tid=7),
        _ev("cudaLaunchKernel", "cuda_runtime", 5, 4),
        _ev("cudaLaunchKernel", "cuda_runtime", 20, 6),
        _ev("cudaMemcpyAsync", "cuda_runtime", 50, 3),
        _ev("outside", "kernel", 500, 10, tid=7),  # after the region: ignored
    ]
    s = summarize_chrome_trace({"traceEvents": events}, iters=2)
    assert s.device_kind == "cuda"
    assert s.wall_s == pytest.approx(100e-6)
    assert s.busy_s == pytest.approx(40e-6)
    assert s.gpu_busy == pytest.approx(0.40)
    assert s.gpu_span_s == pytest.approx(60e-6)  # first kernel start 10 µs -> last end 70 µs
    assert s.launches == 3
    assert s.launch_calls == 2
    assert s.launch_overhead_s == pytest.approx(5e-6)
    assert s.mean_gap_s == pytest.approx((0 + 20) / 2 * 1e-6)
    assert [k.name for k in s.kernels] == ["gemv", "copy"]
    assert s.kernels[0].calls == 2 and s.kernels[0].share == pytest.approx(35 / 45)


def test_gpu_work_past_the_cpu_marker_extends_wall_time():
    events = [_ev(REGION, "user_annotation", 0, 50), _ev("k", "kernel", 40, 60)]
    s = summarize_chrome_trace({"traceEvents": events})
    assert s.wall_s == pytest.approx(100e-6)
    assert s.gpu_busy == pytest.approx(0.6)


def test_cpu_trace_counts_outermost_ops_only():
    events = [
        _ev(REGION, "user_annotation", 0, 100),
        _ev("aten::linear", "cpu_op", 10, 40),
        _ev("aten::addmm", "cpu_op", 12, 35),  # nested inside linear
        _ev("aten::relu", "cpu_op", 60, 10),
    ]
    s = summarize_chrome_trace({"traceEvents": events})
    assert s.device_kind == "cpu" and s.gpu_busy is None
    assert [k.name for k in s.kernels] == ["aten::linear", "aten::relu"]
    assert sum(k.share for k in s.kernels) == pytest.approx(1.0)


def test_profile_region_on_cpu_sees_the_ops():
    a = torch.randn(64, 64)
    s = profile_region(lambda: torch.relu(a @ a), iters=3)
    names = {k.name for k in s.kernels}
    assert {"aten::matmul", "aten::relu"} <= names
    assert s.iters == 3 and s.wall_s > 0


def test_parse_ncu_csv():
    text = (
        '==PROF== Connected\n"ID","Process ID","Kernel Name","Metric Name","Metric Unit","Metric Value"\n'
        '"0","1","gemv_kernel","dram__throughput.avg.pct_of_peak_sustained_elapsed","%","87.5"\n'
        '"0","1","gemv_kernel","launch__registers_per_thread","register/thread","40"\n'
        '"0","1","gemv_kernel","gpu__time_duration.sum","usecond","12.5"\n'
        '"0","1","gemv_kernel","dram__bytes_read.sum","Mbyte","23.07"\n'
        '"0","1","gemv_kernel","l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum","sector","720,896"\n'
        '"1","1","other","sm__warps_active.avg.pct_of_peak_sustained_active","%","55"\n'
        '"1","1","other","dram__bytes_read.sum","Kbyte","4.10"\n'
    )
    ks = parse_ncu_csv(text)
    assert [k.name for k in ks] == ["gemv_kernel", "other"]
    assert ks[0].dram_pct == 87.5 and ks[0].registers == 40 and ks[0].duration_s == pytest.approx(12.5e-6)
    assert ks[0].dram_read_bytes == pytest.approx(23.07e6) and ks[0].load_sectors == 720_896
    assert ks[1].occupancy_pct == 55 and ks[1].dram_pct is None and ks[1].dram_read_bytes == pytest.approx(4100)
