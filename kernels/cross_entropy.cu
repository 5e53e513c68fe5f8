// Cross-entropy over the last axis of logits, with ignore_index and label smoothing.
//
//   logits z (N, V), targets t (N,) int32, loss (N,), d_loss (N,), d_logits (N, V);
//   row_max m (N,) and log_sum (N,): lse_i = m_i + log_sum_i, kept in two parts
//
// With eps = label_smoothing, the target distribution of row i is
//     y_ij = (1 - eps) [j == t_i] + eps / V
// and the loss is the cross-entropy against log_softmax(z_i) = z_i - lse_i:
//     loss_i = (1 - eps) (lse_i - z_i[t_i]) + eps (lse_i - mean_j z_ij)
// so the gradient is
//     d_logits_ij = d_loss_i (softmax_ij - (1 - eps) [j == t_i] - eps / V).
// Both are formed from logits shifted by the row max, lse_i - z_ij = log_sum_i - (z_ij - m_i):
// lse_i itself, rounded near a logit of 1e4 in float32, would have lost the loss's digits
// (1e4 + log 2 rounds to 1e4 + 0.69336).
// Rows with t_i == ignore_index have loss 0 and gradient 0. A target outside [0, V)
// (and not ignore_index) gives loss NaN and is never read from.
//
// Grid: N blocks, one per row; blockDim.x a multiple of 32, threads stride over the V columns.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void cross_entropy_forward(const T* __restrict__ logits,
                                                      const int* __restrict__ targets,
                                                      T* __restrict__ loss, T* __restrict__ max_out,
                                                      T* __restrict__ log_sum_out, int V,
                                                      int ignore_index, T label_smoothing) {
    __shared__ T scratch[32];
    const int row = blockIdx.x;
    const T* z = logits + (size_t)row * V;

    // pass 1: m_i = max_j z_ij
    T row_max = neg_inf<T>();
    for (int j = threadIdx.x; j < V; j += blockDim.x) row_max = max_of(row_max, z[j]);
    row_max = block_max(row_max, scratch);

    // pass 2: sum_j exp(z_ij - m_i) and sum_j (z_ij - m_i)
    T exp_sum = T(0), shifted_sum = T(0);
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        exp_sum += exp_shifted(z[j], row_max);
        shifted_sum += z[j] - row_max;
    }
    exp_sum = block_sum(exp_sum, scratch);
    shifted_sum = block_sum(shifted_sum, scratch);

    if (threadIdx.x == 0) {
        const T log_sum = log_of(exp_sum);  // lse_i - m_i; -inf when every logit is -inf
        max_out[row] = row_max;
        log_sum_out[row] = log_sum;
        const int target = targets[row];
        T row_loss;
        if (target == ignore_index) {
            row_loss = T(0);
        } else if (target < 0 || target >= V) {
            row_loss = quiet_nan<T>();
        } else {
            row_loss = (T(1) - label_smoothing) * (log_sum - (z[target] - row_max));
            // skipped when eps == 0 so a -inf logit cannot turn 0 * inf into NaN
            if (label_smoothing != T(0))
                row_loss += label_smoothing * (log_sum - shifted_sum / T(V));
        }
        loss[row] = row_loss;
    }
}

template <typename T>
__device__ __forceinline__ void cross_entropy_backward(const T* __restrict__ logits,
                                                       const int* __restrict__ targets,
                                                       const T* __restrict__ row_max,
                                                       const T* __restrict__ log_sum,
                                                       const T* __restrict__ d_loss,
                                                       T* __restrict__ d_logits, int V,
                                                       int ignore_index, T label_smoothing) {
    const int row = blockIdx.x;
    const T* z = logits + (size_t)row * V;
    T* d_z = d_logits + (size_t)row * V;
    const int target = targets[row];

    if (target == ignore_index) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) d_z[j] = T(0);
        return;
    }
    // forward was loss_i = sum_j y_ij (lse_i - z_ij), so d loss_i / d z_ij = softmax_ij - y_ij
    const T m = row_max[row], shift = log_sum[row], upstream = d_loss[row];
    const T smooth = label_smoothing / T(V);
    const T on_target = T(1) - label_smoothing;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const T softmax = exp_shifted(z[j] - m, shift);  // e^{(z_ij - m_i) - log_sum_i}
        const T y = (j == target ? on_target : T(0)) + smooth;
        d_z[j] = upstream * (softmax - y);
    }
}

#define CROSS_ENTROPY(SUFFIX, T)                                                               \
    extern "C" __global__ void __launch_bounds__(1024) cross_entropy_forward_##SUFFIX(         \
        const T* logits, const int* targets, T* loss, T* row_max, T* log_sum, int V,           \
        int ignore_index, T label_smoothing) {                                                 \
        cross_entropy_forward<T>(logits, targets, loss, row_max, log_sum, V, ignore_index,     \
                                 label_smoothing);                                             \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(1024) cross_entropy_backward_##SUFFIX(        \
        const T* logits, const int* targets, const T* row_max, const T* log_sum,              \
        const T* d_loss, T* d_logits, int V, int ignore_index, T label_smoothing) {            \
        cross_entropy_backward<T>(logits, targets, row_max, log_sum, d_loss, d_logits, V,      \
                                  ignore_index, label_smoothing);                              \
    }

CROSS_ENTROPY(f32, float)
CROSS_ENTROPY(f64, double)
