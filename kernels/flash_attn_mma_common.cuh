// Pieces shared by the tensor-core attention kernels (flash_attn_mma_*.cu): tiles of
// rows in shared memory, fragments of a warp's 16 rows, and the two warp products
//     product_with_rows:             acc (16 x 8n) = A (16 x D) tile^T   (tile rows = n)
//     chained_product_with_columns:  acc (16 x D) += P (16 x 8n) tile    (tile rows = k)
// where P comes from a product_with_rows result (chained order, see mma_tf32.cuh).
// Masks and layouts as flash_attn_common.cuh.
#ifndef MINIVLM_FLASH_ATTN_MMA_COMMON_CUH
#define MINIVLM_FLASH_ATTN_MMA_COMMON_CUH

#include "flash_attn_common.cuh"
#include "mma_tf32.cuh"

// Shared-memory row padding (floats) that makes a warp's fragment reads hit 32 different
// banks (checked in tests/cuda_host/mma_maps_test.cu), for D a multiple of 32:
//   a tile read as A, or as B with its rows as the n index:  bank = 4 row + quad
//                                                             (stride = 4 mod 32)
//   a tile read as B with its rows as the k index:            bank = 8 quad + group
//                                                             (stride = 8 mod 32)
enum SharedPad : int { ROWS_PAD = 4, COLUMNS_PAD = 8 };

// Where each lane reads its operand registers in shared memory (floats from the tile's
// start), for chunk c of the summed index and chunk t of the other one:
//   A register r of rows stored with row stride STRIDE:          A[a_row][8 c + a_col]
//   B register r of a tile whose rows are the n index (chained):  tile[8 t + chained_key(n)][8 c + k]
//   B register r of a tile whose rows are the k index:            tile[8 t + k][8 c + n]
__host__ __device__ constexpr int a_offset(int lane, int r, int c, int stride) {
    return a_row(lane, r) * stride + 8 * c + a_col(lane, r);
}
__host__ __device__ constexpr int b_offset_rows_as_n(int lane, int r, int t, int c, int stride) {
    return (8 * t + chained_key(b_col(lane))) * stride + 8 * c + b_row(lane, r);
}
__host__ __device__ constexpr int b_offset_rows_as_k(int lane, int r, int t, int c, int stride) {
    return (8 * t + b_row(lane, r)) * stride + 8 * c + b_col(lane);
}

// Stop the kernel (the launch fails with an error) unless it was given at least `bytes`
// of dynamic shared memory: a wrong launch must not read past its tiles.
__device__ __forceinline__ void require_dynamic_shared_bytes(unsigned bytes) {
    unsigned given;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(given));
    if (given < bytes) __trap();
}

// tile[r * STRIDE + c] = head[(row0 + r) * d + c] for r < ROWS, c < D; rows past
// rows_total and columns past d are 0, so they add nothing to any product.
// Four floats a load when d % 4 == 0 and the head starts on 16 bytes (rows then do too,
// as STRIDE does); one at a time otherwise.
template <int D, int ROWS, int STRIDE, int NT>
__device__ __forceinline__ void load_rows(float* tile, const float* head, int row0,
                                          int rows_total, int d) {
    static_assert(STRIDE % 4 == 0 && D % 4 == 0, "16-byte rows");
    if (d % 4 == 0 && reinterpret_cast<size_t>(head) % 16 == 0) {
        constexpr int VECTORS = D / 4;
        for (int e = threadIdx.x; e < ROWS * VECTORS; e += NT) {
            const int r = e / VECTORS, c = 4 * (e % VECTORS), row = row0 + r;
            float4 value = make_float4(0.f, 0.f, 0.f, 0.f);
            if (row < rows_total && c < d)
                value = *reinterpret_cast<const float4*>(head + (size_t)row * d + c);
            *reinterpret_cast<float4*>(tile + r * STRIDE + c) = value;
        }
    } else {
        for (int e = threadIdx.x; e < ROWS * D; e += NT) {
            const int r = e / D, c = e % D, row = row0 + r;
            tile[r * STRIDE + c] = (row < rows_total && c < d) ? head[(size_t)row * d + c] : 0.f;
        }
    }
}

// Every register of N C fragments to 0.
template <int N> __device__ __forceinline__ void zero_fragments(float (&acc)[N][4]) {
#pragma unroll
    for (int t = 0; t < N; ++t)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[t][r] = 0.f;
}

// acc[t] = A tile[8 t .. 8 t + 7]^T for t < N_CHUNKS: (16 x 8) each, in the chained order
// (column n of chunk t is tile row 8 t + chained_key(n)). A: the warp's 16 rows of
// 8 K_CHUNKS columns in shared memory, row stride A_STRIDE (= 4 mod 32: A fragment reads
// hit bank 4 group + quad).
template <int K_CHUNKS, int N_CHUNKS, int A_STRIDE, int STRIDE, int PASSES>
__device__ __forceinline__ void product_with_rows(float (&acc)[N_CHUNKS][4], const float* a_rows,
                                                  const float* tile, int lane) {
    zero_fragments(acc);
#pragma unroll
    for (int c = 0; c < K_CHUNKS; ++c) {
        float a_regs[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) a_regs[r] = a_rows[a_offset(lane, r, c, A_STRIDE)];
        const OperandA<PASSES> a_c(a_regs);
#pragma unroll
        for (int t = 0; t < N_CHUNKS; ++t) {
            const OperandB<PASSES> b(tile[b_offset_rows_as_n(lane, 0, t, c, STRIDE)],
                                     tile[b_offset_rows_as_n(lane, 1, t, c, STRIDE)]);
            mma_accumulate<PASSES>(acc[t], a_c, b);
        }
    }
}

// acc (16 x 8 N_CHUNKS) += P tile[0 .. 8 K_CHUNKS), where p[t] is the C fragment of P's
// columns 8 t .. 8 t + 7 in the chained order (as product_with_rows leaves it): its
// registers are the A fragment of those columns without moving between lanes.
template <int K_CHUNKS, int N_CHUNKS, int STRIDE, int PASSES>
__device__ __forceinline__ void chained_product_with_columns(float (&acc)[N_CHUNKS][4],
                                                            const float (&p)[K_CHUNKS][4],
                                                            const float* tile, int lane) {
#pragma unroll
    for (int t = 0; t < K_CHUNKS; ++t) {
        float a_regs[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) a_regs[r] = p[t][chained_c_reg(r)];
        const OperandA<PASSES> a(a_regs);
#pragma unroll
        for (int c = 0; c < N_CHUNKS; ++c) {
            const OperandB<PASSES> b(tile[b_offset_rows_as_k(lane, 0, t, c, STRIDE)],
                                     tile[b_offset_rows_as_k(lane, 1, t, c, STRIDE)]);
            mma_accumulate<PASSES>(acc[c], a, b);
        }
    }
}

#endif  // MINIVLM_FLASH_ATTN_MMA_COMMON_CUH
