// Flash-attention backward on tensor cores (float32, sm_80+): the math, arguments,
// masks and launch order of flash_attn_backward.cu (delta there, then these two), every
// product taken by mma.sync in TF32, three MMAs a product (3xTF32) or one (PASSES = 1).
// The forward was S = scale Q K^T (+ mask), P = exp(S - lse), O = P V, so
//     dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dQ = scale dS K,  dK = scale dS^T Q
// Deterministic: each output row is summed by one warp in a fixed order, no atomics.
//
//   q, d_q (B, H, Lq, d); k, v, d_k, d_v (B, H, Lk, d); d_out (B, H, Lq, d)
//   lse, delta (B, H, Lq); key_lengths (B,) int32
//
// Both kernels chain two warp products as the forward does (mma_tf32.cuh): a product
// whose columns come out in the chained order feeds the next MMA as its A operand.
// A tile read both ways (rows as the n index of one product, as the k index of the
// next) has the row stride D + 4: the second read has 2-way bank conflicts.
#include "flash_attn_mma_common.cuh"

// ---- dQ -------------------------------------------------------------------------------
// Grid: (B * H, ceil(Lq / BQ)); block: WARPS warps, BQ = 16 WARPS queries, warp w owns
// queries q0 + 16 w .. + 15. For each key tile of BK keys:
//   s = Q K^T, p = exp(scale s - lse)    (16 x BK) chained key order
//   dp = dO V^T                           (16 x BK) the same order
//   ds = p (dp - delta);  dq += ds K      (16 x D)
template <int D, int BQ, int BK> struct DqTiles {
    static constexpr int Q = D + ROWS_PAD, DO = D + ROWS_PAD, K = D + ROWS_PAD, V = D + ROWS_PAD;
    static constexpr unsigned BYTES = 4 * (BQ * (Q + DO) + BK * (K + V));
};

template <int D, int BK, int WARPS, int PASSES>
__device__ __forceinline__ void flash_attn_mma_backward_dq(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ d_out, const float* __restrict__ lse,
    const float* __restrict__ delta, const int* __restrict__ key_lengths, float* __restrict__ d_q,
    int H, int Lq, int Lk, int d, float scale, int causal) {
    constexpr int NT = 32 * WARPS, BQ = 16 * WARPS;
    constexpr int D_CHUNKS = D / 8, KEY_CHUNKS = BK / 8;
    using Tiles = DqTiles<D, BQ, BK>;
    static_assert(D % 32 == 0 && BK % 8 == 0, "D a multiple of 32, whole 8-key chunks");

    extern __shared__ __align__(16) float shared[];
    require_dynamic_shared_bytes(Tiles::BYTES);
    float* q_tile = shared;                         // (BQ, D) the block's queries
    float* d_out_tile = q_tile + BQ * Tiles::Q;     // (BQ, D) their upstream gradients
    float* k_tile = d_out_tile + BQ * Tiles::DO;    // (BK, D) current keys
    float* v_tile = k_tile + BK * Tiles::K;         // (BK, D) current values

    const int bh = blockIdx.x, b = bh / H;
    const int q0 = blockIdx.y * BQ;
    const int lane = threadIdx.x % 32, warp_row = 16 * (threadIdx.x / 32), row0 = q0 + warp_row;
    const size_t q_offset = (size_t)bh * Lq * d, k_offset = (size_t)bh * Lk * d;

    const int key_len = key_length(key_lengths, b, Lk);
    const int causal_offset = Lk - Lq;
    const int key_end = visible_key_end(q0, BQ, Lq, key_len, causal_offset, causal);

    load_rows<D, BQ, Tiles::Q, NT>(q_tile, q + q_offset, q0, Lq, d);
    load_rows<D, BQ, Tiles::DO, NT>(d_out_tile, d_out + q_offset, q0, Lq, d);
    float row_lse[2], row_delta[2];  // rows group and group + 8 of this warp
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int i = row0 + lane_group(lane) + 8 * h;
        row_lse[h] = i < Lq ? lse[(size_t)bh * Lq + i] : neg_inf<float>();
        row_delta[h] = i < Lq ? delta[(size_t)bh * Lq + i] : 0.f;
    }

    float dq[D_CHUNKS][4];  // (16, D) sum over keys of dS_ij k_j, as C fragments
    zero_fragments(dq);

    for (int k0 = 0; k0 < key_end; k0 += BK) {  // uniform over the block
        __syncthreads();
        load_rows<D, BK, Tiles::K, NT>(k_tile, k + k_offset, k0, Lk, d);
        load_rows<D, BK, Tiles::V, NT>(v_tile, v + k_offset, k0, Lk, d);
        __syncthreads();

        float s[KEY_CHUNKS][4], dp[KEY_CHUNKS][4];
        product_with_rows<D_CHUNKS, KEY_CHUNKS, Tiles::Q, Tiles::K, PASSES>(
            s, q_tile + warp_row * Tiles::Q, k_tile, lane);
        product_with_rows<D_CHUNKS, KEY_CHUNKS, Tiles::DO, Tiles::V, PASSES>(
            dp, d_out_tile + warp_row * Tiles::DO, v_tile, lane);
        // ds = p (dp - delta), into s; p = 0 where masked or the row has no visible key
#pragma unroll
        for (int t = 0; t < KEY_CHUNKS; ++t)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int h = r >> 1, i = row0 + c_row(lane, r);
                const int j = k0 + 8 * t + chained_key(c_col(lane, r));
                const bool live = key_visible(i, j, Lq, key_len, causal_offset, causal) &&
                                  row_lse[h] != neg_inf<float>();
                const float p = live ? exp_of(scale * s[t][r] - row_lse[h]) : 0.f;
                s[t][r] = p * (dp[t][r] - row_delta[h]);
            }
        chained_product_with_columns<KEY_CHUNKS, D_CHUNKS, Tiles::K, PASSES>(dq, s, k_tile, lane);
    }

    float* d_q_head = d_q + q_offset;
#pragma unroll
    for (int c = 0; c < D_CHUNKS; ++c)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int i = row0 + c_row(lane, r), col = 8 * c + c_col(lane, r);
            if (i < Lq && col < d) d_q_head[(size_t)i * d + col] = scale * dq[c][r];
        }
}

// ---- dK, dV ---------------------------------------------------------------------------
// Grid: (B * H, ceil(Lk / BKEYS)); block: WARPS warps, BKEYS = 16 WARPS keys, warp w owns
// keys k0 + 16 w .. + 15. For each query tile of BQ queries that can see the block's keys:
//   st = K Q^T, pt = exp(scale st - lse)  (16 x BQ) = P^T, chained query order
//   dv += pt dO                            (16 x D)
//   dpt = V dO^T;  dst = pt (dpt - delta)  (16 x BQ) = dS^T
//   dk += dst Q                            (16 x D)
template <int D, int BKEYS, int BQ> struct DkDvTiles {
    static constexpr int K = D + ROWS_PAD, V = D + ROWS_PAD, Q = D + ROWS_PAD, DO = D + ROWS_PAD;
    static constexpr unsigned BYTES = 4 * (BKEYS * (K + V) + BQ * (Q + DO) + 2 * BQ);
};

template <int D, int BQ, int WARPS, int PASSES>
__device__ __forceinline__ void flash_attn_mma_backward_dk_dv(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ d_out, const float* __restrict__ lse,
    const float* __restrict__ delta, const int* __restrict__ key_lengths, float* __restrict__ d_k,
    float* __restrict__ d_v, int H, int Lq, int Lk, int d, float scale, int causal) {
    constexpr int NT = 32 * WARPS, BKEYS = 16 * WARPS;
    constexpr int D_CHUNKS = D / 8, QUERY_CHUNKS = BQ / 8;
    using Tiles = DkDvTiles<D, BKEYS, BQ>;
    static_assert(D % 32 == 0 && BQ % 8 == 0, "D a multiple of 32, whole 8-query chunks");

    extern __shared__ __align__(16) float shared[];
    require_dynamic_shared_bytes(Tiles::BYTES);
    float* k_tile = shared;                        // (BKEYS, D) the block's keys
    float* v_tile = k_tile + BKEYS * Tiles::K;     // (BKEYS, D) their values
    float* q_tile = v_tile + BKEYS * Tiles::V;     // (BQ, D) current queries
    float* d_out_tile = q_tile + BQ * Tiles::Q;    // (BQ, D) their upstream gradients
    float* lse_tile = d_out_tile + BQ * Tiles::DO;  // (BQ,)
    float* delta_tile = lse_tile + BQ;             // (BQ,)

    const int bh = blockIdx.x, b = bh / H;
    const int k0 = blockIdx.y * BKEYS;
    const int lane = threadIdx.x % 32, warp_row = 16 * (threadIdx.x / 32), key0 = k0 + warp_row;
    const size_t q_offset = (size_t)bh * Lq * d, k_offset = (size_t)bh * Lk * d;

    const int key_len = key_length(key_lengths, b, Lk);
    const int causal_offset = Lk - Lq;
    int q_begin, q_end;  // the query tiles that can see this block's keys
    visible_query_tiles(k0, BQ, Lq, key_len, causal_offset, causal, q_begin, q_end);

    load_rows<D, BKEYS, Tiles::K, NT>(k_tile, k + k_offset, k0, Lk, d);
    load_rows<D, BKEYS, Tiles::V, NT>(v_tile, v + k_offset, k0, Lk, d);

    float dk[D_CHUNKS][4], dv[D_CHUNKS][4];  // (16, D) each, as C fragments
    zero_fragments(dk);
    zero_fragments(dv);

    for (int i0 = q_begin; i0 < q_end; i0 += BQ) {  // uniform over the block
        __syncthreads();
        load_rows<D, BQ, Tiles::Q, NT>(q_tile, q + q_offset, i0, Lq, d);
        load_rows<D, BQ, Tiles::DO, NT>(d_out_tile, d_out + q_offset, i0, Lq, d);
        for (int e = threadIdx.x; e < BQ; e += NT) {
            const int i = i0 + e;
            lse_tile[e] = i < Lq ? lse[(size_t)bh * Lq + i] : neg_inf<float>();
            delta_tile[e] = i < Lq ? delta[(size_t)bh * Lq + i] : 0.f;
        }
        __syncthreads();

        float pt[QUERY_CHUNKS][4], dpt[QUERY_CHUNKS][4];  // rows: keys; columns: queries
        product_with_rows<D_CHUNKS, QUERY_CHUNKS, Tiles::K, Tiles::Q, PASSES>(
            pt, k_tile + warp_row * Tiles::K, q_tile, lane);
#pragma unroll
        for (int t = 0; t < QUERY_CHUNKS; ++t)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int j = key0 + c_row(lane, r), e = 8 * t + chained_key(c_col(lane, r));
                const float row_lse = lse_tile[e];
                const bool live = key_visible(i0 + e, j, Lq, key_len, causal_offset, causal) &&
                                  row_lse != neg_inf<float>();
                pt[t][r] = live ? exp_of(scale * pt[t][r] - row_lse) : 0.f;
            }
        chained_product_with_columns<QUERY_CHUNKS, D_CHUNKS, Tiles::DO, PASSES>(dv, pt, d_out_tile,
                                                                                lane);
        product_with_rows<D_CHUNKS, QUERY_CHUNKS, Tiles::V, Tiles::DO, PASSES>(
            dpt, v_tile + warp_row * Tiles::V, d_out_tile, lane);
#pragma unroll
        for (int t = 0; t < QUERY_CHUNKS; ++t)
#pragma unroll
            for (int r = 0; r < 4; ++r)  // dS^T = P^T (dP^T - delta), into pt
                pt[t][r] *= dpt[t][r] - delta_tile[8 * t + chained_key(c_col(lane, r))];
        chained_product_with_columns<QUERY_CHUNKS, D_CHUNKS, Tiles::Q, PASSES>(dk, pt, q_tile,
                                                                               lane);
    }

    float* d_k_head = d_k + k_offset;
    float* d_v_head = d_v + k_offset;
#pragma unroll
    for (int c = 0; c < D_CHUNKS; ++c)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int j = key0 + c_row(lane, r), col = 8 * c + c_col(lane, r);
            if (j < Lk && col < d) {
                d_k_head[(size_t)j * d + col] = scale * dk[c][r];
                d_v_head[(size_t)j * d + col] = dv[c][r];
            }
        }
}

// One extern "C" kernel each per (head-dim bucket D, passes: x3 = 3xTF32, x1 = TF32),
// launched with DqTiles<D, 16 WARPS, BK>::BYTES / DkDvTiles<D, 16 WARPS, BQ>::BYTES of
// dynamic shared memory; minivlm/kernels_cuda/attention_mma.py holds the same table.
#define FLASH_ATTN_MMA_BACKWARD_DQ(NAME, D, BK, WARPS, PASSES)                                 \
    extern "C" __global__ void __launch_bounds__(32 * WARPS)                                   \
        NAME(const float* q, const float* k, const float* v, const float* d_out,                \
             const float* lse, const float* delta, const int* key_lengths, float* d_q, int H,   \
             int Lq, int Lk, int d, float scale, int causal) {                                  \
        flash_attn_mma_backward_dq<D, BK, WARPS, PASSES>(q, k, v, d_out, lse, delta,            \
                                                         key_lengths, d_q, H, Lq, Lk, d, scale, \
                                                         causal);                               \
    }
#define FLASH_ATTN_MMA_BACKWARD_DK_DV(NAME, D, BQ, WARPS, PASSES)                              \
    extern "C" __global__ void __launch_bounds__(32 * WARPS)                                   \
        NAME(const float* q, const float* k, const float* v, const float* d_out,                \
             const float* lse, const float* delta, const int* key_lengths, float* d_k,          \
             float* d_v, int H, int Lq, int Lk, int d, float scale, int causal) {               \
        flash_attn_mma_backward_dk_dv<D, BQ, WARPS, PASSES>(q, k, v, d_out, lse, delta,         \
                                                            key_lengths, d_k, d_v, H, Lq, Lk,   \
                                                            d, scale, causal);                  \
    }

FLASH_ATTN_MMA_BACKWARD_DQ(flash_attn_mma_backward_dq_d32_x3, 32, 32, 4, 3)
FLASH_ATTN_MMA_BACKWARD_DQ(flash_attn_mma_backward_dq_d64_x3, 64, 64, 4, 3)
FLASH_ATTN_MMA_BACKWARD_DQ(flash_attn_mma_backward_dq_d128_x3, 128, 16, 4, 3)
FLASH_ATTN_MMA_BACKWARD_DQ(flash_attn_mma_backward_dq_d32_x1, 32, 32, 4, 1)
FLASH_ATTN_MMA_BACKWARD_DQ(flash_attn_mma_backward_dq_d64_x1, 64, 64, 4, 1)
FLASH_ATTN_MMA_BACKWARD_DQ(flash_attn_mma_backward_dq_d128_x1, 128, 16, 4, 1)
FLASH_ATTN_MMA_BACKWARD_DK_DV(flash_attn_mma_backward_dk_dv_d32_x3, 32, 64, 4, 3)
FLASH_ATTN_MMA_BACKWARD_DK_DV(flash_attn_mma_backward_dk_dv_d64_x3, 64, 32, 4, 3)
FLASH_ATTN_MMA_BACKWARD_DK_DV(flash_attn_mma_backward_dk_dv_d128_x3, 128, 8, 4, 3)
FLASH_ATTN_MMA_BACKWARD_DK_DV(flash_attn_mma_backward_dk_dv_d32_x1, 32, 64, 4, 1)
FLASH_ATTN_MMA_BACKWARD_DK_DV(flash_attn_mma_backward_dk_dv_d64_x1, 64, 64, 4, 1)
FLASH_ATTN_MMA_BACKWARD_DK_DV(flash_attn_mma_backward_dk_dv_d128_x1, 128, 8, 4, 1)
