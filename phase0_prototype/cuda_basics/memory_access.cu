// 02 — the same copy, two thread-to-element mappings. Both move every element of `in` to `out` once
// (8 bytes per element), so their useful bytes are equal; only the access pattern differs.
//
// coalesced: thread i touches element i. The 32 threads of a warp read 32 consecutive floats = 128 bytes
//            = four 32-byte sectors: one memory transaction per 32 useful bytes.
// strided:   thread i touches element (i % rows) * stride + i / rows. Warp neighbours are `stride` floats
//            apart, so with stride ≥ 8 each thread's 4 bytes sit in their own 32-byte sector: the memory
//            system moves 8× the useful bytes, and for arrays far larger than L2 the other 28 bytes of the
//            sector are evicted before the thread that needs them comes along.
extern "C" __global__ void copy_coalesced(const float* __restrict__ in, float* __restrict__ out, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}

extern "C" __global__ void copy_strided(const float* __restrict__ in, float* __restrict__ out, long long n,
                                        int stride) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long rows = n / stride;  // n is a multiple of stride: the mapping is a permutation
    long long e = (i % rows) * stride + i / rows;
    out[e] = in[e];
}
