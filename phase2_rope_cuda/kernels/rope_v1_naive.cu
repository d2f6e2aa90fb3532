// RoPE version 1 (the framework): one thread per element, written the way one first writes it.
//
// out[t, h, d] = x[t, h, d] * cos[pos_t, d mod D/2] + rotate_half(x)[t, h, d] * sin[pos_t, d mod D/2]
// with rotate_half(x) = [-x[D/2:], x[:D/2]]  (HF / GPT-NeoX convention).
//
// Memory traffic per element (why it is slow):
//   - x read twice (its own value and its rotation partner), 2 bytes per load instruction in bf16:
//     a warp moves 64 bytes per load where a 128-bit-per-thread load would move 512;
//   - position (8 bytes) and cos, sin (4 bytes each) re-read by every element: 64 (or 128) times
//     per head row, 36 heads per token — served by L1/L2, but each is an instruction and a wait;
//   - 64-bit division and modulo to find (token, head, d) from the flat index;
//   - one thread per element cannot rotate in place: thread d reads x[d + D/2] which thread
//     d + D/2 overwrites, in another warp, in no defined order. So it writes a separate output that
//     the host copies back: the data crosses DRAM twice.
// q and k are two launches (plus two copies): the wrapper calls this kernel once per tensor.
//
// cos_sin_cache: [max_position, head_dim] fp32, row p = [cos(p θ_0..θ_{D/2-1}), sin(p θ_0..θ_{D/2-1})].
#include "rope_dtypes.cuh"

template <typename T, typename PosT>
__device__ void rope_naive(const typename T::storage* __restrict__ x,  // [tokens, heads, head_dim] (strided)
                           typename T::storage* __restrict__ out,      // [tokens, heads, head_dim] contiguous
                           const PosT* __restrict__ positions,         // [tokens]
                           const float* __restrict__ cos_sin_cache,    // [max_position, head_dim]
                           long long num_tokens, int num_heads, int head_dim,
                           long long token_stride, long long head_stride) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = num_tokens * num_heads * head_dim;
    if (idx >= total) return;
    long long token = idx / ((long long)num_heads * head_dim);
    long long head = (idx / head_dim) % num_heads;
    long long d = idx % head_dim;
    long long half = head_dim / 2;

    long long pos = (long long)positions[token];
    long long i = d % half;
    float c = cos_sin_cache[pos * head_dim + i];
    float s = cos_sin_cache[pos * head_dim + half + i];

    const typename T::storage* row = x + token * token_stride + head * head_stride;
    float own = T::to_f32(row[d]);
    float partner = d < half ? -T::to_f32(row[d + half]) : T::to_f32(row[d - half]);
    out[idx] = T::from_f32(own * c + partner * s);
}

#define ROPE_NAIVE(NAME, T, PosT)                                                                     \
    extern "C" __global__ void NAME(const T::storage* x, T::storage* out, const PosT* positions,      \
                                    const float* cos_sin_cache, long long num_tokens, int num_heads,  \
                                    int head_dim, long long token_stride, long long head_stride) {    \
        rope_naive<T, PosT>(x, out, positions, cos_sin_cache, num_tokens, num_heads, head_dim,        \
                            token_stride, head_stride);                                               \
    }

ROPE_NAIVE(rope_v1_f32_pos64, F32, long long)
ROPE_NAIVE(rope_v1_bf16_pos64, BF16, long long)
ROPE_NAIVE(rope_v1_f16_pos64, F16, long long)
ROPE_NAIVE(rope_v1_f32_pos32, F32, int)
ROPE_NAIVE(rope_v1_bf16_pos32, BF16, int)
ROPE_NAIVE(rope_v1_f16_pos32, F16, int)
