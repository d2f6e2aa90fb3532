// RoPE version 3 (the solution): a block per token group, cos/sin once per token, 128-bit accesses.
//
// Same math as v1 and v2 (HF / GPT-NeoX rotate-half, fp32 arithmetic); where v2 still moves 2 bytes per
// load and re-reads cos/sin per block, v3 is reorganised around memory traffic:
//   - thread layout: blockDim.x = CHUNKS x lanes, blockDim.y = tokens per block. A "chunk" is VEC
//     consecutive elements of the first half of a head (VEC x element = 16 bytes) together with the
//     matching VEC elements of the second half: the rotate-half partners. CHUNKS = (D/2) / VEC threads
//     cover one head (bf16, D=64: 4 threads). A thread keeps its chunk for every head it visits,
//     so it needs the same 2 x VEC cos/sin values for all of them: they are read ONCE per token into
//     registers (from the 256-byte cache row, which the block's threads share through L1).
//   - every q/k access is one 128-bit load or store (uint4): 16 bytes per instruction instead of 2,
//     8x fewer memory instructions and full 32-byte sectors per request.
//   - in place: a thread owns both partners of each rotation pair, so no other thread reads what it
//     writes; q and k go through DRAM exactly once (read + write).
//   - q heads and k heads (GQA: 32 and 4 for TinyLlama) are one index space, one launch.
//   - each thread issues the loads of up to HEADS_PER_ITER heads before using any of them, so every
//     SM keeps many bytes in flight (Little's law: ~3 TB/s x ~1 µs latency ≈ 3 MB across the GPU).
// Bytes per token (bf16, 32+4 heads, D=64): 36 x 64 x 2 x 2 = 9216 B of q/k + one 256-B cos/sin row.
//
// cos_sin_cache: [max_position, head_dim] fp32, row p = [cos(p θ_0..θ_{D/2-1}), sin(p θ_0..θ_{D/2-1})]
// (vLLM's layout: one contiguous row holds everything a token needs; the duplicated halves of HF's
// cat(freqs, freqs) are not stored). Requirements checked by the wrapper: the last dim of q/k is
// contiguous, base pointers and token/head strides are 16-byte aligned, head_dim is 64 or 128.
#include "rope_dtypes.cuh"

#define HEADS_PER_ITER 2

template <typename T>
union Pack16 {  // one 128-bit access viewed as elements
    uint4 raw;
    typename T::storage v[16 / sizeof(typename T::storage)];
};

template <typename T, int HEAD_DIM, typename PosT>
__device__ void rope_vectorized(typename T::storage* __restrict__ q,   // [tokens, q_heads, D] (strided)
                                typename T::storage* __restrict__ k,   // [tokens, kv_heads, D] (strided)
                                const PosT* __restrict__ positions,    // [tokens]
                                const float* __restrict__ cos_sin_cache,
                                int num_tokens, int num_q_heads, int num_kv_heads,
                                long long q_token_stride, long long q_head_stride,
                                long long k_token_stride, long long k_head_stride) {
    typedef typename T::storage S;
    constexpr int VEC = 16 / sizeof(S);
    constexpr int HALF = HEAD_DIM / 2;
    constexpr int CHUNKS = HALF / VEC;

    const long long token = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (token >= num_tokens) return;
    const int chunk = threadIdx.x % CHUNKS;
    const int lane = threadIdx.x / CHUNKS;
    const int lanes = blockDim.x / CHUNKS;
    const int num_heads = num_q_heads + num_kv_heads;

    // cos/sin for this token's position and this thread's chunk: 2 x VEC floats, loaded once.
    const float* row = cos_sin_cache + (long long)positions[token] * HEAD_DIM + chunk * VEC;
    float c[VEC], s[VEC];
#pragma unroll
    for (int j = 0; j < VEC; j += 4) {
        float4 cv = *reinterpret_cast<const float4*>(row + j);
        float4 sv = *reinterpret_cast<const float4*>(row + HALF + j);
        c[j] = cv.x; c[j + 1] = cv.y; c[j + 2] = cv.z; c[j + 3] = cv.w;
        s[j] = sv.x; s[j + 1] = sv.y; s[j + 2] = sv.z; s[j + 3] = sv.w;
    }

    for (int h0 = lane; h0 < num_heads; h0 += HEADS_PER_ITER * lanes) {
        S* ptr[HEADS_PER_ITER];
        Pack16<T> lo[HEADS_PER_ITER], hi[HEADS_PER_ITER];
        // Issue all loads first: they are independent, so their latencies overlap.
#pragma unroll
        for (int u = 0; u < HEADS_PER_ITER; ++u) {
            const int h = h0 + u * lanes;
            ptr[u] = nullptr;
            if (h < num_heads) {
                ptr[u] = h < num_q_heads ? q + token * q_token_stride + h * q_head_stride
                                         : k + token * k_token_stride + (h - num_q_heads) * k_head_stride;
                ptr[u] += chunk * VEC;
                lo[u].raw = *reinterpret_cast<const uint4*>(ptr[u]);
                hi[u].raw = *reinterpret_cast<const uint4*>(ptr[u] + HALF);
            }
        }
#pragma unroll
        for (int u = 0; u < HEADS_PER_ITER; ++u) {
            if (ptr[u] == nullptr) continue;
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                const float x1 = T::to_f32(lo[u].v[j]);
                const float x2 = T::to_f32(hi[u].v[j]);
                lo[u].v[j] = T::from_f32(x1 * c[j] - x2 * s[j]);
                hi[u].v[j] = T::from_f32(x2 * c[j] + x1 * s[j]);
            }
            *reinterpret_cast<uint4*>(ptr[u]) = lo[u].raw;
            *reinterpret_cast<uint4*>(ptr[u] + HALF) = hi[u].raw;
        }
    }
}

#define ROPE_VECTORIZED(NAME, T, D, PosT)                                                              \
    extern "C" __global__ void NAME(T::storage* q, T::storage* k, const PosT* positions,               \
                                    const float* cos_sin_cache, int num_tokens, int num_q_heads,       \
                                    int num_kv_heads, long long q_token_stride, long long q_head_stride, \
                                    long long k_token_stride, long long k_head_stride) {               \
        rope_vectorized<T, D, PosT>(q, k, positions, cos_sin_cache, num_tokens, num_q_heads,           \
                                    num_kv_heads, q_token_stride, q_head_stride, k_token_stride,       \
                                    k_head_stride);                                                    \
    }

ROPE_VECTORIZED(rope_v3_f32_hd64_pos64, F32, 64, long long)
ROPE_VECTORIZED(rope_v3_bf16_hd64_pos64, BF16, 64, long long)
ROPE_VECTORIZED(rope_v3_f16_hd64_pos64, F16, 64, long long)
ROPE_VECTORIZED(rope_v3_f32_hd128_pos64, F32, 128, long long)
ROPE_VECTORIZED(rope_v3_bf16_hd128_pos64, BF16, 128, long long)
ROPE_VECTORIZED(rope_v3_f16_hd128_pos64, F16, 128, long long)
ROPE_VECTORIZED(rope_v3_f32_hd64_pos32, F32, 64, int)
ROPE_VECTORIZED(rope_v3_bf16_hd64_pos32, BF16, 64, int)
ROPE_VECTORIZED(rope_v3_f16_hd64_pos32, F16, 64, int)
ROPE_VECTORIZED(rope_v3_f32_hd128_pos32, F32, 128, int)
ROPE_VECTORIZED(rope_v3_bf16_hd128_pos32, BF16, 128, int)
ROPE_VECTORIZED(rope_v3_f16_hd128_pos32, F16, 128, int)
