// AdamW over one param group's flat buffers: one launch updates every parameter of the group.
//
//   param, grad, exp_avg, exp_avg_sq (N,): the group's parameters laid end to end
//   ends (P,) int64: parameter k holds elements [ends[k - 1], ends[k]) (ends[-1] taken as 0)
//   factors (P, FACTORS) double: this step's numbers for parameter k, written by the host
//                                before the launch (minivlm/optim/flat_adamw.py)
//   grad_scale (1,) double: the gradient-clipping scale, 1 when not clipped
//
// The per-step numbers are read from device memory, never passed by value, so a captured
// CUDA graph that replays this launch sees each step's lr and bias corrections.
//
// A NaN grad_scale (the clipping saw a non-finite norm or loss) updates nothing. Else for
// element i of parameter k with factors[k][ACTIVE] != 0 (a parameter without a gradient
// this step is left alone, moments included):
//   g = grad * scale
//   p = p * decay                                   decay = 1 - lr * wd
//   v = beta2 * v + (1 - beta2) * g^2
//   m = beta1 * m + (1 - beta1) * g
//   p = p - step_size * m / (sqrt(v) / bias2_sqrt + eps)
//                                   step_size = lr / (1 - beta1^t), bias2_sqrt = sqrt(1 - beta2^t)
// Every operation is rounded on its own (the *_rn intrinsics: no FMA contraction), in the
// order of minivlm.optim.AdamW's NumPy code, so the result is that code's bit for bit.
#include "common.cuh"

// columns of factors; = FACTOR_COLUMNS in minivlm/optim/flat_adamw.py
enum AdamWFactor {
    ACTIVE, DECAY, BETA1, ONE_MINUS_BETA1, BETA2, ONE_MINUS_BETA2, BIAS2_SQRT, EPS, STEP_SIZE,
    FACTORS
};

// IEEE operations rounded to nearest, one at a time, for float and double
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }

// One parameter's factors, rounded to T (as NumPy rounds a Python float to float32).
template <typename T> struct Factors {
    bool active;
    T decay, beta1, one_minus_beta1, beta2, one_minus_beta2, bias2_sqrt, eps, step_size;
};

template <typename T> __device__ __forceinline__ Factors<T> load_factors(const double* row) {
    Factors<T> f;
    f.active = row[ACTIVE] != 0.0;
    f.decay = T(row[DECAY]);
    f.beta1 = T(row[BETA1]);
    f.one_minus_beta1 = T(row[ONE_MINUS_BETA1]);
    f.beta2 = T(row[BETA2]);
    f.one_minus_beta2 = T(row[ONE_MINUS_BETA2]);
    f.bias2_sqrt = T(row[BIAS2_SQRT]);
    f.eps = T(row[EPS]);
    f.step_size = T(row[STEP_SIZE]);
    return f;
}

// The parameter that holds element i: the first k with ends[k] > i (i < ends[count - 1]).
__device__ __forceinline__ int parameter_of(const long long* ends, int count, long long i) {
    int low = 0, high = count - 1;
    while (low < high) {
        const int mid = (low + high) / 2;
        if (ends[mid] > i) high = mid;
        else low = mid + 1;
    }
    return low;
}

// Grid-stride loop over the N elements; a thread walks forward through the parameters
// as its index grows and reloads the factors only when it enters a new one.
template <typename T>
__device__ __forceinline__ void adamw_step(T* __restrict__ param, const T* __restrict__ grad,
                                           T* __restrict__ exp_avg, T* __restrict__ exp_avg_sq,
                                           const double* __restrict__ factors,
                                           const long long* __restrict__ ends, int count,
                                           const double* __restrict__ grad_scale, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || grad_scale[0] != grad_scale[0]) return;  // NaN scale: no update at all
    const T scale = T(grad_scale[0]);
    int k = parameter_of(ends, count, i);
    Factors<T> f = load_factors<T>(factors + (size_t)k * FACTORS);
    for (; i < n; i += stride) {
        if (i >= ends[k]) {
            while (i >= ends[k]) ++k;
            f = load_factors<T>(factors + (size_t)k * FACTORS);
        }
        if (!f.active) continue;
        const T g = mul_rounded(grad[i], scale);
        const T p = mul_rounded(param[i], f.decay);
        // v = beta2 v + (1 - beta2) g^2,  m = beta1 m + (1 - beta1) g
        const T v = add_rn(mul_rounded(exp_avg_sq[i], f.beta2),
                           mul_rounded(mul_rounded(g, g), f.one_minus_beta2));
        const T m = add_rn(mul_rounded(exp_avg[i], f.beta1), mul_rounded(g, f.one_minus_beta1));
        // p - step_size m / (sqrt(v_hat) + eps), with sqrt(v_hat) = sqrt(v) / bias2_sqrt
        const T denominator = add_rn(div_rn(sqrt_rn(v), f.bias2_sqrt), f.eps);
        param[i] = sub_rn(p, mul_rounded(div_rn(m, denominator), f.step_size));
        exp_avg_sq[i] = v;
        exp_avg[i] = m;
    }
}

#define ADAMW(SUFFIX, T)                                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                           \
        adamw_step_##SUFFIX(T* param, const T* grad, T* exp_avg, T* exp_avg_sq,                 \
                            const double* factors, const long long* ends, int count,            \
                            const double* grad_scale, long long n) {                            \
        adamw_step<T>(param, grad, exp_avg, exp_avg_sq, factors, ends, count, grad_scale, n);   \
    }

ADAMW(f32, float)
ADAMW(f64, double)
