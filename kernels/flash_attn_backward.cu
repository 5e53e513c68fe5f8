// Flash-attention backward, deterministic (no atomics), in three kernels:
//
//   1. delta:  D_i = sum_c dO_ic O_ic                              one warp per query row
//   2. dk_dv:  one block per key tile, looping over the query tiles   -> dK, dV
//   3. dq:     one block per query tile, looping over the key tiles   -> dQ
//
// Both 2 and 3 recompute the probabilities of a (query tile, key tile) pair from the
// forward's lse instead of storing them. The forward was
//     S = scale Q K^T (+ mask),  P = exp(S - lse),  O = P V
// so, with dO the upstream gradient,
//     dV = P^T dO
//     dP = dO V^T
//     dS = P * (dP - D)        (softmax backward; D = rowsum(dO * O) = rowsum(P * dP))
//     dQ = scale dS K
//     dK = scale dS^T Q
// P = 0 where the entry is masked or the row's lse is -inf (a row with no visible key),
// so such rows and keys get zero gradients.
//
//   q, d_q (B, H, Lq, d); k, v, d_k, d_v (B, H, Lk, d); out, d_out (B, H, Lq, d)
//   lse, delta (B, H, Lq); key_lengths (B,) int32
#include "flash_attn_common.cuh"

// ---- 1. delta ---------------------------------------------------------------------------
// delta[row] = sum_c d_out[row, c] * out[row, c] over the rows = B * H * Lq rows of length d.
// Grid: ceil(rows / (blockDim.x / 32)); one warp per row, lanes stride over columns.
template <typename T>
__device__ __forceinline__ void flash_attn_backward_delta(const T* __restrict__ out,
                                                          const T* __restrict__ d_out,
                                                          T* __restrict__ delta, int rows,
                                                          int d) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;  // the whole warp leaves together, so the shuffles stay full
    const T* out_row = out + (size_t)row * d;
    const T* d_out_row = d_out + (size_t)row * d;
    T sum = T(0);
    for (int c = lane; c < d; c += 32) sum += d_out_row[c] * out_row[c];
    sum = group_sum(sum, 32);
    if (lane == 0) delta[row] = sum;
}

// ---- 2. dK, dV ------------------------------------------------------------------------
// Grid: (B * H, ceil(Lk / BK)); block: BK * G threads. A block owns BK keys of one head
// and accumulates their dK and dV rows over every query tile that can see them.
// Thread layout: lanes tid = r * G + g own key row r of the tile; lane g handles the
// queries g, g + G, ... of the current query tile (their P and dS entries in column r)
// and the columns g, g + G, ... of dK_r and dV_r.
template <typename T, int D, int BQ, int BK, int G>
__device__ __forceinline__ void flash_attn_backward_dk_dv(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const T* __restrict__ d_out, const T* __restrict__ lse, const T* __restrict__ delta,
    const int* __restrict__ key_lengths, T* __restrict__ d_k, T* __restrict__ d_v, int H, int Lq,
    int Lk, int d, T scale, int causal) {
    constexpr int NT = BK * G;
    constexpr int QUERIES_PER_LANE = BQ / G;  // entries of a P column held by one lane
    constexpr int COLS_PER_LANE = D / G;      // columns of dK_r, dV_r held by one lane
    static_assert(G <= 32 && (G & (G - 1)) == 0, "a key's lanes must sit in one warp");
    static_assert(NT % 32 == 0 && NT <= 1024, "whole warps, at most 1024 threads");
    static_assert(BQ % G == 0 && D % G == 0, "tiles must split evenly over a key's lanes");
    static_assert((2 * BQ + 2 * BK) * (D + 1) * sizeof(T) + 2 * BQ * sizeof(T) <= 48 * 1024,
                  "static shared memory");

    __shared__ T k_tile[BK][D + 1];      // (BK, D) this block's keys
    __shared__ T v_tile[BK][D + 1];      // (BK, D) this block's values
    __shared__ T q_tile[BQ][D + 1];      // (BQ, D) current query tile
    __shared__ T d_out_tile[BQ][D + 1];  // (BQ, D) its upstream gradients
    __shared__ T lse_tile[BQ];           // (BQ,)
    __shared__ T delta_tile[BQ];         // (BQ,)

    const int bh = blockIdx.x, b = bh / H;
    const int k0 = blockIdx.y * BK;
    const int r = threadIdx.x / G, g = threadIdx.x % G;
    const int j = k0 + r;  // this lane's key row within the head
    const size_t q_offset = (size_t)bh * Lq * d, k_offset = (size_t)bh * Lk * d;

    const int key_len = key_length(key_lengths, b, Lk);
    const int causal_offset = Lk - Lq;
    int q_begin, q_end;  // the query tiles that can see this block's keys
    visible_query_tiles(k0, BQ, Lq, key_len, causal_offset, causal, q_begin, q_end);

    load_tile<T, D, BK, NT>(k_tile, k + k_offset, k0, Lk, d);
    load_tile<T, D, BK, NT>(v_tile, v + k_offset, k0, Lk, d);

    T dk[COLS_PER_LANE], dv[COLS_PER_LANE];  // sums over queries of dS_ij q_i and P_ij dO_i
#pragma unroll
    for (int u = 0; u < COLS_PER_LANE; ++u) dk[u] = dv[u] = T(0);

    // q_begin and q_end are the same for the whole block: uniform loop, uniform barriers.
    for (int i0 = q_begin; i0 < q_end; i0 += BQ) {
        __syncthreads();  // the previous query tile is no longer read
        load_tile<T, D, BQ, NT>(q_tile, q + q_offset, i0, Lq, d);
        load_tile<T, D, BQ, NT>(d_out_tile, d_out + q_offset, i0, Lq, d);
        for (int e = threadIdx.x; e < BQ; e += NT) {
            const int i = i0 + e;
            lse_tile[e] = i < Lq ? lse[(size_t)bh * Lq + i] : neg_inf<T>();
            delta_tile[e] = i < Lq ? delta[(size_t)bh * Lq + i] : T(0);
        }
        __syncthreads();

        // For the queries i = i0 + g + G t of this lane and key j:
        //   s = q_i . k_j,  dp = dO_i . v_j,  P_ij = exp(scale s - lse_i),
        //   dS_ij = P_ij (dp - D_i)
        T dots[QUERIES_PER_LANE], d_dots[QUERIES_PER_LANE];
#pragma unroll
        for (int t = 0; t < QUERIES_PER_LANE; ++t) dots[t] = d_dots[t] = T(0);
#pragma unroll 4
        for (int c = 0; c < D; ++c) {
            const T k_jc = k_tile[r][c], v_jc = v_tile[r][c];
#pragma unroll
            for (int t = 0; t < QUERIES_PER_LANE; ++t) {
                dots[t] += q_tile[g + G * t][c] * k_jc;
                d_dots[t] += d_out_tile[g + G * t][c] * v_jc;
            }
        }
        T probs[QUERIES_PER_LANE], d_scores[QUERIES_PER_LANE];
#pragma unroll
        for (int t = 0; t < QUERIES_PER_LANE; ++t) {
            const int i_local = g + G * t;
            const T row_lse = lse_tile[i_local];
            const bool live = key_visible(i0 + i_local, j, Lq, key_len, causal_offset, causal) &&
                              row_lse != neg_inf<T>();
            probs[t] = live ? exp_of(scale * dots[t] - row_lse) : T(0);
            d_scores[t] = probs[t] * (d_dots[t] - delta_tile[i_local]);
        }

        // dV_j += sum_i P_ij dO_i and dK_j += sum_i dS_ij q_i (scale applied at the end),
        // where the entries of query g' + G t live on lane g'
#pragma unroll
        for (int t = 0; t < QUERIES_PER_LANE; ++t) {
#pragma unroll
            for (int lane = 0; lane < G; ++lane) {
                const T p_ij = __shfl_sync(0xffffffffu, probs[t], lane, G);
                const T ds_ij = __shfl_sync(0xffffffffu, d_scores[t], lane, G);
                const T* q_i = q_tile[lane + G * t];
                const T* d_out_i = d_out_tile[lane + G * t];
#pragma unroll
                for (int u = 0; u < COLS_PER_LANE; ++u) {
                    dv[u] += p_ij * d_out_i[g + G * u];
                    dk[u] += ds_ij * q_i[g + G * u];
                }
            }
        }
    }

    // every key row < Lk is written, zeros for keys no query could see
    if (j < Lk) {
        T* d_k_row = d_k + k_offset + (size_t)j * d;
        T* d_v_row = d_v + k_offset + (size_t)j * d;
#pragma unroll
        for (int u = 0; u < COLS_PER_LANE; ++u) {
            const int c = g + G * u;
            if (c < d) {
                d_k_row[c] = scale * dk[u];
                d_v_row[c] = dv[u];
            }
        }
    }
}

// ---- 3. dQ ------------------------------------------------------------------------------
// Grid: (B * H, ceil(Lq / BQ)); block: BQ * G threads. A block owns BQ queries of one head
// and accumulates their dQ rows over the key tiles they can see.
// Thread layout as in the forward: lanes tid = r * G + g own query row r; lane g handles
// keys g, g + G, ... of the current key tile and columns g, g + G, ... of dQ_r.
template <typename T, int D, int BQ, int BK, int G>
__device__ __forceinline__ void flash_attn_backward_dq(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const T* __restrict__ d_out, const T* __restrict__ lse, const T* __restrict__ delta,
    const int* __restrict__ key_lengths, T* __restrict__ d_q, int H, int Lq, int Lk, int d,
    T scale, int causal) {
    constexpr int NT = BQ * G;
    constexpr int KEYS_PER_LANE = BK / G;  // entries of a dS row held by one lane
    constexpr int COLS_PER_LANE = D / G;   // columns of dQ_r held by one lane
    static_assert(G <= 32 && (G & (G - 1)) == 0, "a row's lanes must sit in one warp");
    static_assert(NT % 32 == 0 && NT <= 1024, "whole warps, at most 1024 threads");
    static_assert(BK % G == 0 && D % G == 0, "tiles must split evenly over a row's lanes");
    static_assert((2 * BQ + 2 * BK) * (D + 1) * sizeof(T) <= 48 * 1024, "static shared memory");

    __shared__ T q_tile[BQ][D + 1];      // (BQ, D) this block's queries
    __shared__ T d_out_tile[BQ][D + 1];  // (BQ, D) their upstream gradients
    __shared__ T k_tile[BK][D + 1];      // (BK, D) current key tile
    __shared__ T v_tile[BK][D + 1];      // (BK, D) current value tile

    const int bh = blockIdx.x, b = bh / H;
    const int q0 = blockIdx.y * BQ;
    const int r = threadIdx.x / G, g = threadIdx.x % G;
    const int i = q0 + r;  // this lane's query row within the head
    const size_t q_offset = (size_t)bh * Lq * d, k_offset = (size_t)bh * Lk * d;

    const int key_len = key_length(key_lengths, b, Lk);
    const int causal_offset = Lk - Lq;
    const int key_end = visible_key_end(q0, BQ, Lq, key_len, causal_offset, causal);

    load_tile<T, D, BQ, NT>(q_tile, q + q_offset, q0, Lq, d);
    load_tile<T, D, BQ, NT>(d_out_tile, d_out + q_offset, q0, Lq, d);
    const T row_lse = i < Lq ? lse[(size_t)bh * Lq + i] : neg_inf<T>();
    const T row_delta = i < Lq ? delta[(size_t)bh * Lq + i] : T(0);

    T dq[COLS_PER_LANE];  // sum over keys of dS_ij k_j (scale applied at the end)
#pragma unroll
    for (int u = 0; u < COLS_PER_LANE; ++u) dq[u] = T(0);

    // key_end is the same for the whole block: uniform loop, uniform barriers.
    for (int k0 = 0; k0 < key_end; k0 += BK) {
        __syncthreads();  // the previous key tile is no longer read (first pass: q, dO written)
        load_tile<T, D, BK, NT>(k_tile, k + k_offset, k0, Lk, d);
        load_tile<T, D, BK, NT>(v_tile, v + k_offset, k0, Lk, d);
        __syncthreads();

        // For the keys j = k0 + g + G t of this lane and query i:
        //   s = q_i . k_j,  dp = dO_i . v_j,  P_ij = exp(scale s - lse_i),
        //   dS_ij = P_ij (dp - D_i)
        T dots[KEYS_PER_LANE], d_dots[KEYS_PER_LANE];
#pragma unroll
        for (int t = 0; t < KEYS_PER_LANE; ++t) dots[t] = d_dots[t] = T(0);
#pragma unroll 4
        for (int c = 0; c < D; ++c) {
            const T q_ic = q_tile[r][c], d_out_ic = d_out_tile[r][c];
#pragma unroll
            for (int t = 0; t < KEYS_PER_LANE; ++t) {
                dots[t] += q_ic * k_tile[g + G * t][c];
                d_dots[t] += d_out_ic * v_tile[g + G * t][c];
            }
        }
        T d_scores[KEYS_PER_LANE];
#pragma unroll
        for (int t = 0; t < KEYS_PER_LANE; ++t) {
            const int j = k0 + g + G * t;
            const bool live = key_visible(i, j, Lq, key_len, causal_offset, causal) &&
                              row_lse != neg_inf<T>();
            const T prob = live ? exp_of(scale * dots[t] - row_lse) : T(0);
            d_scores[t] = prob * (d_dots[t] - row_delta);
        }

        // dQ_i += sum_j dS_ij k_j, where the entry of key g' + G t lives on lane g'
#pragma unroll
        for (int t = 0; t < KEYS_PER_LANE; ++t) {
#pragma unroll
            for (int lane = 0; lane < G; ++lane) {
                const T ds_ij = __shfl_sync(0xffffffffu, d_scores[t], lane, G);
                const T* k_j = k_tile[lane + G * t];
#pragma unroll
                for (int u = 0; u < COLS_PER_LANE; ++u) dq[u] += ds_ij * k_j[g + G * u];
            }
        }
    }

    // every query row < Lq is written, zeros for rows that saw no key
    if (i < Lq) {
        T* d_q_row = d_q + q_offset + (size_t)i * d;
#pragma unroll
        for (int u = 0; u < COLS_PER_LANE; ++u) {
            const int c = g + G * u;
            if (c < d) d_q_row[c] = scale * dq[u];
        }
    }
}

// ---- extern "C" kernels -------------------------------------------------------------------
// One per (dtype, head-dim bucket D); d <= D is padded with zeros. BQ query rows and BK key
// rows per tile, G lanes per owned row: the four (rows, D) shared tiles stay under 48 KiB.
// minivlm/kernels_cuda/attention.py holds the same table.
#define FLASH_ATTN_BACKWARD_DELTA(NAME, T)                                                     \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        NAME(const T* out, const T* d_out, T* delta, int rows, int d) {                        \
        flash_attn_backward_delta<T>(out, d_out, delta, rows, d);                              \
    }

#define FLASH_ATTN_BACKWARD_DK_DV(NAME, T, D, BQ, BK, G)                                       \
    extern "C" __global__ void __launch_bounds__(BK * G)                                       \
        NAME(const T* q, const T* k, const T* v, const T* d_out, const T* lse, const T* delta, \
             const int* key_lengths, T* d_k, T* d_v, int H, int Lq, int Lk, int d, T scale,    \
             int causal) {                                                                     \
        flash_attn_backward_dk_dv<T, D, BQ, BK, G>(q, k, v, d_out, lse, delta, key_lengths,    \
                                                   d_k, d_v, H, Lq, Lk, d, scale, causal);     \
    }

#define FLASH_ATTN_BACKWARD_DQ(NAME, T, D, BQ, BK, G)                                          \
    extern "C" __global__ void __launch_bounds__(BQ * G)                                       \
        NAME(const T* q, const T* k, const T* v, const T* d_out, const T* lse, const T* delta, \
             const int* key_lengths, T* d_q, int H, int Lq, int Lk, int d, T scale,            \
             int causal) {                                                                     \
        flash_attn_backward_dq<T, D, BQ, BK, G>(q, k, v, d_out, lse, delta, key_lengths, d_q,  \
                                                H, Lq, Lk, d, scale, causal);                  \
    }

FLASH_ATTN_BACKWARD_DELTA(flash_attn_backward_delta_f32, float)
FLASH_ATTN_BACKWARD_DELTA(flash_attn_backward_delta_f64, double)

FLASH_ATTN_BACKWARD_DK_DV(flash_attn_backward_dk_dv_d32_f32, float, 32, 64, 64, 4)
FLASH_ATTN_BACKWARD_DK_DV(flash_attn_backward_dk_dv_d64_f32, float, 64, 32, 32, 4)
FLASH_ATTN_BACKWARD_DK_DV(flash_attn_backward_dk_dv_d128_f32, float, 128, 16, 16, 8)
FLASH_ATTN_BACKWARD_DK_DV(flash_attn_backward_dk_dv_d32_f64, double, 32, 32, 32, 4)
FLASH_ATTN_BACKWARD_DK_DV(flash_attn_backward_dk_dv_d64_f64, double, 64, 16, 16, 8)
FLASH_ATTN_BACKWARD_DK_DV(flash_attn_backward_dk_dv_d128_f64, double, 128, 8, 8, 8)

FLASH_ATTN_BACKWARD_DQ(flash_attn_backward_dq_d32_f32, float, 32, 64, 64, 4)
FLASH_ATTN_BACKWARD_DQ(flash_attn_backward_dq_d64_f32, float, 64, 32, 32, 4)
FLASH_ATTN_BACKWARD_DQ(flash_attn_backward_dq_d128_f32, float, 128, 16, 16, 8)
FLASH_ATTN_BACKWARD_DQ(flash_attn_backward_dq_d32_f64, double, 32, 32, 32, 4)
FLASH_ATTN_BACKWARD_DQ(flash_attn_backward_dq_d64_f64, double, 64, 16, 16, 8)
FLASH_ATTN_BACKWARD_DQ(flash_attn_backward_dq_d128_f64, double, 128, 8, 8, 8)
