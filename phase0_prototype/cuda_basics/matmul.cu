// 03 — fp32 C[M,N] = A[M,K] · B[K,N], row-major. Three versions side by side (llm.c dev/cuda style).
//
// Arithmetic intensity is what changes: per multiply-add, how many bytes come from global memory.
//
// naive:       one output per thread, every operand from global memory: 2 loads per FMA (8 bytes/FMA).
//              Threads along x share a row of A (broadcast) and read consecutive B/C (coalesced), and
//              L1/L2 catch some reuse, but the SMs mostly wait on loads.
// tiled<TILE>: the block stages a TILE×TILE tile of A and of B in shared memory, then each thread does
//              TILE FMAs from shared memory per 2 global loads: global traffic falls by TILE×.
//              TILE 8/16/32 trade reuse against threads per block and shared memory (occupancy).
// tiled_4x4:   64×64 block tile, 16-wide K slab in shared memory, and each of the 256 threads keeps a
//              4×4 block of C in registers: 8 shared loads feed 16 FMAs (register blocking), which is
//              what lets a shared-memory kernel approach the FP32 pipes.

extern "C" __global__ void matmul_naive(const float* __restrict__ A, const float* __restrict__ B,
                                        float* __restrict__ C, int M, int N, int K) {
    int row = blockIdx.y * blockDim.y + threadIdx.y;
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= M || col >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += A[(long long)row * K + k] * B[(long long)k * N + col];
    C[(long long)row * N + col] = acc;
}

template <int TILE>
__device__ void matmul_tiled(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                             int M, int N, int K) {
    __shared__ float As[TILE][TILE];
    __shared__ float Bs[TILE][TILE + 1];  // +1: column reads of Bs would otherwise hit one bank
    int ty = threadIdx.y, tx = threadIdx.x;
    int row = blockIdx.y * TILE + ty;
    int col = blockIdx.x * TILE + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        As[ty][tx] = (row < M && k0 + tx < K) ? A[(long long)row * K + k0 + tx] : 0.0f;
        Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(long long)(k0 + ty) * N + col] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < TILE; ++k) acc += As[ty][k] * Bs[k][tx];
        __syncthreads();
    }
    if (row < M && col < N) C[(long long)row * N + col] = acc;
}

extern "C" __global__ void matmul_tiled_8(const float* A, const float* B, float* C, int M, int N, int K) {
    matmul_tiled<8>(A, B, C, M, N, K);
}
extern "C" __global__ void matmul_tiled_16(const float* A, const float* B, float* C, int M, int N, int K) {
    matmul_tiled<16>(A, B, C, M, N, K);
}
extern "C" __global__ void matmul_tiled_32(const float* A, const float* B, float* C, int M, int N, int K) {
    matmul_tiled<32>(A, B, C, M, N, K);
}

// Block (16, 16), grid (N/64, M/64); needs M, N multiples of 64 and K a multiple of 16 (checked on the host).
extern "C" __global__ void matmul_tiled_4x4(const float* __restrict__ A, const float* __restrict__ B,
                                            float* __restrict__ C, int M, int N, int K) {
    const int BM = 64, BN = 64, BK = 16;
    __shared__ float As[BM][BK + 1];
    __shared__ float Bs[BK][BN];
    int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
    int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {  // 256 threads load 64×16 of A and 16×64 of B, coalesced
            As[t / 16 + 16 * r][t % 16] = A[(long long)(row0 + t / 16 + 16 * r) * K + k0 + t % 16];
            Bs[t / 64 + 4 * r][t % 64] = B[(long long)(k0 + t / 64 + 4 * r) * N + col0 + t % 64];
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[ty + 16 * i][k];  // rows ty, ty+16, ...: a broadcast per half-warp
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];  // 16 consecutive columns: no bank conflict
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) C[(long long)(row0 + ty + 16 * i) * N + col0 + tx + 16 * j] = acc[i][j];
}

// tiled_8x8: the same idea one step further — 128×128 block tile, 8-deep K slab, each of the 256 threads
// keeps an 8×8 block of C in registers: 16 shared loads feed 64 FMAs. A is stored transposed in shared
// memory (As[k][m], padded by 4 so the transposing stores do not collide in one bank).
// Block (16, 16), grid (N/128, M/128); needs M, N multiples of 128 and K a multiple of 8.
extern "C" __global__ void matmul_tiled_8x8(const float* __restrict__ A, const float* __restrict__ B,
                                            float* __restrict__ C, int M, int N, int K) {
    const int BM = 128, BN = 128, BK = 8;
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN];
    int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
    int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    float acc[8][8] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            As[t % 8][t / 8 + 32 * r] = A[(long long)(row0 + t / 8 + 32 * r) * K + k0 + t % 8];
            Bs[t / 128 + 2 * r][t % 128] = B[(long long)(k0 + t / 128 + 2 * r) * N + col0 + t % 128];
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[8], b[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 8; ++j) b[j] = Bs[k][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) C[(long long)(row0 + ty + 16 * i) * N + col0 + tx + 16 * j] = acc[i][j];
}
