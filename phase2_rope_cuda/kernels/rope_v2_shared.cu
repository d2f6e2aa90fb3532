// RoPE version 2 (the middle step): a block per (token, head tile), cos/sin staged once in shared memory.
//
// Same math as v1 (HF / GPT-NeoX rotate-half, fp32 arithmetic). What changes, and what does not:
//   - thread layout: blockIdx.x = token, blockIdx.y = tile of HEADS_PER_BLOCK heads (q heads then k
//     heads, one index space: q and k in ONE launch); threadIdx.x = i < D/2 is a rotation pair
//     (x[i], x[i + D/2]), threadIdx.y the head within the tile;
//   - the token's position is read once per block and its cos/sin row (D fp32) is copied into shared
//     memory by the first row of threads; after __syncthreads every head of the tile reads cos[i],
//     sin[i] from shared memory: one global read of the row per block instead of one per element;
//   - a thread owns both elements of its pair, so it rotates IN PLACE (no scratch buffer, no copy
//     back: q and k cross DRAM once), and no 64-bit division finds (token, head, d);
//   - still scalar: every q/k access is one 2-byte (bf16) load or store, so a warp moves 64 bytes per
//     instruction where 128-bit accesses move 512 — v3's fix, with cos/sin kept in registers.
//
// cos_sin_cache: [max_position, head_dim] fp32, row p = [cos(p θ_0..θ_{D/2-1}), sin(p θ_0..θ_{D/2-1})].
// Requirements checked by the wrapper: last dim of q/k contiguous, head_dim even and ≤ MAX_HEAD_DIM.
#include "rope_dtypes.cuh"

#define MAX_HEAD_DIM 256

template <typename T, typename PosT>
__device__ void rope_shared(typename T::storage* __restrict__ q,   // [tokens, q_heads, D] (strided)
                            typename T::storage* __restrict__ k,   // [tokens, kv_heads, D] (strided)
                            const PosT* __restrict__ positions,    // [tokens]
                            const float* __restrict__ cos_sin_cache,
                            int num_q_heads, int num_kv_heads, int head_dim,
                            long long q_token_stride, long long q_head_stride,
                            long long k_token_stride, long long k_head_stride) {
    __shared__ float cos_sin[MAX_HEAD_DIM];
    const long long token = blockIdx.x;
    const int half = head_dim / 2;
    const int i = threadIdx.x;
    if (threadIdx.y == 0 && i < half) {  // one row of threads stages the row for the whole tile
        const float* row = cos_sin_cache + (long long)positions[token] * head_dim;
        cos_sin[i] = row[i];
        cos_sin[half + i] = row[half + i];
    }
    __syncthreads();  // every thread below reads what the first row wrote

    const int h = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= half || h >= num_q_heads + num_kv_heads) return;
    typename T::storage* x = h < num_q_heads ? q + token * q_token_stride + h * q_head_stride
                                             : k + token * k_token_stride + (h - num_q_heads) * k_head_stride;
    const float c = cos_sin[i];
    const float s = cos_sin[half + i];
    const float x1 = T::to_f32(x[i]);
    const float x2 = T::to_f32(x[i + half]);
    x[i] = T::from_f32(x1 * c - x2 * s);
    x[i + half] = T::from_f32(x2 * c + x1 * s);
}

#define ROPE_SHARED(NAME, T, PosT)                                                                     \
    extern "C" __global__ void NAME(T::storage* q, T::storage* k, const PosT* positions,               \
                                    const float* cos_sin_cache, int num_q_heads, int num_kv_heads,     \
                                    int head_dim, long long q_token_stride, long long q_head_stride,   \
                                    long long k_token_stride, long long k_head_stride) {               \
        rope_shared<T, PosT>(q, k, positions, cos_sin_cache, num_q_heads, num_kv_heads, head_dim,      \
                             q_token_stride, q_head_stride, k_token_stride, k_head_stride);            \
    }

ROPE_SHARED(rope_v2_f32_pos64, F32, long long)
ROPE_SHARED(rope_v2_bf16_pos64, BF16, long long)
ROPE_SHARED(rope_v2_f16_pos64, F16, long long)
ROPE_SHARED(rope_v2_f32_pos32, F32, int)
ROPE_SHARED(rope_v2_bf16_pos32, BF16, int)
ROPE_SHARED(rope_v2_f16_pos32, F16, int)
