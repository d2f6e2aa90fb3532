"""One step's integer inputs, packed on the host into ONE buffer and sent with ONE copy.

A step of hundreds of decodes needs, per row, its token, position, cache slot, context length and
block-table row. As separate tensors that is a dozen host->device copies, each a CUDA API call and a
possible host stall; row by row in Python it is slow host work. Here every field is a section of one
int32 array filled with list and numpy operations (the plan's columnar decodes by gathers from the
scheduler's ``BlockTableRows`` and by seat), staged in pinned memory and copied asynchronously; the
device tensors are views of the copy.

Rows are ordered decodes (one token after a cached context), then fresh prompt chunks (starting at
position 0), then later chunks of a chunked prefill. ``src[i] >= 0`` says that row i's token is still
on the device: it is row ``src[i]`` of the previous step's sampled tokens (overlapped steps; see
``engine``), and the forward pass takes it from there.

A CUDA-graph bucket of ``B`` rows uses the same layout padded to ``B`` rows and the full block-table
width, so its static buffer is refilled by a single copy: padding rows have slot -1 (the cache write
skips them) and context length 0 (the decode kernel returns zeros).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from operator import attrgetter

import numpy as np
import torch

from phase4_scheduler.plan import StepPlan
from phase4_scheduler.request import PENDING, Request

SECTIONS = ("tokens", "src", "positions", "slots", "context_lens", "block_tables", "sample_rows", "cu_seqlens",
            "later_pages", "later_cu")


_request_id = attrgetter("request_id")

ALIGN = 32  # elements (128 bytes): Triton specialises pointer arguments on 16-byte alignment, so a
# section that starts anywhere would compile a new kernel variant the first time it lands unaligned
WIDTH_ALIGN = 16  # block-table width (a kernel's row stride): a multiple of 16 is one specialisation


def layout(sizes: dict[str, int]) -> tuple[dict[str, tuple[int, int]], int]:
    """(start, length) of every section, each start aligned; the total length."""
    offsets, total = {}, 0
    for name in SECTIONS:
        offsets[name] = (total, sizes[name])
        total += -(-sizes[name] // ALIGN) * ALIGN
    return offsets, total


class HostStep:
    """The host half: chunk order, section sizes, the packed int32 array and the host-side scalars."""

    def __init__(self, plan: StepPlan, block_size: int, prev_rows: Mapping[int, int], *, pad_to: int | None = None,
                 width: int | None = None, prev_seat_rows: np.ndarray | None = None):
        """``prev_rows``: request id -> its row among the previous launch's samples. ``prev_seat_rows``:
        the same by ``BlockTableRows`` seat (an array: one gather for the columnar decodes), optional."""
        if plan.decode_tails and 0 in plan.decode_starts:  # a 1-token prompt in the columns is a fresh chunk:
            # list every chunk (only a tail, having no output yet, can start at 0)
            _ = plan.chunks
        decodes, fresh, later = [], [], []
        for c in plan.explicit_chunks:
            if c.num_tokens == 1 and c.start > 0:
                decodes.append(c)
            elif c.start == 0:
                fresh.append(c)
            else:
                later.append(c)
        self.decodes, self.fresh, self.later = decodes, fresh, later
        # Decode rows: the plan's columnar decodes (each samples), then 1-token chunks of ``chunks``.
        d_requests = plan.decode_requests + [c.request for c in decodes]
        d_starts = plan.decode_starts + [c.start for c in decodes]
        rows_of = plan.table_rows  # the columnar decodes' tables as matrix rows, when the scheduler keeps them
        if rows_of is not None and plan.decode_seats:
            seats = np.array(plan.decode_seats, dtype=np.int64)
            longest = int(rows_of.lens[seats].max())
            if decodes:
                longest = max(longest, max(len(c.block_table) for c in decodes))
            # a snapshot (fancy indexing copies): the matrix changes with the next schedule
            self._seat_tables = rows_of.table[seats, : min(longest, rows_of.table.shape[1])]
            tables = [c.block_table for c in decodes]  # the rows after the seats
        else:
            seats, longest, self._seat_tables = None, None, None
            tables = plan.decode_tables + [c.block_table for c in decodes]
        d_sample = [True] * len(plan.decode_requests) + [c.sample for c in decodes] if decodes else None
        self.sampled: list[Request] = plan.decode_requests + [c.request for c in decodes + fresh + later if c.sample]
        # each sampling row's seat (when every sampling request has one): where the runner records rows
        self.sampled_seats = None
        if seats is not None:
            extra = [r.kv_seat for r in self.sampled[len(plan.decode_requests):]]
            if not extra:
                self.sampled_seats = seats
            elif min(extra) >= 0:
                self.sampled_seats = np.concatenate([seats, np.array(extra, dtype=np.int64)])
        self.graph = pad_to is not None
        nd = len(d_requests)
        rows = pad_to if self.graph else nd  # decode rows (padded in a graph bucket)
        if width is None:
            if longest is None:
                longest = max(map(len, tables), default=0)
            width = -(-longest // WIDTH_ALIGN) * WIDTH_ALIGN
        self.width = width
        lens = [c.num_tokens for c in fresh]
        self.num_decode_tokens, self.num_fresh_tokens = nd, sum(lens)
        self.max_fresh = max(lens, default=0)
        self._decode_positions = np.array(d_starts, dtype=np.int64)
        self.max_context = int(self._decode_positions.max()) + 1 if nd else 0
        # A decode-only step whose every row samples needs no row selection before the LM head (and is
        # what a CUDA graph bucket runs); a 1-token chunk can also be the middle of a chunked prompt.
        all_decodes_sample = d_sample is None or all(d_sample)
        self.all_rows_sample = not fresh and not later and all_decodes_sample

        # ---- per-token fields: decodes first (one token each), then the prefill chunks. A decode's
        # token is its request's last one when it is the columns' (start = num_tokens - 1); a 1-token
        # chunk of ``chunks`` can be anywhere, so those look their position up.
        bs = block_size
        nc = len(plan.decode_requests)
        # in flight -> read from the previous step's samples on the device; else the last known token
        columns = plan.decode_requests
        if nc and not plan.decode_landed:  # overlapped steps: every last token is on the device
            head_tokens = None  # all 0
            head_src = prev_seat_rows[seats] if seats is not None and prev_seat_rows is not None else None
            if head_src is None or head_src.min() < 0:  # (no row recorded for a seat: ask by request id)
                head_src = list(map(prev_rows.__getitem__, map(_request_id, columns)))
            has_pending = True
        else:
            head_tokens = [0 if r.num_in_flight else (r.output_ids or r.prompt_ids)[-1] for r in columns]
            head_src = [prev_rows[r.request_id] if r.num_in_flight else -1 for r in columns]
            has_pending = nc > 0 and head_src.count(-1) < nc
        self._heads, self._num_columns = (head_tokens, head_src), nc
        tokens, src = [], []  # the rows after the columns'
        for c in decodes:  # the token at position start: prompt, output, or still on the device
            r, p = c.request, c.start
            i = p - len(r.prompt_ids)
            if i < 0:
                tokens.append(r.prompt_ids[p])
                src.append(-1)
            elif i < len(r.output_ids):
                tokens.append(r.output_ids[i])
                src.append(-1)
            else:
                tokens.append(0)
                src.append(prev_rows[r.request_id])
                has_pending = True
        self.has_pending = has_pending
        if self.all_rows_sample:
            sample_rows = []
        else:
            sample_rows = list(range(nd)) if all_decodes_sample else [i for i, smp in enumerate(d_sample) if smp]
        pages, later_cu, chunk_positions, chunk_slots = [], [], [], []
        # (row, n, start, page offset, pages, cu offset) of each later chunk
        self.later_spans: list[tuple[int, int, int, int, int, int]] = []
        row = nd
        for c in fresh + later:
            ids = c.request.all_ids[c.start:c.end]
            if ids[-1] == PENDING:  # a recomputed request whose last token is still in flight
                src += [-1] * (len(ids) - 1) + [prev_rows[c.request.request_id]]
                ids[-1] = 0
                self.has_pending = True
            else:
                src += [-1] * len(ids)
            tokens += ids
            pos = np.arange(c.start, c.end)
            chunk_positions.append(pos)
            chunk_slots.append(np.asarray(c.block_table, dtype=np.int64)[pos // bs] * bs + pos % bs)
            if c.start > 0:
                n_pages = -(-c.end // bs)
                self.later_spans.append((row, c.num_tokens, c.start, len(pages), n_pages, len(later_cu)))
                pages += c.block_table[:n_pages]
                later_cu += [0, c.end, 0, 0]  # 16-byte aligned pairs (a kernel argument each)
            row += c.num_tokens
            if c.sample:
                sample_rows.append(row - 1)
        self.num_real_rows = row
        self.num_rows = rows if self.graph else row  # graph padding: token 0, position 0, slot -1

        # ---- section sizes and the packed array
        sizes = dict(tokens=self.num_rows, src=self.num_rows, positions=self.num_rows, slots=self.num_rows,
                     context_lens=rows, block_tables=rows * self.width, sample_rows=len(sample_rows),
                     cu_seqlens=len(lens) + 1 if lens else 0, later_pages=len(pages), later_cu=len(later_cu))
        self.offsets, self.size = layout(sizes)
        self.block_size = bs
        self._rest = tokens, src
        self._fields = dict(sample_rows=sample_rows, later_pages=pages, later_cu=later_cu,
                            context_lens=self._decode_positions + 1,
                            cu_seqlens=np.concatenate([[0], np.cumsum(lens)]) if lens else [])
        self._chunk_positions, self._chunk_slots = chunk_positions, chunk_slots
        self._tables = tables

    @classmethod
    def graph_template(cls, rows: int, width: int) -> "HostStep":
        """The layout of a graph bucket (``rows`` decodes, block tables ``width`` wide), no plan behind it:
        what a capture reads. ``HostStep(plan, pad_to=rows, width=width)`` fills the same layout."""
        self = cls.__new__(cls)
        self.decodes, self.fresh, self.later, self.sampled, self.sampled_seats = [], [], [], [], None
        self.block_size, self._decode_positions, self._tables = 1, np.zeros(0, dtype=np.int64), []
        self._seat_tables, self._heads, self._rest, self._num_columns = None, (None, None), ([], []), 0
        self.graph, self.width, self.all_rows_sample, self.has_pending = True, width, True, True
        self.num_decode_tokens, self.num_fresh_tokens, self.max_fresh, self.max_context = rows, 0, 0, width
        self.later_spans, self.num_rows, self.num_real_rows = [], rows, 0
        sizes = dict(tokens=rows, src=rows, positions=rows, slots=rows, context_lens=rows, block_tables=rows * width,
                     sample_rows=0, cu_seqlens=0, later_pages=0, later_cu=0)
        self.offsets, self.size = layout(sizes)
        return self

    def fill(self, out: np.ndarray) -> None:
        """Write the packed sections into ``out`` (int32, at least ``size`` long, any prior content)."""
        o = self.offsets
        out[: self.size] = 0  # tokens of padding rows and of those on the device: 0
        nc = self._num_columns
        for name, head, rest in zip(("tokens", "src"), self._heads, self._rest, strict=True):
            at = o[name][0]
            if head is not None and nc:
                out[at:at + nc] = head
            if rest:
                out[at + nc:at + nc + len(rest)] = rest
        start, n = o["src"]
        out[start + self.num_real_rows:start + n] = -1  # graph padding rows read no previous sample
        for name, values in self._fields.items():
            start = o[name][0]
            if len(values):
                out[start:start + len(values)] = values
        nd = len(self._decode_positions)
        at = o["positions"][0]
        out[at:at + nd] = self._decode_positions
        at += nd
        for part in self._chunk_positions:
            out[at:at + len(part)] = part
            at += len(part)
        at = o["slots"][0] + nd
        for part in self._chunk_slots:
            out[at:at + len(part)] = part
            at += len(part)
        start, n = o["slots"]
        out[start + self.num_real_rows:start + n] = -1  # graph padding rows: the cache write skips them
        start, n = o["block_tables"]
        if nd and self.width:
            table = out[start:start + n].reshape(-1, self.width)
            first = 0
            if self._seat_tables is not None:  # the columnar decodes: one copy of their matrix rows
                first, w = self._seat_tables.shape
                table[:first, :w] = self._seat_tables
            if self._tables:  # lists (no matrix, or 1-token chunks after the columns): scattered
                lens = np.fromiter(map(len, self._tables), dtype=np.int64, count=len(self._tables))
                flat = np.fromiter(chain.from_iterable(self._tables), dtype=np.int32, count=int(lens.sum()))
                row_of = np.repeat(np.arange(first, first + len(lens)), lens)
                col_of = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
                table[row_of, col_of] = flat
            # a decode's cache slot: its block-table entry for its position, offset within the block
            bs, pos = self.block_size, self._decode_positions
            at = o["slots"][0]
            out[at:at + nd] = table[np.arange(nd), pos // bs] * bs + pos % bs

    def staged(self, device: torch.device) -> torch.Tensor:
        """The packed array in host memory a device copy can read asynchronously (pinned on CUDA).

        A fresh pinned block each step: PyTorch's host allocator does not hand it out again until the
        copy that reads it has finished, so the next step can be built while this one is in flight."""
        host = torch.empty(self.size, dtype=torch.int32, pin_memory=device.type == "cuda")
        self.fill(host.numpy())
        return host


class DeviceStep:
    """The device half: views of the packed buffer under the names the forward pass reads."""

    def __init__(self, host: HostStep, buffer: torch.Tensor, *, block_size: int):
        self.host = host
        empty = buffer[:0]  # shared by the empty sections (a pure decode step has four)
        views = {name: buffer[start:start + n] if n else empty for name, (start, n) in host.offsets.items()}
        self.tokens, self.src = views["tokens"], views["src"]
        self.positions, self.slots = views["positions"], views["slots"]
        self.context_lens = views["context_lens"]
        self.block_tables = views["block_tables"].view(-1, host.width) if host.width else views["block_tables"]
        self.sample_rows = None if host.all_rows_sample else views["sample_rows"]
        self.cu_seqlens = views["cu_seqlens"]
        pages, cu = views["later_pages"], views["later_cu"]
        # (first row, rows, start position, pages, cu_seqlens [0, end]) of each later chunk
        self.later = [(row, n, start, pages[off:off + k], cu[c:c + 2]) for row, n, start, off, k, c in host.later_spans]
        self.resolve_pending = host.graph or host.has_pending
        self.num_decode_tokens, self.num_fresh_tokens = host.num_decode_tokens, host.num_fresh_tokens
        self.max_fresh = host.max_fresh
        # A graph's kernels are fixed at capture: its decode bound is the whole block table.
        self.max_context = host.width * block_size if host.graph else host.max_context


def upload(host: HostStep, device: torch.device, *, block_size: int, into: torch.Tensor | None = None) -> DeviceStep:
    """Stage, copy (into ``into``, a graph's static buffer, when given) and wrap as device views."""
    staged = host.staged(device)
    if into is None:
        buffer = staged.to(device, non_blocking=True)
    else:
        into[: host.size].copy_(staged, non_blocking=True)
        buffer = into
    return DeviceStep(host, buffer, block_size=block_size)
