// Host-side checks of the tensor-core attention kernels' index maps, for a machine
// without a GPU: tests/test_cuda_compile.py builds this with nvcc and runs it.
//
// A warp's mma.sync is emulated from the PTX ISA's fragment table for m16n8k8 .tf32
// (written out below on its own, not through mma_tf32.cuh), and fed through the same
// offset functions the kernels use (flash_attn_mma_common.cuh). Checked:
//   1. mma_tf32.cuh's fragment maps are the PTX table, each element held once
//   2. product_with_rows's reads give S = Q K^T with key chained_key(n) in column n, so
//      the kernels' mask (key k0 + 8 t + chained_key(c_col)) names the right key
//   3. chained_product_with_columns, taking P from S's registers, gives P V
//   4. the shared-memory reads hit 32 banks (at most 2-way where the kernels say so)
//   5. the 3xTF32 split of round-to-nearest TF32 keeps a product to 2^-20 relative
// Prints one line per check; exits 1 on the first failure.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "flash_attn_mma_common.cuh"

static int failures = 0;

#define CHECK(condition, ...)                                        \
    do {                                                             \
        if (!(condition)) {                                          \
            std::printf("FAILED %s:%d: ", __FILE__, __LINE__);       \
            std::printf(__VA_ARGS__);                                \
            std::printf("\n");                                       \
            std::exit(1);                                            \
        }                                                            \
    } while (0)

// ---- the PTX ISA table (Matrix Fragments for mma.m16n8k8, .tf32) ----------------------
// groupID = laneid >> 2, threadID_in_group = laneid % 4
//   A: row = groupID (a0, a2) or groupID + 8 (a1, a3); col = tig (a0, a1) or tig + 4 (a2, a3)
//   B: row = tig (b0) or tig + 4 (b1); col = groupID
//   C: row = groupID (c0, c1) or groupID + 8 (c2, c3); col = 2 tig + (i & 1)
static const int PTX_A_ROW_ADD[4] = {0, 8, 0, 8}, PTX_A_COL_ADD[4] = {0, 0, 4, 4};
static const int PTX_B_ROW_ADD[2] = {0, 4};
static const int PTX_C_ROW_ADD[4] = {0, 0, 8, 8};

// d = a b + d for one warp: a[lane][4] (16 x 8), b[lane][2] (8 x 8), d[lane][4] (16 x 8)
static void emulated_mma(double (*d)[4], const double (*a)[4], const double (*b)[2]) {
    double A[16][8], B[8][8];
    for (int lane = 0; lane < 32; ++lane) {
        const int group = lane >> 2, tig = lane % 4;
        for (int i = 0; i < 4; ++i) A[group + PTX_A_ROW_ADD[i]][tig + PTX_A_COL_ADD[i]] = a[lane][i];
        for (int i = 0; i < 2; ++i) B[tig + PTX_B_ROW_ADD[i]][group] = b[lane][i];
    }
    for (int lane = 0; lane < 32; ++lane) {
        const int group = lane >> 2, tig = lane % 4;
        for (int i = 0; i < 4; ++i) {
            const int row = group + PTX_C_ROW_ADD[i], col = 2 * tig + (i & 1);
            for (int k = 0; k < 8; ++k) d[lane][i] += A[row][k] * B[k][col];
        }
    }
}

static void check_fragment_maps() {
    std::set<int> a_seen, b_seen, c_seen;
    for (int lane = 0; lane < 32; ++lane) {
        const int group = lane >> 2, tig = lane % 4;
        for (int r = 0; r < 4; ++r) {
            CHECK(a_row(lane, r) == group + PTX_A_ROW_ADD[r] && a_col(lane, r) == tig + PTX_A_COL_ADD[r],
                  "A map of lane %d register %d", lane, r);
            CHECK(c_row(lane, r) == group + PTX_C_ROW_ADD[r] && c_col(lane, r) == 2 * tig + (r & 1),
                  "C map of lane %d register %d", lane, r);
            a_seen.insert(a_row(lane, r) * 8 + a_col(lane, r));
            c_seen.insert(c_row(lane, r) * 8 + c_col(lane, r));
        }
        for (int r = 0; r < 2; ++r) {
            CHECK(b_row(lane, r) == tig + PTX_B_ROW_ADD[r] && b_col(lane) == group,
                  "B map of lane %d register %d", lane, r);
            b_seen.insert(b_row(lane, r) * 8 + b_col(lane));
        }
    }
    CHECK(a_seen.size() == 128 && b_seen.size() == 64 && c_seen.size() == 128,
          "fragments cover A %zu/128, B %zu/64, C %zu/128 elements", a_seen.size(),
          b_seen.size(), c_seen.size());
    std::printf("ok   fragment maps are the PTX table; every element held by one lane\n");
}

// One warp's S = Q K^T then O = P V, read as the kernels read them, for head dim D and
// a key tile of BK rows; P = S (the product chain is what is checked, not the softmax).
template <int D, int BK> static void check_chained_products(std::mt19937& rng) {
    constexpr int Q_STRIDE = D + ROWS_PAD, K_STRIDE = D + ROWS_PAD, V_STRIDE = D + COLUMNS_PAD;
    std::normal_distribution<double> normal;
    std::vector<double> q(16 * Q_STRIDE), k(BK * K_STRIDE), v(BK * V_STRIDE);
    for (double& x : q) x = normal(rng);
    for (double& x : k) x = normal(rng);
    for (double& x : v) x = normal(rng);

    // product_with_rows: s[t] = Q K[8 t .. 8 t + 7]^T
    static double s[BK / 8][32][4];
    std::memset(s, 0, sizeof(s));
    for (int c = 0; c < D / 8; ++c)
        for (int t = 0; t < BK / 8; ++t) {
            double a[32][4], b[32][2];
            for (int lane = 0; lane < 32; ++lane) {
                for (int r = 0; r < 4; ++r) a[lane][r] = q[a_offset(lane, r, c, Q_STRIDE)];
                for (int r = 0; r < 2; ++r) b[lane][r] = k[b_offset_rows_as_n(lane, r, t, c, K_STRIDE)];
            }
            emulated_mma(s[t], a, b);
        }
    for (int t = 0; t < BK / 8; ++t)
        for (int lane = 0; lane < 32; ++lane)
            for (int r = 0; r < 4; ++r) {
                const int i = c_row(lane, r), j = 8 * t + chained_key(c_col(lane, r));
                double expected = 0;
                for (int col = 0; col < D; ++col) expected += q[i * Q_STRIDE + col] * k[j * K_STRIDE + col];
                CHECK(std::fabs(s[t][lane][r] - expected) < 1e-9,
                      "D=%d: S register %d of lane %d, chunk %d is not q_%d . k_%d", D, r, lane, t, i, j);
            }

    // chained_product_with_columns: o = P V with P's A registers taken from s
    static double o[D / 8][32][4];
    std::memset(o, 0, sizeof(o));
    for (int t = 0; t < BK / 8; ++t)
        for (int c = 0; c < D / 8; ++c) {
            double a[32][4], b[32][2];
            for (int lane = 0; lane < 32; ++lane) {
                for (int r = 0; r < 4; ++r) a[lane][r] = s[t][lane][chained_c_reg(r)];
                for (int r = 0; r < 2; ++r) b[lane][r] = v[b_offset_rows_as_k(lane, r, t, c, V_STRIDE)];
            }
            emulated_mma(o[c], a, b);
        }
    for (int c = 0; c < D / 8; ++c)
        for (int lane = 0; lane < 32; ++lane)
            for (int r = 0; r < 4; ++r) {
                const int i = c_row(lane, r), col = 8 * c + c_col(lane, r);
                double expected = 0;
                for (int j = 0; j < BK; ++j) {
                    double s_ij = 0;
                    for (int e = 0; e < D; ++e) s_ij += q[i * Q_STRIDE + e] * k[j * K_STRIDE + e];
                    expected += s_ij * v[j * V_STRIDE + col];
                }
                CHECK(std::fabs(o[c][lane][r] - expected) < 1e-8 * (1 + std::fabs(expected)),
                      "D=%d: (P V)[%d][%d] is %g, expected %g", D, i, col, o[c][lane][r], expected);
            }
    std::printf("ok   D=%3d BK=%2d: S = Q K^T in the chained key order, then P V from S's registers\n",
                D, BK);
}

// The most lanes of one warp-wide read that fall in the same 4-byte bank, over every
// register r, chunk pair (t, c) of a tile.
template <typename Offset> static int worst_bank_conflict(Offset offset) {
    int worst = 0;
    for (int r = 0; r < 4; ++r)
        for (int t = 0; t < 4; ++t)
            for (int c = 0; c < 4; ++c) {
                int lanes_in_bank[32] = {0};
                for (int lane = 0; lane < 32; ++lane) {
                    const int bank = offset(lane, r, t, c) % 32;
                    worst = std::max(worst, ++lanes_in_bank[bank]);
                }
            }
    return worst;
}

static void check_bank_conflicts() {
    for (int D : {32, 64, 128}) {
        const int rows = D + ROWS_PAD, columns = D + COLUMNS_PAD;
        const int a = worst_bank_conflict([=](int lane, int r, int, int c) { return a_offset(lane, r, c, rows); });
        const int b_n = worst_bank_conflict([=](int lane, int r, int t, int c) {
            return b_offset_rows_as_n(lane, r & 1, t, c, rows);
        });
        const int b_k = worst_bank_conflict([=](int lane, int r, int t, int c) {
            return b_offset_rows_as_k(lane, r & 1, t, c, columns);
        });
        const int b_k_rows = worst_bank_conflict([=](int lane, int r, int t, int c) {
            return b_offset_rows_as_k(lane, r & 1, t, c, rows);
        });
        CHECK(a == 1 && b_n == 1 && b_k == 1,
              "D=%d: bank conflicts A %d-way, B rows as n %d-way, B rows as k %d-way", D, a, b_n, b_k);
        CHECK(b_k_rows <= 2, "D=%d: a ROWS_PAD tile read with rows as k is %d-way", D, b_k_rows);
    }
    std::printf("ok   shared-memory reads: no bank conflicts; 2-way for a tile read both ways\n");
}

// round to the nearest TF32 value, ties away from zero, as cvt.rna.tf32.f32 (finite x)
static float tf32_round(float x) {
    unsigned bits;
    std::memcpy(&bits, &x, 4);
    bits = (bits + 0x1000u) & ~0x1fffu;
    std::memcpy(&x, &bits, 4);
    return x;
}

static void check_three_pass_split(std::mt19937& rng) {
    std::uniform_real_distribution<float> uniform(-1.f, 1.f);
    double worst_one = 0, worst_three = 0;
    for (int n = 0; n < 100000; ++n) {
        const float a = uniform(rng) * 1e3f, b = uniform(rng) * 1e-3f;
        const float a_hi = tf32_round(a), a_lo = tf32_round(a - a_hi);
        const float b_hi = tf32_round(b), b_lo = tf32_round(b - b_hi);
        const double exact = (double)a * b;
        const double three = (double)a_lo * b_hi + (double)a_hi * b_lo + (double)a_hi * b_hi;
        worst_one = std::max(worst_one, std::fabs((double)a_hi * b_hi - exact) / std::fabs(exact));
        worst_three = std::max(worst_three, std::fabs(three - exact) / std::fabs(exact));
    }
    CHECK(worst_one < std::ldexp(1.0, -10), "one TF32 product off by %g relative", worst_one);
    CHECK(worst_three < std::ldexp(1.0, -20), "3xTF32 product off by %g relative", worst_three);
    std::printf("ok   products relative error: TF32 %.1e, 3xTF32 %.1e (float32 rounding 6.0e-08)\n",
                worst_one, worst_three);
}

int main() {
    std::mt19937 rng(0);
    check_fragment_maps();
    check_chained_products<32, 64>(rng);
    check_chained_products<64, 64>(rng);
    check_chained_products<128, 32>(rng);
    check_bank_conflicts();
    check_three_pass_split(rng);
    return failures;
}
