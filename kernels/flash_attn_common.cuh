// Pieces shared by the flash-attention forward and backward kernels.
//
// Layout of every attention tensor: (B, H, L, d) contiguous, so head bh = b * H + h
// starts at bh * L * d and row i of that head at bh * L * d + i * d.
//
// Masking, the same everywhere:
//   key j is valid for batch item b iff j < key_len(b) = clamp(key_lengths[b], 0, Lk)
//   causal (bottom-right aligned): query i may see key j iff j <= i + (Lk - Lq)
// A query row with no visible key has lse = -inf, output 0 and zero gradients.
#ifndef MINIVLM_FLASH_ATTN_COMMON_CUH
#define MINIVLM_FLASH_ATTN_COMMON_CUH

#include "common.cuh"

// Copy rows [row0, row0 + ROWS) x columns [0, D) of one head (rows_total x d, row-major)
// into a shared tile with padded stride D + 1 (the pad keeps column reads by
// different rows on different banks). Rows >= rows_total and columns >= d become 0,
// so padded rows and columns add nothing to dot products.
// Consecutive threads read consecutive columns of a row: coalesced global loads.
template <typename T, int D, int ROWS, int NT>
__device__ __forceinline__ void load_tile(T (*tile)[D + 1], const T* head, int row0,
                                          int rows_total, int d) {
    for (int e = threadIdx.x; e < ROWS * D; e += NT) {
        const int r = e / D, c = e % D, row = row0 + r;
        tile[r][c] = (row < rows_total && c < d) ? head[(size_t)row * d + c] : T(0);
    }
}

// Number of valid keys of batch item b.
__device__ __forceinline__ int key_length(const int* key_lengths, int b, int Lk) {
    return min(max(key_lengths[b], 0), Lk);
}

// May query i (< Lq) see key j (< key_len)?
__device__ __forceinline__ bool key_visible(int i, int j, int Lq, int key_len, int causal_offset,
                                            int causal) {
    return i < Lq && j < key_len && (!causal || j <= i + causal_offset);
}

// Keys [0, end) that some query of rows [q0, q0 + rows) can see; tiles at or after
// `end` lie entirely above the causal diagonal (or past the key length) and are skipped.
__device__ __forceinline__ int visible_key_end(int q0, int rows, int Lq, int key_len,
                                               int causal_offset, int causal) {
    if (!causal) return key_len;
    const int last_query = min(q0 + rows, Lq) - 1;
    return min(key_len, last_query + causal_offset + 1);
}

// The query tiles of `rows` queries, [begin, end) in steps of `rows`, that can see some
// key of a block starting at key k0: tiles before the one holding query k0 - causal_offset
// lie entirely above the causal diagonal; keys at or past key_len are masked for every
// query, so then there are none.
__device__ __forceinline__ void visible_query_tiles(int k0, int rows, int Lq, int key_len,
                                                    int causal_offset, int causal, int& begin,
                                                    int& end) {
    const int first_query = causal ? max(k0 - causal_offset, 0) : 0;
    begin = first_query / rows * rows;
    end = k0 < key_len ? Lq : 0;
}

#endif  // MINIVLM_FLASH_ATTN_COMMON_CUH
