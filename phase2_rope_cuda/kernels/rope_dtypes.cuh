// Storage types and fp32 conversions shared by the RoPE kernels.
//
// Deliberately header-free (no <cuda_bf16.h>): NVRTC then compiles these files with nothing but the
// kernel source, on any machine that has libnvrtc, and the CPU CI can compile-check them. bf16 and
// fp16 are carried as their raw 16-bit patterns; conversions are single PTX cvt instructions
// (cvt.rn.bf16.f32 needs sm_80+, which is our floor: A100, H100, RTX 30xx/40xx).
#pragma once

typedef unsigned short u16;

// Each dtype tag says how an element is stored and how it converts to and from fp32, where all
// RoPE arithmetic happens (bf16 has 8 mantissa bits: rotating in bf16 would lose accuracy twice).
struct F32 {
    typedef float storage;
    static __device__ __forceinline__ float to_f32(float x) { return x; }
    static __device__ __forceinline__ float from_f32(float x) { return x; }
};

struct BF16 {
    typedef u16 storage;
    // bf16 is the top half of an fp32: widening is a shift.
    static __device__ __forceinline__ float to_f32(u16 x) { return __uint_as_float(((unsigned int)x) << 16); }
    static __device__ __forceinline__ u16 from_f32(float x) {
        u16 r;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));  // round to nearest even, like torch
        return r;
    }
};

struct F16 {
    typedef u16 storage;
    static __device__ __forceinline__ float to_f32(u16 x) {
        float r;
        asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(x));
        return r;
    }
    static __device__ __forceinline__ u16 from_f32(float x) {
        u16 r;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
        return r;
    }
};
