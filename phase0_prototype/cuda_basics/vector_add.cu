// 01 — vector add: one thread per element. Reads 2 floats, writes 1: 12 bytes per element and one add,
// so it runs at memory bandwidth and says nothing about compute. Grid-stride loop so any grid covers n.
extern "C" __global__ void vector_add(const float* __restrict__ a, const float* __restrict__ b,
                                      float* __restrict__ c, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        c[i] = a[i] + b[i];
    }
}
