// Flash-attention forward: out = softmax(scale * Q K^T + mask) V, one pass over K and V,
// never materialising the (Lq, Lk) score matrix.
//
//   q (B, H, Lq, d), k and v (B, H, Lk, d), key_lengths (B,) int32
//   out (B, H, Lq, d), lse (B, H, Lq): log-sum-exp of each row's scaled, masked scores
//
// Grid: (B * H, ceil(Lq / BQ)); block: BQ * G threads. A block owns BQ query rows of
// one head and walks over the key tiles of BK rows, keeping per row the online-softmax
// state (m = running max, l = running sum of exp(s - m), acc = running sum of
// exp(s - m) * v). After all tiles, out = acc / l and lse = m + log(l).
//
// Thread layout: the G consecutive lanes tid = r * G + g own query row r of the tile.
// Lane g holds the scores of keys g, g + G, g + 2G, ... of the current key tile and
// the output columns g, g + G, g + 2G, ... of its row. Row max and row sum are
// reductions over the G lanes (warp shuffles); the P V product gets each p_j from the
// lane that holds it by a shuffle, so P never goes through shared memory.
#include "flash_attn_common.cuh"

template <typename T, int D, int BQ, int BK, int G>
__device__ __forceinline__ void flash_attn_forward(const T* __restrict__ q,
                                                   const T* __restrict__ k,
                                                   const T* __restrict__ v,
                                                   const int* __restrict__ key_lengths,
                                                   T* __restrict__ out, T* __restrict__ lse,
                                                   int H, int Lq, int Lk, int d, T scale,
                                                   int causal) {
    constexpr int NT = BQ * G;
    constexpr int KEYS_PER_LANE = BK / G;  // scores of the key tile held by one lane
    constexpr int COLS_PER_LANE = D / G;   // output columns held by one lane
    static_assert(G <= 32 && (G & (G - 1)) == 0, "a row's lanes must sit in one warp");
    static_assert(NT % 32 == 0 && NT <= 1024, "whole warps, at most 1024 threads");
    static_assert(BK % G == 0 && D % G == 0, "tiles must split evenly over a row's lanes");
    static_assert((BQ + 2 * BK) * (D + 1) * sizeof(T) <= 48 * 1024, "static shared memory");

    __shared__ T q_tile[BQ][D + 1];  // (BQ, D) queries of this block
    __shared__ T k_tile[BK][D + 1];  // (BK, D) current key tile
    __shared__ T v_tile[BK][D + 1];  // (BK, D) current value tile

    const int bh = blockIdx.x, b = bh / H;
    const int q0 = blockIdx.y * BQ;
    const int r = threadIdx.x / G, g = threadIdx.x % G;
    const int i = q0 + r;  // this lane's query row within the head
    const T* q_head = q + (size_t)bh * Lq * d;
    const T* k_head = k + (size_t)bh * Lk * d;
    const T* v_head = v + (size_t)bh * Lk * d;

    const int key_len = key_length(key_lengths, b, Lk);
    const int causal_offset = Lk - Lq;
    const int key_end = visible_key_end(q0, BQ, Lq, key_len, causal_offset, causal);

    load_tile<T, D, BQ, NT>(q_tile, q_head, q0, Lq, d);

    T m = neg_inf<T>();  // running max of row i's scores
    T l = T(0);          // running sum of exp(score - m)
    T acc[COLS_PER_LANE];  // running sum of exp(score - m) * v[:, g + G * u]
#pragma unroll
    for (int u = 0; u < COLS_PER_LANE; ++u) acc[u] = T(0);

    // key_end is the same for the whole block, so every thread runs the same tiles
    // and reaches every __syncthreads.
    for (int k0 = 0; k0 < key_end; k0 += BK) {
        __syncthreads();  // the previous tile is no longer read (first pass: q_tile is written)
        load_tile<T, D, BK, NT>(k_tile, k_head, k0, Lk, d);
        load_tile<T, D, BK, NT>(v_tile, v_head, k0, Lk, d);
        __syncthreads();

        // scores[t] = scale * q_i . k_j for key j = k0 + g + G t, -inf where masked
        T scores[KEYS_PER_LANE];
#pragma unroll
        for (int t = 0; t < KEYS_PER_LANE; ++t) scores[t] = T(0);
#pragma unroll 8
        for (int c = 0; c < D; ++c) {
            const T q_ic = q_tile[r][c];
#pragma unroll
            for (int t = 0; t < KEYS_PER_LANE; ++t) scores[t] += q_ic * k_tile[g + G * t][c];
        }
        T tile_max = neg_inf<T>();
#pragma unroll
        for (int t = 0; t < KEYS_PER_LANE; ++t) {
            const int j = k0 + g + G * t;
            scores[t] = key_visible(i, j, Lq, key_len, causal_offset, causal) ? scale * scores[t]
                                                                               : neg_inf<T>();
            tile_max = max_of(tile_max, scores[t]);
        }

        // online softmax: m_new = max(m, max_j s_j); rescale the old state by
        // alpha = exp(m - m_new) and add p_j = exp(s_j - m_new).
        // exp_shifted gives 0 instead of exp(-inf - (-inf)) = NaN while m_new is -inf.
        const T m_new = max_of(m, group_max(tile_max, G));
        const T alpha = exp_shifted(m, m_new);
        T probs[KEYS_PER_LANE];  // unnormalised p_j = exp(s_j - m_new)
        T tile_sum = T(0);
#pragma unroll
        for (int t = 0; t < KEYS_PER_LANE; ++t) {
            probs[t] = exp_shifted(scores[t], m_new);
            tile_sum += probs[t];
        }
        l = l * alpha + group_sum(tile_sum, G);
        m = m_new;

        // acc = alpha * acc + sum_j p_j v_j, where p_j of key g' + G t lives on lane g'
#pragma unroll
        for (int u = 0; u < COLS_PER_LANE; ++u) acc[u] *= alpha;
#pragma unroll
        for (int t = 0; t < KEYS_PER_LANE; ++t) {
#pragma unroll
            for (int lane = 0; lane < G; ++lane) {
                const T p_j = __shfl_sync(0xffffffffu, probs[t], lane, G);
                const T* v_j = v_tile[lane + G * t];
#pragma unroll
                for (int u = 0; u < COLS_PER_LANE; ++u) acc[u] += p_j * v_j[g + G * u];
            }
        }
    }

    // out = acc / l and lse = m + log(l); a row that saw no valid key has l = 0:
    // out = 0, lse = -inf.
    if (i < Lq) {
        T* out_row = out + ((size_t)bh * Lq + i) * d;
        const T inv_l = l > T(0) ? T(1) / l : T(0);
#pragma unroll
        for (int u = 0; u < COLS_PER_LANE; ++u) {
            const int c = g + G * u;
            if (c < d) out_row[c] = acc[u] * inv_l;
        }
        if (g == 0) lse[(size_t)bh * Lq + i] = l > T(0) ? m + log_of(l) : neg_inf<T>();
    }
}

// One extern "C" kernel per (dtype, head-dim bucket D). d <= D is padded with zeros.
// Tiles (BQ query rows, BK key rows, G lanes per row) keep the three shared tiles
// under 48 KiB; minivlm/kernels_cuda/attention.py holds the same table.
#define FLASH_ATTN_FORWARD(NAME, T, D, BQ, BK, G)                                            \
    extern "C" __global__ void __launch_bounds__(BQ * G)                                     \
        NAME(const T* q, const T* k, const T* v, const int* key_lengths, T* out, T* lse,     \
             int H, int Lq, int Lk, int d, T scale, int causal) {                            \
        flash_attn_forward<T, D, BQ, BK, G>(q, k, v, key_lengths, out, lse, H, Lq, Lk, d,    \
                                            scale, causal);                                  \
    }

FLASH_ATTN_FORWARD(flash_attn_forward_d32_f32, float, 32, 64, 64, 4)
FLASH_ATTN_FORWARD(flash_attn_forward_d64_f32, float, 64, 64, 32, 4)
FLASH_ATTN_FORWARD(flash_attn_forward_d128_f32, float, 128, 32, 16, 4)
FLASH_ATTN_FORWARD(flash_attn_forward_d32_f64, double, 32, 64, 32, 4)
FLASH_ATTN_FORWARD(flash_attn_forward_d64_f64, double, 64, 32, 16, 4)
FLASH_ATTN_FORWARD(flash_attn_forward_d128_f64, double, 128, 16, 8, 8)
