// Helpers shared by the minivlm kernels: math overloads for float and double,
// infinities, and warp / block reductions.
//
// The sources are compiled by NVRTC (through CuPy) and by nvcc (in the compile
// test), so this header includes nothing: NVRTC has no standard headers. The
// Python loader pastes this file in place of `#include "common.cuh"`.
#ifndef MINIVLM_COMMON_CUH
#define MINIVLM_COMMON_CUH

// ---- math that picks the float or double routine from the argument type ----
__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return exp(x); }
__device__ __forceinline__ float log_of(float x) { return logf(x); }
__device__ __forceinline__ double log_of(double x) { return log(x); }
__device__ __forceinline__ float sqrt_of(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_of(double x) { return sqrt(x); }
__device__ __forceinline__ float max_of(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_of(double a, double b) { return fmax(a, b); }
// a * b rounded on its own: never fused into a later add as an FMA, so a value that is
// summed and then subtracted again is the same number both times
__device__ __forceinline__ float mul_rounded(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rounded(double a, double b) { return __dmul_rn(a, b); }

// -inf and NaN from their bit patterns (NVRTC has no INFINITY / NAN macros)
template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() {
    return __int_as_float(static_cast<int>(0xff800000u));
}
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}
template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() {
    return __int_as_float(0x7fc00000);
}
template <> __device__ __forceinline__ double quiet_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000ll);
}

// exp(x - m) that is 0 when m is -inf (the row has seen no valid score yet):
// -inf - (-inf) would be NaN.
template <typename T> __device__ __forceinline__ T exp_shifted(T x, T m) {
    return m == neg_inf<T>() ? T(0) : exp_of(x - m);
}

// ---- reductions over aligned groups of `width` lanes of one warp ----
// Every lane of the warp must call these (full mask). width is a power of two <= 32
// and groups are aligned (lanes [k*width, (k+1)*width)), so xor offsets < width stay
// inside the group; every lane of the group gets the result.
template <typename T> __device__ __forceinline__ T group_sum(T value, int width) {
    for (int offset = width / 2; offset > 0; offset /= 2)
        value += __shfl_xor_sync(0xffffffffu, value, offset, width);
    return value;
}

template <typename T> __device__ __forceinline__ T group_max(T value, int width) {
    for (int offset = width / 2; offset > 0; offset /= 2)
        value = max_of(value, __shfl_xor_sync(0xffffffffu, value, offset, width));
    return value;
}

// ---- reductions over a whole block (blockDim.x a multiple of 32, at most 1024) ----
// scratch: __shared__ T[32]. Every thread gets the result. The trailing
// __syncthreads makes it safe to call again with the same scratch.
template <typename T> __device__ T block_sum(T value, T* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    value = group_sum(value, 32);
    if (lane == 0) scratch[warp] = value;
    __syncthreads();
    value = lane < warps ? scratch[lane] : T(0);
    value = group_sum(value, 32);
    __syncthreads();
    return value;
}

template <typename T> __device__ T block_max(T value, T* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    value = group_max(value, 32);
    if (lane == 0) scratch[warp] = value;
    __syncthreads();
    value = lane < warps ? scratch[lane] : neg_inf<T>();
    value = group_max(value, 32);
    __syncthreads();
    return value;
}

#endif  // MINIVLM_COMMON_CUH
