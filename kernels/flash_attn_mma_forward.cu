// Flash-attention forward on tensor cores (float32 in and out, sm_80+): the same
// algorithm, arguments and masks as flash_attn_forward.cu, with the two products
// S = Q K^T and O = P V taken by mma.sync in TF32, three MMAs a product (3xTF32,
// float32-grade) or one (PASSES = 1, TF32). See mma_tf32.cuh.
//
//   q (B, H, Lq, d), k and v (B, H, Lk, d), key_lengths (B,) int32
//   out (B, H, Lq, d), lse (B, H, Lq)
//
// Grid: (B * H, ceil(Lq / BQ)); block: WARPS warps, BQ = 16 WARPS query rows; warp w owns
// rows q0 + 16 w .. + 15: lane (group, quad) holds rows group and group + 8. Dynamic
// shared memory (flash_attn_mma_forward_shared_bytes) holds the block's queries and one
// key tile of BK rows of K and of V. For each key tile:
//   s = Q K^T          BK / 8 C fragments (16 x 8): columns of chunk t are its keys in
//                      the chained order of mma_tf32.cuh, so s feeds the next product
//   online softmax     per row: m (running max), l (running sum), as the CUDA-core kernel;
//                      the row's values sit in the 4 lanes of a quad: reduce over 4
//   o = alpha o + P V  D / 8 C fragments (16 x 8), P taken straight from s's registers
#include "flash_attn_mma_common.cuh"

// The row strides (floats) of the three shared tiles, and the bytes they take: the
// dynamic shared memory a launch must give (minivlm/kernels_cuda/attention_mma.py
// computes the same; a launch with less traps).
template <int D, int BQ, int BK> struct ForwardTiles {
    static constexpr int Q = D + ROWS_PAD, K = D + ROWS_PAD, V = D + COLUMNS_PAD;
    static constexpr unsigned BYTES = 4 * (BQ * Q + BK * K + BK * V);
};

template <int D, int BK, int WARPS, int PASSES>
__device__ __forceinline__ void flash_attn_mma_forward(const float* __restrict__ q,
                                                       const float* __restrict__ k,
                                                       const float* __restrict__ v,
                                                       const int* __restrict__ key_lengths,
                                                       float* __restrict__ out,
                                                       float* __restrict__ lse, int H, int Lq,
                                                       int Lk, int d, float scale, int causal) {
    constexpr int NT = 32 * WARPS, BQ = 16 * WARPS;
    constexpr int D_CHUNKS = D / 8, KEY_CHUNKS = BK / 8;
    using Tiles = ForwardTiles<D, BQ, BK>;
    static_assert(D % 32 == 0 && BK % 8 == 0, "D a multiple of 32, whole 8-key chunks");

    extern __shared__ __align__(16) float shared[];
    require_dynamic_shared_bytes(Tiles::BYTES);
    float* q_tile = shared;                 // (BQ, D) the block's queries, row stride Tiles::Q
    float* k_tile = q_tile + BQ * Tiles::Q;  // (BK, D) current keys
    float* v_tile = k_tile + BK * Tiles::K;  // (BK, D) current values

    const int bh = blockIdx.x, b = bh / H;
    const int q0 = blockIdx.y * BQ;
    const int lane = threadIdx.x % 32, warp_row = 16 * (threadIdx.x / 32), row0 = q0 + warp_row;
    const float* k_head = k + (size_t)bh * Lk * d;
    const float* v_head = v + (size_t)bh * Lk * d;
    const float* q_rows = q_tile + warp_row * Tiles::Q;  // this warp's 16 query rows

    const int key_len = key_length(key_lengths, b, Lk);
    const int causal_offset = Lk - Lq;
    const int key_end = visible_key_end(q0, BQ, Lq, key_len, causal_offset, causal);

    load_rows<D, BQ, Tiles::Q, NT>(q_tile, q + (size_t)bh * Lq * d, q0, Lq, d);

    float m[2] = {neg_inf<float>(), neg_inf<float>()};  // rows group and group + 8
    float l[2] = {0.f, 0.f};
    float o[D_CHUNKS][4];  // (16, D) running sum of exp(s - m) v, as C fragments
    zero_fragments(o);

    // key_end is the same for the whole block: every thread reaches every __syncthreads
    for (int k0 = 0; k0 < key_end; k0 += BK) {
        __syncthreads();  // the previous tile is no longer read
        load_rows<D, BK, Tiles::K, NT>(k_tile, k_head, k0, Lk, d);
        load_rows<D, BK, Tiles::V, NT>(v_tile, v_head, k0, Lk, d);
        __syncthreads();

        // s = Q K^T over this tile's keys (16 x BK), chained key order in each chunk
        float s[KEY_CHUNKS][4];
        product_with_rows<D_CHUNKS, KEY_CHUNKS, Tiles::Q, Tiles::K, PASSES>(s, q_rows, k_tile,
                                                                               lane);

        // scale and mask: C register r of chunk t is row c_row, key k0 + 8 t + chained_key(c_col)
        float tile_max[2] = {neg_inf<float>(), neg_inf<float>()};
#pragma unroll
        for (int t = 0; t < KEY_CHUNKS; ++t)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int i = row0 + c_row(lane, r), j = k0 + 8 * t + chained_key(c_col(lane, r));
                s[t][r] = key_visible(i, j, Lq, key_len, causal_offset, causal) ? scale * s[t][r]
                                                                                : neg_inf<float>();
                tile_max[r >> 1] = max_of(tile_max[r >> 1], s[t][r]);
            }

        // online softmax, rows h = 0 (group) and h = 1 (group + 8); a row lives in a quad
        float alpha[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float m_new = max_of(m[h], group_max(tile_max[h], 4));
            alpha[h] = exp_shifted(m[h], m_new);
            m[h] = m_new;
        }
        float tile_sum[2] = {0.f, 0.f};
#pragma unroll
        for (int t = 0; t < KEY_CHUNKS; ++t)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                s[t][r] = exp_shifted(s[t][r], m[r >> 1]);  // p, unnormalised
                tile_sum[r >> 1] += s[t][r];
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + group_sum(tile_sum[h], 4);
#pragma unroll
        for (int c = 0; c < D_CHUNKS; ++c)
#pragma unroll
            for (int r = 0; r < 4; ++r) o[c][r] *= alpha[r >> 1];

        // o += P V: chunk t of P is an A fragment as it stands (chained order)
        chained_product_with_columns<KEY_CHUNKS, D_CHUNKS, Tiles::V, PASSES>(o, s, v_tile, lane);
    }

    // out = o / l, lse = m + log(l); a row that saw no valid key: out = 0, lse = -inf
    float* out_head = out + (size_t)bh * Lq * d;
#pragma unroll
    for (int c = 0; c < D_CHUNKS; ++c)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int i = row0 + c_row(lane, r), col = 8 * c + c_col(lane, r);
            const float l_row = l[r >> 1];
            if (i < Lq && col < d)
                out_head[(size_t)i * d + col] = l_row > 0.f ? o[c][r] / l_row : 0.f;
        }
    if (lane_quad(lane) == 0)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int i = row0 + lane_group(lane) + 8 * h;
            if (i < Lq)
                lse[(size_t)bh * Lq + i] = l[h] > 0.f ? m[h] + log_of(l[h]) : neg_inf<float>();
        }
}

// One extern "C" kernel per (head-dim bucket D, passes: x3 = 3xTF32, x1 = TF32); d <= D
// is padded with zeros. Launched with ForwardTiles<D, 16 WARPS, BK>::BYTES of dynamic
// shared memory; minivlm/kernels_cuda/attention_mma.py holds the same table.
#define FLASH_ATTN_MMA_FORWARD(NAME, D, BK, WARPS, PASSES)                                   \
    extern "C" __global__ void __launch_bounds__(32 * WARPS)                                 \
        NAME(const float* q, const float* k, const float* v, const int* key_lengths,          \
             float* out, float* lse, int H, int Lq, int Lk, int d, float scale, int causal) { \
        flash_attn_mma_forward<D, BK, WARPS, PASSES>(q, k, v, key_lengths, out, lse, H, Lq,   \
                                                     Lk, d, scale, causal);                   \
    }

FLASH_ATTN_MMA_FORWARD(flash_attn_mma_forward_d32_x3, 32, 64, 4, 3)
FLASH_ATTN_MMA_FORWARD(flash_attn_mma_forward_d64_x3, 64, 64, 4, 3)
FLASH_ATTN_MMA_FORWARD(flash_attn_mma_forward_d128_x3, 128, 32, 4, 3)
FLASH_ATTN_MMA_FORWARD(flash_attn_mma_forward_d32_x1, 32, 64, 4, 1)
FLASH_ATTN_MMA_FORWARD(flash_attn_mma_forward_d64_x1, 64, 64, 4, 1)
FLASH_ATTN_MMA_FORWARD(flash_attn_mma_forward_d128_x1, 128, 32, 4, 1)
