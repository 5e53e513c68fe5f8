// Tensor-core products for one warp: mma.sync m16n8k8 with TF32 inputs and float32
// accumulators (sm_80 and later), the fragment maps that say which lane holds which
// element, and the 3xTF32 split that keeps float32 accuracy.
//
// TF32 keeps float32's 8 exponent bits and 10 of its 23 mantissa bits. One MMA on
// operands rounded to TF32 has a relative error of about 2^-11 per product. Writing
// x = hi + lo with hi = tf32(x) and lo = tf32(x - hi) (x - hi is exact in float32, and
// lo holds the next 11 bits), the product
//     a b = a_hi b_hi + a_hi b_lo + a_lo b_hi + a_lo b_lo
// is taken without its last term, which is below 2^-22 |a b|: three MMAs give a product
// as good as float32's ("3xTF32"). PASSES = 1 is the one-MMA TF32 product.
//
// The index maps are __host__ __device__ so that tests/cuda_host/mma_maps_test.cu can
// check them on a machine without a GPU; the kernels use these same functions.
#ifndef MINIVLM_MMA_TF32_CUH
#define MINIVLM_MMA_TF32_CUH

// ---- fragment maps (PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32) ----------------
// A warp's lane = 4 * group + quad, with group = lane / 4 in 0..7, quad = lane % 4 in 0..3.
//   A (16 x 8, rows m, columns k), registers a0..a3:  m = group + 8 (r & 1),  k = quad + 4 (r >> 1)
//   B (8 x 8, rows k, columns n), registers b0, b1:   k = quad + 4 r,         n = group
//   C, D (16 x 8, rows m, columns n), c0..c3:          m = group + 8 (r >> 1), n = 2 quad + (r & 1)
__host__ __device__ constexpr int lane_group(int lane) { return lane >> 2; }
__host__ __device__ constexpr int lane_quad(int lane) { return lane & 3; }
__host__ __device__ constexpr int a_row(int lane, int r) { return lane_group(lane) + 8 * (r & 1); }
__host__ __device__ constexpr int a_col(int lane, int r) { return lane_quad(lane) + 4 * (r >> 1); }
__host__ __device__ constexpr int b_row(int lane, int r) { return lane_quad(lane) + 4 * r; }
__host__ __device__ constexpr int b_col(int lane) { return lane_group(lane); }
__host__ __device__ constexpr int c_row(int lane, int r) { return lane_group(lane) + 8 * (r >> 1); }
__host__ __device__ constexpr int c_col(int lane, int r) { return 2 * lane_quad(lane) + (r & 1); }

// ---- chaining two products without moving data between lanes ---------------------------
// Attention multiplies the scores S = Q K^T (a C fragment) by V: P V needs P as an A
// fragment, whose lanes hold other elements than the C fragment's. Instead of shuffling,
// the 8 keys of each chunk are put in the C fragment's columns in a permuted order:
// column n of the chunk holds key n / 2 + 4 (n % 2). Then the lane that holds C column
// 2 quad + e holds key quad + 4 e, exactly the key (k index) its A register needs:
//     a_r = c_{chained_c_reg(r)}   (a0 = c0, a1 = c2, a2 = c1, a3 = c3)
// The same holds for any S-like product (dP = dO V^T, S^T = K Q^T) fed into the next
// MMA, with the permutation applied to whichever index is summed over next.
__host__ __device__ constexpr int chained_key(int n) { return n / 2 + 4 * (n % 2); }
__host__ __device__ constexpr int chained_c_reg(int r) { return 2 * (r & 1) + (r >> 1); }

// ---- TF32 conversion and the MMA itself (device only) -----------------------------------
// round to the nearest TF32 value, ties away from zero; the low 13 bits become 0
__device__ __forceinline__ unsigned to_tf32(float x) {
    unsigned bits;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(bits) : "f"(x));
    return bits;
}

// x = hi + lo to about 2^-22 |x|: hi = tf32(x), lo = tf32(x - hi)
__device__ __forceinline__ void split_tf32(float x, unsigned& hi, unsigned& lo) {
    hi = to_tf32(x);
    lo = to_tf32(x - __uint_as_float(hi));
}

// d += a b for one 16 x 8 x 8 tile, operands already TF32
__device__ __forceinline__ void mma_tf32(float (&d)[4], const unsigned (&a)[4],
                                         const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// An A operand (16 x 8) in TF32: its high parts, and for PASSES = 3 its low parts too.
template <int PASSES> struct OperandA {
    unsigned hi[4], lo[4];
    __device__ __forceinline__ explicit OperandA(const float (&x)[4]) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            if (PASSES == 3) split_tf32(x[r], hi[r], lo[r]);
            else hi[r] = to_tf32(x[r]);
        }
    }
};

template <int PASSES> struct OperandB {
    unsigned hi[2], lo[2];
    __device__ __forceinline__ OperandB(float x0, float x1) {
        if (PASSES == 3) {
            split_tf32(x0, hi[0], lo[0]);
            split_tf32(x1, hi[1], lo[1]);
        } else {
            hi[0] = to_tf32(x0);
            hi[1] = to_tf32(x1);
        }
    }
};

// d += a b: one MMA (PASSES = 1), or three with the small terms first (PASSES = 3)
template <int PASSES>
__device__ __forceinline__ void mma_accumulate(float (&d)[4], const OperandA<PASSES>& a,
                                               const OperandB<PASSES>& b) {
    static_assert(PASSES == 1 || PASSES == 3, "1 (TF32) or 3 (3xTF32) MMAs a product");
    if (PASSES == 3) {
        mma_tf32(d, a.lo, b.hi);
        mma_tf32(d, a.hi, b.lo);
    }
    mma_tf32(d, a.hi, b.hi);
}
#endif  // MINIVLM_MMA_TF32_CUH
