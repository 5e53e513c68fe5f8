// Layer norm over the last axis: y = (x - mean) * rstd * w + b.
//
//   x, y, dy, dx (R, C); weight w, bias b, dweight, dbias (C,); mean, rstd (R,)
//
// forward:  mean_r = sum_c x_rc / C
//           var_r  = sum_c (x_rc - mean_r)^2 / C     (two passes, biased, as in PyTorch)
//           rstd_r = 1 / sqrt(var_r + eps),  xhat_rc = (x_rc - mean_r) rstd_r
// backward: dxhat = dy * w, and since xhat depends on x directly, through mean and through rstd,
//           dx = rstd (dxhat - mean_c(dxhat) - xhat mean_c(dxhat xhat))
//           dw = sum_r dy xhat,  db = sum_r dy
// The column sums dw, db are done without atomics: each block of
// layer_norm_backward_params writes the sums over one chunk of rows to
// partial_dw, partial_db (chunks, C), and the caller adds the chunks up.
#include "common.cuh"

// Grid: R blocks, one per row; blockDim.x a multiple of 32, threads stride over columns.
template <typename T>
__device__ __forceinline__ void layer_norm_forward(const T* __restrict__ x,
                                                   const T* __restrict__ weight,
                                                   const T* __restrict__ bias, T* __restrict__ y,
                                                   T* __restrict__ mean, T* __restrict__ rstd,
                                                   int C, T eps) {
    __shared__ T scratch[32];
    const int row = blockIdx.x;
    const T* x_row = x + (size_t)row * C;
    T* y_row = y + (size_t)row * C;

    T sum = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += x_row[c];
    const T row_mean = block_sum(sum, scratch) / T(C);

    T squares = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const T centered = x_row[c] - row_mean;
        squares += centered * centered;
    }
    const T row_rstd = T(1) / sqrt_of(block_sum(squares, scratch) / T(C) + eps);

    for (int c = threadIdx.x; c < C; c += blockDim.x)
        y_row[c] = (x_row[c] - row_mean) * row_rstd * weight[c] + bias[c];
    if (threadIdx.x == 0) {
        mean[row] = row_mean;
        rstd[row] = row_rstd;
    }
}

// dx, one block per row as in the forward.
template <typename T>
__device__ __forceinline__ void layer_norm_backward_input(const T* __restrict__ dy,
                                                          const T* __restrict__ x,
                                                          const T* __restrict__ weight,
                                                          const T* __restrict__ mean,
                                                          const T* __restrict__ rstd,
                                                          T* __restrict__ dx, int C) {
    __shared__ T scratch[32];
    const int row = blockIdx.x;
    const T* dy_row = dy + (size_t)row * C;
    const T* x_row = x + (size_t)row * C;
    T* dx_row = dx + (size_t)row * C;
    const T row_mean = mean[row], row_rstd = rstd[row];

    T sum_dxhat = T(0), sum_dxhat_xhat = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const T xhat = (x_row[c] - row_mean) * row_rstd;
        const T dxhat = mul_rounded(dy_row[c], weight[c]);  // as in the second loop
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * xhat;
    }
    const T mean_dxhat = block_sum(sum_dxhat, scratch) / T(C);
    const T mean_dxhat_xhat = block_sum(sum_dxhat_xhat, scratch) / T(C);

    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const T xhat = (x_row[c] - row_mean) * row_rstd;
        // rounded, not fused with "- mean_dxhat": with C = 1, dxhat - mean_dxhat is exactly 0
        const T dxhat = mul_rounded(dy_row[c], weight[c]);
        dx_row[c] = row_rstd * (dxhat                       // 1: direct
                                - mean_dxhat                // 2: through the mean
                                - xhat * mean_dxhat_xhat);  // 3: through rstd
    }
}

// Column sums of dy * xhat and dy over rows [chunk * rows_per_chunk, +rows_per_chunk).
// Grid: (ceil(C / 32), chunks); block: (32, PARAM_ROWS). Thread (tx, ty) owns column
// blockIdx.x * 32 + tx and rows ty, ty + PARAM_ROWS, ... of the chunk (coalesced over tx);
// the PARAM_ROWS partial sums of a column are then added in shared memory.
constexpr int PARAM_COLS = 32, PARAM_ROWS = 8;

template <typename T>
__device__ __forceinline__ void layer_norm_backward_params(const T* __restrict__ dy,
                                                           const T* __restrict__ x,
                                                           const T* __restrict__ mean,
                                                           const T* __restrict__ rstd,
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
            const T xhat = (x[at] - mean[row]) * rstd[row];
            dw += dy[at] * xhat;
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

#define LAYER_NORM(SUFFIX, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(1024) layer_norm_forward_##SUFFIX(              \
        const T* x, const T* weight, const T* bias, T* y, T* mean, T* rstd, int C, T eps) {      \
        layer_norm_forward<T>(x, weight, bias, y, mean, rstd, C, eps);                           \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(1024) layer_norm_backward_input_##SUFFIX(       \
        const T* dy, const T* x, const T* weight, const T* mean, const T* rstd, T* dx, int C) {  \
        layer_norm_backward_input<T>(dy, x, weight, mean, rstd, dx, C);                          \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(PARAM_COLS * PARAM_ROWS)                        \
        layer_norm_backward_params_##SUFFIX(const T* dy, const T* x, const T* mean,              \
                                            const T* rstd, T* partial_dw, T* partial_db, int R,  \
                                            int C, int rows_per_chunk) {                         \
        layer_norm_backward_params<T>(dy, x, mean, rstd, partial_dw, partial_db, R, C,           \
                                      rows_per_chunk);                                           \
    }

LAYER_NORM(f32, float)
LAYER_NORM(f64, double)
