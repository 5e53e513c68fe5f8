// Layer norm over the last axis, optionally of a residual sum: y = LN(x) or y = LN(x + r),
//   LN(s) = (s - mean) * rstd * w + b.
//
//   x, r, y, xhat, dy, dx (R, C); weight w, bias b, dweight, dbias (C,); rstd (R,)
//
// forward:  s_rc   = x_rc (+ r_rc)                   (the sum is never stored)
//           mean_r = sum_c s_rc / C
//           var_r  = sum_c (s_rc - mean_r)^2 / C     (two passes, biased, as in PyTorch)
//           rstd_r = 1 / sqrt(var_r + eps),  xhat_rc = (s_rc - mean_r) rstd_r
//           xhat and rstd are written for the backward, which needs nothing else of x.
// backward: dxhat = dy * w, and since xhat depends on s directly, through mean and through
//           rstd,  ds = rstd (dxhat - mean_c(dxhat) - xhat mean_c(dxhat xhat));
//           dx = dr = ds (the caller hands the same array to both),
//           dw = sum_r dy xhat,  db = sum_r dy
// The column sums dw, db are done without atomics: each block of
// layer_norm_backward_params writes the sums over one chunk of rows to
// partial_dw, partial_db (chunks, C), and the caller adds the chunks up.
#include "common.cuh"

// Grid: R blocks, one per row; blockDim.x a multiple of 32, threads stride over columns.
// HAS_RESIDUAL: normalise x + residual instead of x (residual is not read otherwise).
template <typename T, bool HAS_RESIDUAL>
__device__ __forceinline__ void layer_norm_forward(const T* __restrict__ x,
                                                   const T* __restrict__ residual,
                                                   const T* __restrict__ weight,
                                                   const T* __restrict__ bias, T* __restrict__ y,
                                                   T* __restrict__ xhat, T* __restrict__ rstd,
                                                   int C, T eps) {
    __shared__ T scratch[32];
    const size_t row_start = (size_t)blockIdx.x * C;
    const auto summed = [&](int c) {  // s_rc, formed again in each pass instead of stored
        return HAS_RESIDUAL ? x[row_start + c] + residual[row_start + c] : x[row_start + c];
    };

    T sum = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += summed(c);
    const T row_mean = block_sum(sum, scratch) / T(C);

    T squares = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const T centered = summed(c) - row_mean;
        squares += centered * centered;
    }
    const T row_rstd = T(1) / sqrt_of(block_sum(squares, scratch) / T(C) + eps);

    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const T normalised = (summed(c) - row_mean) * row_rstd;
        xhat[row_start + c] = normalised;
        y[row_start + c] = normalised * weight[c] + bias[c];
    }
    if (threadIdx.x == 0) rstd[blockIdx.x] = row_rstd;
}

// dx, one block per row as in the forward.
template <typename T>
__device__ __forceinline__ void layer_norm_backward_input(const T* __restrict__ dy,
                                                          const T* __restrict__ xhat,
                                                          const T* __restrict__ weight,
                                                          const T* __restrict__ rstd,
                                                          T* __restrict__ dx, int C) {
    __shared__ T scratch[32];
    const size_t row_start = (size_t)blockIdx.x * C;
    const T* dy_row = dy + row_start;
    const T* xhat_row = xhat + row_start;
    T* dx_row = dx + row_start;

    T sum_dxhat = T(0), sum_dxhat_xhat = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const T dxhat = mul_rounded(dy_row[c], weight[c]);  // as in the second loop
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * xhat_row[c];
    }
    const T mean_dxhat = block_sum(sum_dxhat, scratch) / T(C);
    const T mean_dxhat_xhat = block_sum(sum_dxhat_xhat, scratch) / T(C);

    const T row_rstd = rstd[blockIdx.x];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        // rounded, not fused with "- mean_dxhat": with C = 1, dxhat - mean_dxhat is exactly 0
        const T dxhat = mul_rounded(dy_row[c], weight[c]);
        dx_row[c] = row_rstd * (dxhat                              // 1: direct
                                - mean_dxhat                       // 2: through the mean
                                - xhat_row[c] * mean_dxhat_xhat);  // 3: through rstd
    }
}

// Column sums of dy * xhat and dy over rows [chunk * rows_per_chunk, +rows_per_chunk).
// Grid: (ceil(C / 32), chunks); block: (32, PARAM_ROWS). Thread (tx, ty) owns column
// blockIdx.x * 32 + tx and rows ty, ty + PARAM_ROWS, ... of the chunk (coalesced over tx);
// the PARAM_ROWS partial sums of a column are then added in shared memory.
constexpr int PARAM_COLS = 32, PARAM_ROWS = 8;

template <typename T>
__device__ __forceinline__ void layer_norm_backward_params(const T* __restrict__ dy,
                                                           const T* __restrict__ xhat,
                                                           T* __restrict__ partial_dw,
                                                           T* __restrict__ partial_db, int R,
                                                           int C, int rows_per_chunk) {
    __shared__ T dw_part[PARAM_ROWS][PARAM_COLS + 1];
    __shared__ T db_part[PARAM_ROWS][PARAM_COLS + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * PARAM_COLS + tx;
    const int chunk = blockIdx.y;
    const int row_begin = chunk * rows_per_chunk;
    const int row_end = min(row_begin + rows_per_chunk, R);

    T dw = T(0), db = T(0);
    if (c < C) {
        for (int row = row_begin + ty; row < row_end; row += PARAM_ROWS) {
            const size_t at = (size_t)row * C + c;
            dw += dy[at] * xhat[at];
            db += dy[at];
        }
    }
    dw_part[ty][tx] = dw;
    db_part[ty][tx] = db;
    __syncthreads();
    if (ty == 0 && c < C) {
        for (int k = 1; k < PARAM_ROWS; ++k) {
            dw += dw_part[k][tx];
            db += db_part[k][tx];
        }
        partial_dw[(size_t)chunk * C + c] = dw;
        partial_db[(size_t)chunk * C + c] = db;
    }
}

#define LAYER_NORM(SUFFIX, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(1024) layer_norm_forward_##SUFFIX(             \
        const T* x, const T* weight, const T* bias, T* y, T* xhat, T* rstd, int C, T eps) {     \
        layer_norm_forward<T, false>(x, nullptr, weight, bias, y, xhat, rstd, C, eps);          \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(1024) add_layer_norm_forward_##SUFFIX(         \
        const T* x, const T* residual, const T* weight, const T* bias, T* y, T* xhat, T* rstd, \
        int C, T eps) {                                                                         \
        layer_norm_forward<T, true>(x, residual, weight, bias, y, xhat, rstd, C, eps);          \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(1024) layer_norm_backward_input_##SUFFIX(      \
        const T* dy, const T* xhat, const T* weight, const T* rstd, T* dx, int C) {             \
        layer_norm_backward_input<T>(dy, xhat, weight, rstd, dx, C);                            \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(PARAM_COLS * PARAM_ROWS)                       \
        layer_norm_backward_params_##SUFFIX(const T* dy, const T* xhat, T* partial_dw,          \
                                            T* partial_db, int R, int C, int rows_per_chunk) {  \
        layer_norm_backward_params<T>(dy, xhat, partial_dw, partial_db, R, C, rows_per_chunk);  \
    }

LAYER_NORM(f32, float)
LAYER_NORM(f64, double)
