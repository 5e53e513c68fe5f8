// The tensor-core attention kernels (kernels/flash_attn_mma_forward.cu and
// kernels/flash_attn_mma_backward.cu), unchanged, run on the CPU: a test without a GPU.
//
// The CUDA built-ins, threads, barriers and launch come from cuda_on_host.h. mma.sync
// m16n8k8 with TF32 operands is emulated here from the fragment layout in the PTX ISA,
// written independently of kernels/mma_tf32.cuh, and summed in float64.
//
// tests/test_cuda_emulated.py builds and drives it. It pastes in the kernels' source
// (attention_kernels_emulated.inc) with four device-only pieces swapped for the shims
// below: the bodies of to_tf32 and mma_tf32, the %dynamic_smem_size register and the
// `extern __shared__` array. It also generates attention_kernel_table.inc, the kernels
// by name from minivlm/kernels_cuda/attention_mma.py, and chooses the kernel, grid,
// block and shared memory of each launch as that file does: no tile size is written here.
//
// Usage: attention_emulator DIR KERNEL GRID_X GRID_Y THREADS SHARED_BYTES H LQ LK D SCALE
//                           CAUSAL
// reads every buffer the kernel takes from DIR/<argument name>.bin (raw float32, int32 for
// key_lengths), outputs included (the test fills them with NaN, so an element the kernel
// never writes stays NaN), launches the grid and writes the outputs back.
//
// Beyond what cuda_on_host.h lists, it cannot show the tensor core's own rounding:
// products and sums here are float64, rounded to float once per MMA, so a result that
// leans on the hardware's exact rounding is not tested.
// What it does show: the index maps of every fragment, tile loads, masks, the online
// softmax and the gradients, against a float64 reference, for any shape on any machine.
#include <map>

#include "cuda_on_host.h"

// to_tf32 (cvt.rna.tf32.f32): round to 10 mantissa bits, ties away from zero; the low 13
// bits become 0. Adding half a TF32 unit to the magnitude bits, then truncating, does it.
constexpr unsigned TF32_DROPPED_BITS = 0x1fffu;
inline unsigned emulated_to_tf32(float x) {
    const unsigned bits = bit_cast_to<unsigned>(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) return bits;  // inf and NaN as they are
    return (bits + 0x1000u) & ~TF32_DROPPED_BITS;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 d = a b + d, for one warp.
// Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32), with
// group = lane / 4 and quad = lane % 4:
//   A (16 x 8, row):  a0 (group, quad)      a1 (group + 8, quad)
//                     a2 (group, quad + 4)  a3 (group + 8, quad + 4)
//   B (8 x 8, col):   b0 (quad, group)      b1 (quad + 4, group)
//   C, D (16 x 8):    c0 (group, 2 quad)    c1 (group, 2 quad + 1)
//                     c2 (group + 8, 2 quad) c3 (group + 8, 2 quad + 1)
// Each lane leaves its registers in the slots, the warp meets, each lane computes its four
// results from the whole matrices, the warp meets again before the slots are reused.
// An operand with any of its low 13 bits set is not TF32: the kernel forgot to round it,
// and the hardware would ignore those bits, so the emulator stops.
static unsigned mma_a_slots[MAX_WARPS][WARP_SIZE][4], mma_b_slots[MAX_WARPS][WARP_SIZE][2];
static float mma_c_slots[MAX_WARPS][WARP_SIZE][4];

inline void require_tf32(unsigned bits, const char* operand) {
    if (bits & TF32_DROPPED_BITS) {
        std::fprintf(stderr, "mma_tf32: operand %s 0x%08x is not TF32\n", operand, bits);
        std::abort();
    }
}

inline void emulated_mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    const int warp = warp_id(), lane = lane_id();
    for (int r = 0; r < 4; ++r) {
        require_tf32(a[r], "a");
        mma_a_slots[warp][lane][r] = a[r];
        mma_c_slots[warp][lane][r] = d[r];
    }
    for (int r = 0; r < 2; ++r) {
        require_tf32(b[r], "b");
        mma_b_slots[warp][lane][r] = b[r];
    }
    warp_sync();
    double a_matrix[16][8], b_matrix[8][8];
    for (int source = 0; source < WARP_SIZE; ++source) {
        const int group = source / 4, quad = source % 4;
        const unsigned(&a_regs)[4] = mma_a_slots[warp][source];
        const unsigned(&b_regs)[2] = mma_b_slots[warp][source];
        a_matrix[group][quad] = __uint_as_float(a_regs[0]);
        a_matrix[group + 8][quad] = __uint_as_float(a_regs[1]);
        a_matrix[group][quad + 4] = __uint_as_float(a_regs[2]);
        a_matrix[group + 8][quad + 4] = __uint_as_float(a_regs[3]);
        b_matrix[quad][group] = __uint_as_float(b_regs[0]);
        b_matrix[quad + 4][group] = __uint_as_float(b_regs[1]);
    }
    const int group = lane / 4, quad = lane % 4;
    for (int r = 0; r < 4; ++r) {
        const int row = group + 8 * (r / 2), column = 2 * quad + r % 2;
        double sum = mma_c_slots[warp][lane][r];
        for (int k = 0; k < 8; ++k) sum += a_matrix[row][k] * b_matrix[k][column];
        d[r] = static_cast<float>(sum);
    }
    warp_sync();
}

// ---- the kernels, and the table of them by name ------------------------------------------
#include "attention_kernels_emulated.inc"

using ForwardKernel = void (*)(const float* q, const float* k, const float* v,
                               const int* key_lengths, float* out, float* lse, int H, int Lq,
                               int Lk, int d, float scale, int causal);
using BackwardDqKernel = void (*)(const float* q, const float* k, const float* v,
                                  const float* d_out, const float* lse, const float* delta,
                                  const int* key_lengths, float* d_q, int H, int Lq, int Lk,
                                  int d, float scale, int causal);
using BackwardDkDvKernel = void (*)(const float* q, const float* k, const float* v,
                                    const float* d_out, const float* lse, const float* delta,
                                    const int* key_lengths, float* d_k, float* d_v, int H,
                                    int Lq, int Lk, int d, float scale, int causal);

// FORWARD_KERNELS, BACKWARD_DQ_KERNELS, BACKWARD_DK_DV_KERNELS: name -> kernel
#include "attention_kernel_table.inc"

int main(int argc, char** argv) {
    if (argc != 13) {
        std::fprintf(stderr, "usage: %s DIR KERNEL GRID_X GRID_Y THREADS SHARED_BYTES "
                             "H LQ LK D SCALE CAUSAL\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1], name = argv[2];
    const Dim3 grid{static_cast<unsigned>(std::atoi(argv[3])),
                    static_cast<unsigned>(std::atoi(argv[4])), 1};
    const Dim3 block{static_cast<unsigned>(std::atoi(argv[5])), 1, 1};
    const auto shared_bytes = static_cast<unsigned>(std::atoi(argv[6]));
    const int H = std::atoi(argv[7]), Lq = std::atoi(argv[8]), Lk = std::atoi(argv[9]);
    const int d = std::atoi(argv[10]), causal = std::atoi(argv[12]);
    const float scale = std::strtof(argv[11], nullptr);

    auto floats = [&](const char* buffer) { return read_buffer<float>(dir, buffer); };
    const std::vector<float> q = floats("q"), k = floats("k"), v = floats("v");
    const std::vector<int> key_lengths = read_buffer<int>(dir, "key_lengths");

    if (auto found = FORWARD_KERNELS.find(name); found != FORWARD_KERNELS.end()) {
        std::vector<float> out = floats("out"), lse = floats("lse");
        launch(grid, block, shared_bytes, [&] {
            found->second(q.data(), k.data(), v.data(), key_lengths.data(), out.data(),
                          lse.data(), H, Lq, Lk, d, scale, causal);
        });
        write_buffer(dir, "out", out);
        write_buffer(dir, "lse", lse);
        return 0;
    }
    const std::vector<float> d_out = floats("d_out"), lse = floats("lse"),
                             delta = floats("delta");
    if (auto found = BACKWARD_DQ_KERNELS.find(name); found != BACKWARD_DQ_KERNELS.end()) {
        std::vector<float> d_q = floats("d_q");
        launch(grid, block, shared_bytes, [&] {
            found->second(q.data(), k.data(), v.data(), d_out.data(), lse.data(),
                          delta.data(), key_lengths.data(), d_q.data(), H, Lq, Lk, d, scale,
                          causal);
        });
        write_buffer(dir, "d_q", d_q);
        return 0;
    }
    if (auto found = BACKWARD_DK_DV_KERNELS.find(name); found != BACKWARD_DK_DV_KERNELS.end()) {
        std::vector<float> d_k = floats("d_k"), d_v = floats("d_v");
        launch(grid, block, shared_bytes, [&] {
            found->second(q.data(), k.data(), v.data(), d_out.data(), lse.data(),
                          delta.data(), key_lengths.data(), d_k.data(), d_v.data(), H, Lq,
                          Lk, d, scale, causal);
        });
        write_buffer(dir, "d_k", d_k);
        write_buffer(dir, "d_v", d_v);
        return 0;
    }
    std::fprintf(stderr, "no kernel named %s in attention_kernel_table.inc\n", name.c_str());
    return 2;
}
