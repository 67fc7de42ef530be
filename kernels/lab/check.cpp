// check.cpp — the kernel lab's correctness pass without a GPU: every kernel of kernels/*.cu,
// run by the CPU emulator (emu.hpp) with the launch shapes of crates/bagssl-kernels, against a
// plain double-precision reference written from DESIGN.md §3. Small awkward sizes, plus tiny
// grids so the grid-stride loops take several turns; the column kernels at sizes that give one or
// many row chunks, scalar and float4 columns, and in shuffled block orders (same bits required).
//
// Build and run: cargo xtask emulate-kernels
//   (g++ -std=c++17 -O1 -g -fsanitize=address,undefined -Ikernels/include -Ikernels
//    kernels/lab/check.cpp -o target/emulate-kernels -pthread && target/emulate-kernels)
// Prints one OK / NOT OK line per output with the max difference, then the verdict.

#include "emu.hpp"

#include "../batchnorm.cu"
#include "../conv.cu"
#include "../cov_loss.cu"
#include "../elementwise.cu"
#include "../optim.cu"
#include "../patch_embed.cu"

#include <algorithm>
#include <cstring>
#include <string>

using std::vector;

static int g_failures = 0;

// Mirrors crates/bagssl-kernels/src/launch.rs.
static const unsigned BLOCK = 256;
static unsigned grid_1d(size_t n, size_t cap = 8192) { return (unsigned)std::max<size_t>(1, std::min((n + BLOCK - 1) / BLOCK, cap)); }
// launch.rs ColGrid::new, or, with `chunk_rows` (a multiple of BAGSSL_COL_PASS), the same tiles with
// other chunks: the kernels take any such chunk_rows, and the emulator cannot afford the launcher's
// ~500 blocks per launch at 4099 rows.
struct ColGrid {
    size_t tiles, chunks;
    uint32_t chunk_rows;
    explicit ColGrid(size_t rows, size_t cols, size_t chunk = 0) {
        const size_t vec = cols % 4 == 0 ? 4 : 1, target = 4 * 132;
        tiles = std::max<size_t>(1, (cols + BAGSSL_COL_TILE * vec - 1) / (BAGSSL_COL_TILE * vec));
        const size_t passes = std::max<size_t>(1, (rows + BAGSSL_COL_PASS - 1) / BAGSSL_COL_PASS);
        const size_t cr = chunk ? chunk : std::clamp<size_t>(passes * tiles / target, 1, passes) * BAGSSL_COL_PASS;
        chunks = std::max<size_t>(1, (rows + cr - 1) / cr);
        chunk_rows = (uint32_t)cr;
    }
    dim3 grid() const { return dim3((unsigned)tiles, (unsigned)chunks); }
    static dim3 block() { return dim3(BAGSSL_COL_TILE, BAGSSL_COL_LANES); }
    std::string str() const {
        return std::to_string(tiles) + "x" + std::to_string(chunks) + "/" + std::to_string(chunk_rows);
    }
};

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint32_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return (uint32_t)(s >> 11);
    }
    float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(next() % 1000003) / 1000003.0f; }
    vector<float> vec(size_t n, float lo = -1, float hi = 1) {
        vector<float> v(n);
        for (auto& x : v) x = uniform(lo, hi);
        return v;
    }
};

template <typename A, typename B>
static void check(const std::string& name, const A& got, const B& want, double rtol, double atol = 0) {
    if (got.size() != want.size()) {
        std::printf("NOT OK %-44s size %zu vs %zu\n", name.c_str(), got.size(), want.size());
        ++g_failures;
        return;
    }
    double scale = 0, diff = 0;
    size_t at = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        scale = std::max(scale, std::fabs((double)want[i]));
        const double d = std::fabs((double)got[i] - (double)want[i]);
        if (!(d <= diff)) {
            diff = std::isnan(d) ? INFINITY : d;
            at = i;
        }
    }
    const double bound = rtol * scale + atol;
    const bool ok = diff <= bound;
    std::printf("%s %-44s max diff %.3e at %zu (bound %.3e)\n", ok ? "OK    " : "NOT OK", name.c_str(), diff, at, bound);
    if (!ok) {
        ++g_failures;
        std::printf("       got %.9g want %.9g\n", (double)got[at], (double)want[at]);
    }
}

static void check1(const std::string& name, double got, double want, double rtol, double atol = 1e-12) {
    check(name, vector<double>{got}, vector<double>{want}, rtol, atol);
}

// Per element: |got - want| <= rtol |want| (for the per-column statistics, whose scales differ).
template <typename A, typename B>
static void check_rel(const std::string& name, const A& got, const B& want, double rtol) {
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        const double e = std::fabs((double)got[i] - (double)want[i]) / std::max(std::fabs((double)want[i]), 1e-300);
        if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e, at = i;
    }
    const bool ok = got.size() == want.size() && worst <= rtol;
    std::printf("%s %-44s max rel diff %.3e at %zu (bound %.1e)\n", ok ? "OK    " : "NOT OK", name.c_str(), worst, at, rtol);
    if (!ok) {
        ++g_failures;
        std::printf("       got %.9g want %.9g\n", (double)got[at], (double)want[at]);
    }
}

// The arrival counters of the "last block done" reductions are back at 0 after every launch.
static void check_arrivals(const std::string& name, const unsigned* counters) {
    const size_t busy = std::count_if(counters, counters + BAGSSL_COL_MAX_TILES, [](unsigned c) { return c != 0; });
    if (busy) {
        std::printf("NOT OK %-44s %zu arrival counters left non-zero\n", name.c_str(), busy);
        ++g_failures;
    }
}

// Same bits (deterministic reductions, whatever order the blocks run in).
static void check_same(const std::string& name, const vector<float>& a, const vector<float>& b) {
    const bool same = a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    std::printf("%s %-44s\n", same ? "OK    " : "NOT OK", (name + (same ? ": same bits" : ": bits differ")).c_str());
    if (!same) ++g_failures;
}

// ------------------------------------------------------------------------------------------
static void check_bf16_copy(const std::string& name, const vector<uint16_t>& got, const vector<float>& f);

static void elementwise(Rng& r) {
    for (auto [rows, cols, cap] : {std::tuple<size_t, size_t, size_t>{37, 45, 8192}, {3, 1, 8192}, {300, 7, 2}}) {
        const std::string tag = std::to_string(rows) + "x" + std::to_string(cols) + " grid<=" + std::to_string(cap);
        const size_t n = rows * cols;
        auto x = r.vec(n), dy = r.vec(n), w = r.vec(n);
        vector<float> y(n), dx(n);
        emu::launch(relu_fwd_f32, grid_1d(n, cap), BLOCK, x.data(), y.data(), (uint32_t)n);
        vector<double> ref(n);
        for (size_t i = 0; i < n; ++i) ref[i] = x[i] > 0 ? x[i] : 0;
        check("relu_fwd " + tag, y, ref, 0);
        emu::launch(relu_bwd_f32, grid_1d(n, cap), BLOCK, dy.data(), y.data(), dx.data(), (uint32_t)n);
        for (size_t i = 0; i < n; ++i) ref[i] = y[i] > 0 ? dy[i] : 0;
        check("relu_bwd " + tag, dx, ref, 0);
        vector<float> ya = w;
        emu::launch(axpy_f32, grid_1d(n, cap), BLOCK, ya.data(), -0.37f, x.data(), (uint32_t)n);
        for (size_t i = 0; i < n; ++i) ref[i] = (double)w[i] - 0.37 * x[i];
        check("axpy " + tag, ya, ref, 1e-6);
        emu::launch(scale_f32, grid_1d(n, cap), BLOCK, ya.data(), 2.0f, (uint32_t)n);
        for (auto& v : ref) v *= 2;
        check("scale " + tag, ya, ref, 1e-6);
        const unsigned pb = grid_1d(n, std::min<size_t>(cap, 1024));
        vector<double> part(pb), tot(1);
        emu::launch(dot_partial_f32, pb, BLOCK, x.data(), w.data(), part.data(), (uint32_t)n);
        emu::launch(sum_f64, 1u, BLOCK, (const double*)part.data(), tot.data(), pb);
        double dref = 0;
        for (size_t i = 0; i < n; ++i) dref += (double)x[i] * w[i];
        check1("dot " + tag, tot[0], dref, 1e-12);
    }
    // The column kernels, on the grid of launch.rs: scalar columns (cols % 4 != 0) and float4
    // columns, one or many row chunks, partial last tiles.
    for (auto [rows, cols, offset, chunk] :
         {std::tuple<size_t, size_t, float, size_t>{37, 45, 0, 0}, {3, 1, 0, 0}, {300, 7, 0, 0}, {1, 3, 0, 0},
          {2, 2050, 0, 0}, {17, 31, 0, 0}, {1000, 130, 0, 256}, {4099, 33, 1000, 512}, {64, 8, 0, 0}, {3, 132, 0, 0},
          {1000, 516, 0, 320}, {4099, 4, 0, 1024}, {1000, 3, 0, 0}, {4099, 2050, 0, 0}}) {
        const ColGrid cg(rows, cols, chunk);
        const std::string tag = std::to_string(rows) + "x" + std::to_string(cols) + " grid " + cg.str();
        const size_t n = rows * cols;
        auto x = r.vec(n, offset - 1, offset + 1), b = r.vec(cols);
        vector<float> y(n), out(cols, NAN), partial(cg.chunks * cols, NAN);
        BagsslMatrixDims d{(uint32_t)rows, (uint32_t)cols};
        emu::launch(bias_add_fwd_f32, cg.grid(), ColGrid::block(), (const float*)x.data(), (const float*)b.data(), y.data(),
                    d, cg.chunk_rows);
        vector<double> ref(n);
        for (size_t i = 0; i < n; ++i) ref[i] = (double)x[i] + b[i % cols];
        check("bias_add " + tag, y, ref, 1e-7);
        emu::launch(sum_rows_f32, cg.grid(), ColGrid::block(), (const float*)x.data(), (uint16_t*)nullptr, out.data(),
                    partial.data(), d, cg.chunk_rows);
        check_arrivals("sum_rows " + tag, sum_rows_tile_arrivals);
        {  // with x's bf16 copy (v3): the same sums, and bf16_bits of every x
            vector<float> out16s(cols, NAN);
            vector<uint16_t> x16(n, 0x1234);
            emu::launch(sum_rows_f32, cg.grid(), ColGrid::block(), (const float*)x.data(), x16.data(), out16s.data(),
                        partial.data(), d, cg.chunk_rows);
            check_same("sum_rows with x16 " + tag, out16s, out);
            check_bf16_copy("sum_rows x16 " + tag, x16, x);
        }
        vector<double> cs(cols, 0);
        for (size_t i = 0; i < n; ++i) cs[i % cols] += x[i];
        check("sum_rows " + tag, out, cs, 1e-6, 1e-6);
        if (cg.chunks > 1) {  // the same bits whichever block finishes the tile
            vector<float> out2(cols, NAN);
            emu::g_block_order = 3;
            emu::launch(sum_rows_f32, cg.grid(), ColGrid::block(), (const float*)x.data(), (uint16_t*)nullptr,
                        out2.data(), partial.data(), d, cg.chunk_rows);
            emu::g_block_order = 0;
            check_same("sum_rows " + tag + " shuffled blocks", out2, out);
        }
    }
    for (auto [groups, g, cols] : {std::tuple<size_t, size_t, size_t>{13, 3, 29}, {4, 5, 70}, {33, 4, 132}, {2, 1, 3},
                                   {40, 2, 8}}) {
        const std::string tag = std::to_string(groups) + "x" + std::to_string(g) + "x" + std::to_string(cols);
        auto x = r.vec(groups * g * cols), dy = r.vec(groups * cols);
        vector<float> y(groups * cols), dx(groups * g * cols);
        const ColGrid fg(groups, cols), bg(groups * g, cols);
        emu::launch(group_mean_fwd_f32, fg.grid(), ColGrid::block(), (const float*)x.data(), y.data(),
                    BagsslMatrixDims{(uint32_t)groups, (uint32_t)cols}, (uint32_t)g, fg.chunk_rows);
        vector<double> ref(y.size(), 0), refb(dx.size());
        for (size_t rr = 0; rr < groups * g; ++rr)
            for (size_t c = 0; c < cols; ++c) ref[(rr / g) * cols + c] += x[rr * cols + c] / (double)g;
        check("group_mean_fwd " + tag, y, ref, 1e-6);
        emu::launch(group_mean_bwd_f32, bg.grid(), ColGrid::block(), (const float*)dy.data(), dx.data(),
                    BagsslMatrixDims{(uint32_t)(groups * g), (uint32_t)cols}, (uint32_t)g, bg.chunk_rows);
        for (size_t i = 0; i < dx.size(); ++i) refb[i] = dy[(i / cols / g) * cols + i % cols] / (double)g;
        check("group_mean_bwd " + tag, dx, refb, 1e-6);
    }
}

// ------------------------------------------------------------------------------------------
static uint16_t bf16_ref(float f);

// The bf16 copy a kernel wrote beside its f32 output f: bf16_ref of every element, bit-exact (any
// NaN for a NaN, as in cast_bf16).
static void check_bf16_copy(const std::string& name, const vector<uint16_t>& got, const vector<float>& f) {
    size_t bad = 0, at = 0;
    for (size_t i = 0; i < f.size(); ++i) {
        const bool ok = std::isnan(f[i]) ? ((got[i] & 0x7f80) == 0x7f80 && (got[i] & 0x7f)) : got[i] == bf16_ref(f[i]);
        if (!ok && !bad++) at = i;
    }
    bad += got.size() != f.size();
    std::printf("%s %-44s %zu of %zu differ from round-to-nearest-even\n", bad ? "NOT OK" : "OK    ", name.c_str(), bad,
                f.size());
    if (bad) {
        ++g_failures;
        if (at < f.size() && at < got.size()) std::printf("       at %zu: f32 %.9g, bf16 0x%04x\n", at, (double)f[at], got[at]);
    }
}

// A host array's address as the device address of a kernel argument struct (0 for none).
template <typename T>
static uint64_t dp(const vector<T>& v) {
    return (uint64_t)(uintptr_t)v.data();
}

// The argument structs of the BatchNorm kernels (include/bagssl_kernels.h), from named buffers.
static BagsslBnFwdArgs bn_fwd_args(const vector<float>& x, const vector<float>& gamma, const vector<float>& beta,
                                   vector<float>& mean, vector<float>& invstd, vector<float>& varu,
                                   vector<float>& partial, vector<float>& y, const BagsslBnParams& prm,
                                   const ColGrid& cg) {
    BagsslBnFwdArgs a{};
    a.x = dp(x), a.gamma = dp(gamma), a.beta = dp(beta), a.mean = dp(mean), a.invstd = dp(invstd);
    a.var_unbiased = dp(varu), a.partial = dp(partial), a.y = dp(y), a.prm = prm, a.chunk_rows = cg.chunk_rows;
    return a;  // bias, y16: 0
}

// Backward inputs; dgamma, dbeta and dx: the outputs; dx16, dbias: 0 (set by the callers that want them).
static BagsslBnBwdArgs bn_bwd_args(const vector<float>& dy, const vector<float>& x, const vector<float>* y,
                                   const vector<float>& gamma, const vector<float>& beta, const vector<float>& mean,
                                   const vector<float>& invstd, vector<float>& dgamma, vector<float>& dbeta,
                                   vector<float>& dx, vector<float>& partial, const BagsslBnParams& prm,
                                   const ColGrid& cg) {
    BagsslBnBwdArgs a{};
    a.dy = dp(dy), a.x = dp(x), a.y = y ? dp(*y) : 0, a.gamma = dp(gamma), a.beta = dp(beta), a.mean = dp(mean);
    a.invstd = dp(invstd), a.dgamma = dp(dgamma), a.dbeta = dp(dbeta), a.dx = dp(dx), a.partial = dp(partial);
    a.prm = prm, a.chunk_rows = cg.chunk_rows;
    return a;
}

static void bn_fwd(const ColGrid& cg, const BagsslBnFwdArgs& a) {
    emu::launch(bn_stats_fwd_f32, cg.grid(), ColGrid::block(), a);
    check_arrivals("bn_stats", bn_tile_arrivals);
    emu::launch(bn_apply_fwd_f32, cg.grid(), ColGrid::block(), a);
}

static void bn_bwd(const ColGrid& cg, const BagsslBnBwdArgs& a) {
    emu::launch(bn_bwd_reduce_f32, cg.grid(), ColGrid::block(), a);
    check_arrivals("bn_bwd_reduce", bn_tile_arrivals);
    emu::launch(bn_bwd_apply_f32, cg.grid(), ColGrid::block(), a);
    check_arrivals("bn_bwd_apply", bn_tile_arrivals);
}

// The outputs of the BatchNorm kernels run on x = x0 + bias (stored by bias_add_fwd_f32) without a bias.
struct BnOutputs {
    vector<float> mean, invstd, varu, y, dgamma, dbeta, dx;
};

// v4: the same kernels on x0 with the bias folded in give `want`'s bits (stats, y, dgamma, dbeta, dx;
// with ReLU the backward's mask recomputed from x, v5, against want's read from y),
// and bn_bwd_apply_f32 also sums dx into dbias: checked against the f64 column sums of the dx it
// wrote (f32 lane sums: within 1e-6 of sum |dx|). Returns dbias.
static vector<float> batchnorm_folded_bias(const std::string& tag, const ColGrid& cg, const BagsslBnParams& prm,
                                           const vector<float>& x0, const vector<float>& bias,
                                           const vector<float>& gamma, const vector<float>& beta,
                                           const vector<float>& dy, const BnOutputs& want) {
    const size_t rows = prm.rows, cols = prm.cols, n = rows * cols;
    BnOutputs got{vector<float>(cols, NAN), vector<float>(cols, NAN), vector<float>(cols, NAN), vector<float>(n, NAN),
                  vector<float>(cols, NAN), vector<float>(cols, NAN), vector<float>(n, NAN)};
    vector<float> partial(3 * cg.chunks * cols, NAN), dbias(cols, NAN);
    BagsslBnFwdArgs f = bn_fwd_args(x0, gamma, beta, got.mean, got.invstd, got.varu, partial, got.y, prm, cg);
    f.bias = dp(bias);
    bn_fwd(cg, f);
    // With ReLU the backward recomputes its mask from x, gamma and beta (v5, y 0).
    BagsslBnBwdArgs b = bn_bwd_args(dy, x0, prm.relu ? nullptr : &got.y, gamma, beta, got.mean, got.invstd, got.dgamma,
                                    got.dbeta, got.dx, partial, prm, cg);
    b.bias = dp(bias), b.dbias = dp(dbias);
    bn_bwd(cg, b);
    check_same("bn folded bias mean " + tag, got.mean, want.mean);
    check_same("bn folded bias invstd " + tag, got.invstd, want.invstd);
    check_same("bn folded bias var_unbiased " + tag, got.varu, want.varu);
    check_same("bn folded bias y " + tag, got.y, want.y);
    check_same("bn folded bias dgamma " + tag, got.dgamma, want.dgamma);
    check_same("bn folded bias dbeta " + tag, got.dbeta, want.dbeta);
    check_same("bn folded bias dx " + tag, got.dx, want.dx);
    vector<double> sum(cols, 0), mag(cols, 0);
    for (size_t i = 0; i < n; ++i) sum[i % cols] += got.dx[i], mag[i % cols] += std::fabs(got.dx[i]);
    bool ok = true;
    double worst = 0;
    for (size_t c = 0; c < cols; ++c) {
        const double err = std::fabs(dbias[c] - sum[c]), bound = 1e-6 * mag[c] + 1e-30;
        ok = ok && err <= bound;  // false for a NaN
        worst = std::max(worst, err / bound);
    }
    std::printf("%s %-44s max err %.3f of its bound\n", ok ? "OK    " : "NOT OK", ("bn_bwd_apply dbias " + tag).c_str(), worst);
    g_failures += !ok;
    return dbias;
}

// BatchNorm on the grid of launch.rs. `offset` shifts every value (|mean| >> std: a one-pass
// E[x^2] - E[x]^2 in f32 fails the variance check by orders of magnitude); `outlier` makes x[0, c]
// of every third column an outlier (the statistics shift by x[0, c]).
static void batchnorm(Rng& r) {
    struct Case {
        size_t rows, cols;
        float offset;
        bool outlier;
        size_t chunk;  // 0: the launcher's chunks
    };
    const Case cases[] = {{1, 3, 0, false, 0},          {2, 1, 0, false, 0},         {3, 33, 0, false, 0},
                          {17, 31, 0, false, 0},        {2, 2050, 0, false, 0},      {17, 130, 0, true, 0},
                          {37, 45, 0, false, 0},        {100, 33, 0, false, 0},      {1000, 130, 0, false, 256},
                          {1000, 3, 1000, true, 0},     {4099, 33, 1000, false, 1024}, {4099, 1, 0, false, 512},
                          {3, 132, 0, false, 0},        {1000, 4, 0, false, 0},      {300, 516, 1000, false, 0},
                          {4099, 8, 0, true, 864}};
    for (const Case& k : cases) {
        const size_t rows = k.rows, cols = k.cols;
        const ColGrid cg(rows, cols, k.chunk);
        for (int relu = 0; relu < 2; ++relu) {
            const std::string tag = std::to_string(rows) + "x" + std::to_string(cols) + (relu ? " relu" : "") +
                                    (k.offset != 0 ? " +1000" : "") + (k.outlier ? " outlier" : "") + " grid " + cg.str();
            const size_t n = rows * cols;
            auto x0 = r.vec(n), gamma = r.vec(cols, 0.5, 1.5), beta = r.vec(cols), dy = r.vec(n), bias = r.vec(cols);
            for (size_t i = 0; i < n; ++i) x0[i] = x0[i] * (1 + (i % cols) * 0.1f) + 0.3f + k.offset;
            if (k.outlier)
                for (size_t c = 0; c < cols; c += 3) x0[c] = k.offset + 1e4f;
            // x = x0 + bias as bias_add_fwd_f32 stores it; the kernels run on x without a bias, and on
            // x0 with the bias folded in (v4), which must give the same bits.
            vector<float> x(n);
            for (size_t i = 0; i < n; ++i) x[i] = x0[i] + bias[i % cols];
            const float eps = 1e-5f;
            BagsslBnParams prm{(uint32_t)rows, (uint32_t)cols, eps, (uint32_t)relu};
            vector<float> mean(cols, NAN), invstd(cols, NAN), varu(cols, NAN), y(n, NAN), dgamma(cols, NAN),
                dbeta(cols, NAN), dx(n, NAN), partial(3 * cg.chunks * cols, NAN);
            const BagsslBnFwdArgs fa = bn_fwd_args(x, gamma, beta, mean, invstd, varu, partial, y, prm, cg);
            bn_fwd(cg, fa);
            {  // with the bf16 copy: the same f32 bits, and bf16_bits of each beside them
                vector<float> y2(n, NAN);
                vector<uint16_t> y16(n, 0x1234);
                BagsslBnFwdArgs f16 = fa;
                f16.y = dp(y2), f16.y16 = dp(y16);
                emu::launch(bn_apply_fwd_f32, cg.grid(), ColGrid::block(), f16);
                check_same("bn_apply y with y16 " + tag, y2, y);
                check_bf16_copy("bn_apply y16 " + tag, y16, y);
            }
            vector<double> rm(cols, 0), rv(cols, 0), ris(cols), rvu(cols), ry(n), xhat(n);
            for (size_t i = 0; i < n; ++i) rm[i % cols] += x[i] / (double)rows;
            for (size_t i = 0; i < n; ++i) rv[i % cols] += (x[i] - rm[i % cols]) * (x[i] - rm[i % cols]);
            for (size_t c = 0; c < cols; ++c) {
                rvu[c] = rows > 1 ? rv[c] / (rows - 1) : 0;
                ris[c] = 1 / std::sqrt(rv[c] / rows + eps);
            }
            // The elementwise kernels are checked against the statistics they are given (f32: at
            // |mean| = 1000 the rounding of the mean alone moves y by ~1e-4).
            for (size_t i = 0; i < n; ++i) {
                const size_t c = i % cols;
                xhat[i] = ((double)x[i] - mean[c]) * invstd[c];
                ry[i] = xhat[i] * gamma[c] + beta[c];
                if (relu && ry[i] < 0) ry[i] = 0;
            }
            check("bn_stats mean " + tag, mean, rm, k.offset != 0 ? 1e-7 : 1e-5, 1e-6);
            check_rel("bn_stats invstd " + tag, invstd, ris, 1e-6);
            if (rows > 1) check_rel("bn_stats var_unbiased " + tag, varu, rvu, 1e-6);
            check("bn_apply y " + tag, y, ry, 1e-5, 1e-6);
            const BagsslBnBwdArgs ba =
                bn_bwd_args(dy, x, &y, gamma, beta, mean, invstd, dgamma, dbeta, dx, partial, prm, cg);
            bn_bwd(cg, ba);
            if (relu) {  // v5: the mask recomputed from x, gamma and beta (y 0): the same bits
                vector<float> dg3(cols, NAN), db3(cols, NAN), dx3(n, NAN);
                bn_bwd(cg, bn_bwd_args(dy, x, nullptr, gamma, beta, mean, invstd, dg3, db3, dx3, partial, prm, cg));
                check_same("bn_bwd mask from x: dgamma " + tag, dg3, dgamma);
                check_same("bn_bwd mask from x: dbeta " + tag, db3, dbeta);
                check_same("bn_bwd mask from x: dx " + tag, dx3, dx);
            }
            {  // with the bf16 copy (as bn_apply)
                vector<float> dx2(n, NAN);
                vector<uint16_t> dx16(n, 0x1234);
                BagsslBnBwdArgs b16 = ba;
                b16.dx = dp(dx2), b16.dx16 = dp(dx16);
                emu::launch(bn_bwd_apply_f32, cg.grid(), ColGrid::block(), b16);
                check_same("bn_bwd dx with dx16 " + tag, dx2, dx);
                check_bf16_copy("bn_bwd dx16 " + tag, dx16, dx);
            }
            vector<double> rdg(cols, 0), rdb(cols, 0), rdx(n);
            auto gof = [&](size_t i) { return (relu && !(y[i] > 0)) ? 0.0 : (double)dy[i]; };
            for (size_t i = 0; i < n; ++i) {
                rdb[i % cols] += gof(i);
                rdg[i % cols] += gof(i) * xhat[i];
            }
            for (size_t i = 0; i < n; ++i) {
                const size_t c = i % cols;
                rdx[i] = (double)gamma[c] * invstd[c] / rows * (rows * gof(i) - rdb[c] - xhat[i] * rdg[c]);
            }
            check("bn_bwd dgamma " + tag, dgamma, rdg, 1e-5, 1e-5);
            check("bn_bwd dbeta " + tag, dbeta, rdb, 1e-5, 1e-5);
            check("bn_bwd dx " + tag, dx, rdx, 1e-4, 1e-6);
            const vector<float> dbias = batchnorm_folded_bias(tag, cg, prm, x0, bias, gamma, beta, dy,
                                                              BnOutputs{mean, invstd, varu, y, dgamma, dbeta, dx});
            if (cg.chunks > 1) {  // the same bits whichever blocks finish the tiles
                vector<float> mean2(cols), invstd2(cols), varu2(cols), dgamma2(cols), dbeta2(cols);
                emu::g_block_order = 1 + relu;
                vector<float> dx2(n), dbias2(cols);
                BagsslBnFwdArgs f2 = fa;
                f2.mean = dp(mean2), f2.invstd = dp(invstd2), f2.var_unbiased = dp(varu2);
                emu::launch(bn_stats_fwd_f32, cg.grid(), ColGrid::block(), f2);
                BagsslBnBwdArgs b2 = ba;
                b2.dgamma = dp(dgamma2), b2.dbeta = dp(dbeta2);
                emu::launch(bn_bwd_reduce_f32, cg.grid(), ColGrid::block(), b2);
                // The apply kernel on x0 with the bias folded in, writing dbias; dgamma, dbeta: ba's.
                BagsslBnBwdArgs b3 = ba;
                b3.x = dp(x0), b3.bias = dp(bias), b3.dx = dp(dx2), b3.dbias = dp(dbias2);
                emu::launch(bn_bwd_apply_f32, cg.grid(), ColGrid::block(), b3);
                emu::g_block_order = 0;
                check_same("bn_bwd_apply dbias " + tag + " reordered blocks", dbias2, dbias);
                check_same("bn_stats + bn_bwd_reduce " + tag + " reordered blocks",
                           [&] {
                               vector<float> v = mean2;
                               v.insert(v.end(), invstd2.begin(), invstd2.end());
                               v.insert(v.end(), varu2.begin(), varu2.end());
                               v.insert(v.end(), dgamma2.begin(), dgamma2.end());
                               v.insert(v.end(), dbeta2.begin(), dbeta2.end());
                               return v;
                           }(),
                           [&] {
                               vector<float> v = mean;
                               v.insert(v.end(), invstd.begin(), invstd.end());
                               v.insert(v.end(), varu.begin(), varu.end());
                               v.insert(v.end(), dgamma.begin(), dgamma.end());
                               v.insert(v.end(), dbeta.begin(), dbeta.end());
                               return v;
                           }());
            }
            auto runm = r.vec(cols), runv = r.vec(cols, 0.1, 2);
            BagsslBnEvalArgs ea{};
            ea.x = dp(x), ea.running_mean = dp(runm), ea.running_var = dp(runv), ea.gamma = dp(gamma);
            ea.beta = dp(beta), ea.y = dp(y), ea.prm = prm, ea.chunk_rows = cg.chunk_rows;
            emu::launch(bn_eval_fwd_f32, cg.grid(), ColGrid::block(), ea);
            for (size_t i = 0; i < n; ++i) {
                const size_t c = i % cols;
                ry[i] = (x[i] - runm[c]) / std::sqrt((double)runv[c] + eps) * gamma[c] + beta[c];
                if (relu && ry[i] < 0) ry[i] = 0;
            }
            check("bn_eval_fwd " + tag, y, ry, 1e-5, 1e-6 * (1 + k.offset));
            vector<float> run = runm;
            emu::launch(bn_ema_f32, grid_1d(cols, 3), BLOCK, run.data(), (const float*)mean.data(), 0.1f, (uint32_t)cols);
            vector<double> rr(cols);
            for (size_t c = 0; c < cols; ++c) rr[c] = 0.9 * runm[c] + 0.1 * mean[c];
            check("bn_ema " + tag, run, rr, 1e-6);
        }
    }
}

// bn_ema_multi_f32 against bn_ema_f32 vector by vector (same bits), with a grid that loops.
static void bn_ema_multi(Rng& r) {
    const size_t sizes[] = {1, 2048, 7, 1000, 3};
    const size_t nt = sizeof(sizes) / sizeof(sizes[0]);
    vector<vector<float>> one(nt), many(nt), batch(nt);
    BagsslEmaMulti prm{};
    prm.n_tensors = (uint32_t)nt;
    prm.momentum = 0.1f;
    for (size_t t = 0; t < nt; ++t) {
        one[t] = many[t] = r.vec(sizes[t]);
        batch[t] = r.vec(sizes[t]);
        emu::launch(bn_ema_f32, grid_1d(sizes[t], 2), BLOCK, one[t].data(), (const float*)batch[t].data(), 0.1f,
                    (uint32_t)sizes[t]);
        prm.running[t] = (uint64_t)(uintptr_t)many[t].data();
        prm.batch[t] = (uint64_t)(uintptr_t)batch[t].data();
        prm.n[t] = (uint32_t)sizes[t];
    }
    emu::launch(bn_ema_multi_f32, dim3(2, (unsigned)nt), dim3(96), prm);
    for (size_t t = 0; t < nt; ++t) check_same("bn_ema_multi n=" + std::to_string(sizes[t]), many[t], one[t]);
}

// NaN and infinity go where PyTorch puts them: ReLU keeps a NaN (max(NaN, 0) = NaN), the backward
// mask drops the gradient where y is NaN, a NaN in a column makes its statistics NaN. The bf16
// copies keep the NaNs (float4 columns at cols = 8, scalar at 7).
static void batchnorm_nan() {
    for (const size_t cols : {8, 7}) {
        const size_t rows = 70;
        const ColGrid cg(rows, cols);
        vector<float> x(rows * cols), gamma(cols, 1), beta(cols, 0), dy(rows * cols, 1);
        for (size_t i = 0; i < x.size(); ++i) x[i] = (float)((i * 37) % 11) - 5;
        x[5 * cols + 2] = NAN;
        BagsslBnParams prm{(uint32_t)rows, (uint32_t)cols, 1e-5f, 1};
        vector<float> mean(cols), invstd(cols), varu(cols), y(x.size()), dg(cols), db(cols), dx(x.size()), partial(3 * cg.chunks * cols);
        vector<uint16_t> y16(x.size(), 0x1234), dx16(x.size(), 0x1234);
        BagsslBnFwdArgs fa = bn_fwd_args(x, gamma, beta, mean, invstd, varu, partial, y, prm, cg);
        fa.y16 = dp(y16);
        bn_fwd(cg, fa);
        const std::string tag = " cols=" + std::to_string(cols);
        check_bf16_copy("bn NaN y16" + tag, y16, y);
        bool ok = std::isnan(mean[2]) && std::isnan(invstd[2]) && !std::isnan(mean[1]) && !std::isnan(invstd[3]);
        for (size_t rr = 0; rr < rows; ++rr) ok = ok && std::isnan(y[rr * cols + 2]) && !std::isnan(y[rr * cols + 1]);
        // Backward: a NaN y masks its gradient (dbeta of column 4 counts the positive y only); column 2,
        // with a NaN mean, has a NaN dgamma (0 * NaN).
        y[7 * cols + 4] = NAN;
        BagsslBnBwdArgs ba = bn_bwd_args(dy, x, &y, gamma, beta, mean, invstd, dg, db, dx, partial, prm, cg);
        emu::launch(bn_bwd_reduce_f32, cg.grid(), ColGrid::block(), ba);
        double want = 0;
        for (size_t rr = 0; rr < rows; ++rr) want += y[rr * cols + 4] > 0 ? 1.0 : 0.0;
        ok = ok && db[4] == (float)want && std::isnan(dg[2]);
        vector<float> dbias(cols);
        ba.dx16 = dp(dx16), ba.dbias = dp(dbias);
        emu::launch(bn_bwd_apply_f32, cg.grid(), ColGrid::block(), ba);
        ok = ok && std::isnan(dx[2]) && !std::isnan(dx[1]);  // column 2: NaN dgamma
        ok = ok && std::isnan(dbias[2]) && !std::isnan(dbias[1]);
        check_bf16_copy("bn NaN dx16" + tag, dx16, dx);
        std::printf("%s %-44s\n", ok ? "OK    " : "NOT OK", ("bn NaN propagation" + tag).c_str());
        if (!ok) ++g_failures;
    }
}

// ------------------------------------------------------------------------------------------
// Reference bag-VICReg loss in double, straight from DESIGN.md §3.
static vector<double> vicreg_ref(const vector<double>& z, size_t N, size_t D, size_t n, double lam, double mu, double nu,
                                 double eps) {
    double inv = 0;
    for (size_t b = 0; b < N / n; ++b)
        for (size_t d = 0; d < D; ++d) {
            double m = 0;
            for (size_t i = 0; i < n; ++i) m += z[(b * n + i) * D + d] / n;
            for (size_t i = 0; i < n; ++i) inv += (z[(b * n + i) * D + d] - m) * (z[(b * n + i) * D + d] - m);
        }
    inv /= (double)(N * D);
    vector<double> colm(D, 0), zc(N * D);
    for (size_t i = 0; i < N * D; ++i) colm[i % D] += z[i] / N;
    for (size_t i = 0; i < N * D; ++i) zc[i] = z[i] - colm[i % D];
    double var = 0, cov = 0;
    for (size_t a = 0; a < D; ++a)
        for (size_t c = 0; c < D; ++c) {
            double s = 0;
            for (size_t i = 0; i < N; ++i) s += zc[i * D + a] * zc[i * D + c];
            s /= (N - 1);
            if (a == c)
                var += std::max(0.0, 1 - std::sqrt(s + eps));
            else
                cov += s * s;
        }
    var /= D;
    cov /= D;
    return {lam * inv + mu * var + nu * cov, inv, var, cov};
}

static void gemm_rowmajor(bool ta, size_t m, size_t nn, size_t k, float alpha, const float* a, const float* b, float beta,
                          float* c) {
    for (size_t i = 0; i < m; ++i)
        for (size_t j = 0; j < nn; ++j) {
            double s = 0;
            for (size_t p = 0; p < k; ++p) s += (double)(ta ? a[p * m + i] : a[i * k + p]) * b[p * nn + j];
            c[i * nn + j] = (float)(alpha * s + beta * c[i * nn + j]);
        }
}

// Mirrors vicreg.rs group_grid: column tiles over dim, chunks of a multiple of BAGSSL_COL_LANES
// groups; `chunk` (a multiple of BAGSSL_COL_LANES) forces smaller chunks (more "last block" cases).
static ColGrid vicreg_group_grid(size_t groups, size_t D, size_t chunk = 0) {
    const ColGrid t(groups, D);
    const size_t lanes = BAGSSL_COL_LANES, rounds = std::max<size_t>(1, (groups + lanes - 1) / lanes);
    return ColGrid(groups, D, chunk ? chunk : std::clamp<size_t>(rounds * t.tiles / (4 * 132), 1, rounds) * lanes);
}

template <typename T>
static void vicreg_same(const std::string& name, const vector<T>& a, const vector<T>& b) {
    const bool same = a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
    std::printf("%s %-44s\n", same ? "OK    " : "NOT OK", (name + (same ? ": same bits" : ": bits differ")).c_str());
    if (!same) ++g_failures;
}

// Everything one vicreg_fwd_bwd_f32 computes, with the launch sequence of vicreg.rs (the GEMMs in
// f32 on the host). Each kernel that can write a bf16 copy runs twice: without it (the f32 path)
// and with only / also it (the bf16 path), so both pointer modes are covered.
struct VicregRun {
    vector<float> gm, mu, zc, c, vcoef, dz;
    vector<uint16_t> zc16, c16;
    vector<double> out;
    float loss32 = NAN;
};

static VicregRun vicreg_run(const vector<float>& z, const BagsslVicregParams& prm, const ColGrid& gg, const ColGrid& rg,
                            const ColGrid& cg) {
    const size_t N = prm.n_rows, D = prm.dim;
    VicregRun o;
    o.gm.assign(prm.n_groups * D, NAN), o.mu.assign(D, NAN), o.zc.assign(N * D, NAN), o.c.assign(D * D, NAN);
    o.vcoef.assign(D, NAN), o.dz.assign(N * D, NAN), o.zc16.assign(N * D, 0x1234), o.c16.assign(D * D, 0x1234);
    o.out.assign(4, NAN);
    const size_t ib = gg.tiles * gg.chunks, cb = cg.tiles * cg.chunks;
    vector<float> col_partial(gg.chunks * D, NAN), loss32(1, NAN);
    vector<double> ip(ib, NAN), cp(cb, NAN), vp(cb, NAN);
    emu::launch(vicreg_group_stats_f32, gg.grid(), ColGrid::block(), z.data(), o.gm.data(), o.mu.data(), col_partial.data(),
                ip.data(), prm, gg.chunk_rows);
    check_arrivals("vicreg_group_stats arrivals", vicreg_tile_arrivals);
    emu::launch(vicreg_center_f32, rg.grid(), ColGrid::block(), z.data(), (const float*)o.mu.data(), o.zc.data(),
                (uint16_t*)nullptr, prm, rg.chunk_rows);
    emu::launch(vicreg_center_f32, rg.grid(), ColGrid::block(), z.data(), (const float*)o.mu.data(), (float*)nullptr,
                o.zc16.data(), prm, rg.chunk_rows);
    o.c.assign(D * D, 0.0f);  // beta = 0 still reads C (0 * NaN)
    gemm_rowmajor(true, D, D, N, 1.0f / (N - 1), o.zc.data(), o.zc.data(), 0, o.c.data());
    vector<float> c2 = o.c, vcoef2(D, NAN);
    vector<double> cp2(cb, NAN), vp2(cb, NAN);
    emu::launch(vicreg_cov_terms_f32, cg.grid(), ColGrid::block(), o.c.data(), (uint16_t*)nullptr, o.vcoef.data(), cp.data(),
                vp.data(), prm, cg.chunk_rows);
    emu::launch(vicreg_cov_terms_f32, cg.grid(), ColGrid::block(), c2.data(), o.c16.data(), vcoef2.data(), cp2.data(),
                vp2.data(), prm, cg.chunk_rows);
    if (c2 != o.c || vcoef2 != o.vcoef || cp2 != cp || vp2 != vp) {
        std::printf("NOT OK vicreg_cov_terms with c16: other f32 results\n");
        ++g_failures;
    }
    emu::launch(vicreg_grad_init_f32, rg.grid(), ColGrid::block(), z.data(), (const float*)o.gm.data(),
                (const float*)o.mu.data(), (const float*)o.vcoef.data(), o.dz.data(), prm, rg.chunk_rows);
    gemm_rowmajor(false, N, D, D, (float)(4.0 * prm.covariance / (D * (N - 1.0))), o.zc.data(), o.c.data(), 1, o.dz.data());
    emu::launch(vicreg_finalize_f32, 1u, BLOCK, (const double*)ip.data(), (uint32_t)ib, (const double*)cp.data(),
                (const double*)vp.data(), (uint32_t)cb, o.out.data(), loss32.data(), prm);
    o.loss32 = loss32[0];
    return o;
}

static void vicreg(Rng& r) {
    struct Case {
        size_t N, D, n;
        size_t gchunk, rchunk, cchunk;  // 0: the launcher's chunks (groups, z rows, C rows)
    };
    const Case cases[] = {{39, 29, 3, 0, 0, 0},    {12, 5, 12, 0, 0, 0},     {40, 70, 4, 8, 32, 32},  {37, 1, 1, 8, 0, 0},
                          {21, 3, 7, 0, 0, 0},     {66, 33, 2, 8, 32, 32},   {50, 130, 5, 0, 32, 64}, {90, 132, 6, 8, 32, 64},
                          {22, 4, 1, 8, 0, 0},     {64, 16, 16, 0, 32, 0},   {300, 8, 20, 8, 64, 0},  {257, 12, 257, 0, 64, 0},
                          {2, 3, 2, 0, 0, 0}};
    for (const Case& k : cases) {
        const size_t N = k.N, D = k.D, n = k.n, G = N / n;
        const ColGrid gg = vicreg_group_grid(G, D, k.gchunk), rg(N, D, k.rchunk), cg(D, D, k.cchunk);
        const std::string tag = std::to_string(N) + "x" + std::to_string(D) + "/" + std::to_string(n) + " grids " + gg.str() +
                                " " + rg.str() + " " + cg.str();
        auto z = r.vec(N * D);
        for (size_t i = 0; i < z.size(); ++i)
            if (i % D % 3 == 0) z[i] *= 3;  // std above 1 on every third column
        const float lam = 25, mu = 25, nu = 1, eps = 1e-4f;
        const BagsslVicregParams prm{(uint32_t)N, (uint32_t)D, (uint32_t)n, (uint32_t)G, lam, mu, nu, eps};
        const VicregRun o = vicreg_run(z, prm, gg, rg, cg);
        check1("vicreg loss f32 " + tag, o.loss32, o.out[0], 1e-7, 0);

        vector<double> zd(z.begin(), z.end()), rgm(G * D, 0), rmu(D, 0);
        for (size_t i = 0; i < N * D; ++i) rgm[(i / D / n) * D + i % D] += zd[i] / n;
        for (size_t i = 0; i < N * D; ++i) rmu[i % D] += zd[i] / N;
        check("vicreg gm " + tag, o.gm, rgm, 1e-6);
        check("vicreg mu " + tag, o.mu, rmu, 1e-6, 1e-7);
        vector<double> rzc(N * D);  // Zc from the kernel's mu: exactly z - mu in f32
        for (size_t i = 0; i < N * D; ++i) rzc[i] = z[i] - o.mu[i % D];
        check("vicreg zc " + tag, o.zc, rzc, 0);
        check_bf16_copy("vicreg zc16 " + tag, o.zc16, o.zc);
        check_bf16_copy("vicreg c16 " + tag, o.c16, o.c);
        bool diag0 = true;
        for (size_t d = 0; d < D; ++d) diag0 = diag0 && o.c[d * D + d] == 0.0f;
        std::printf("%s %-44s\n", diag0 ? "OK    " : "NOT OK", ("vicreg Coff diagonal zero " + tag).c_str());
        g_failures += !diag0;

        const auto ref = vicreg_ref(zd, N, D, n, lam, mu, nu, eps);
        const char* names[4] = {"loss", "invariance", "variance", "covariance"};
        for (int i = 0; i < 4; ++i) check1(std::string("vicreg ") + names[i] + " " + tag, o.out[i], ref[i], 1e-5, 1e-9);
        // Gradient against central differences of the double reference, on a sample of elements.
        vector<double> fd, got;
        for (size_t i = 0; i < N * D; i += std::max<size_t>(1, N * D / 97)) {
            const double h = 1e-5;
            auto zp = zd, zm = zd;
            zp[i] += h;
            zm[i] -= h;
            fd.push_back((vicreg_ref(zp, N, D, n, lam, mu, nu, eps)[0] - vicreg_ref(zm, N, D, n, lam, mu, nu, eps)[0]) / (2 * h));
            got.push_back(o.dz[i]);
        }
        check("vicreg dz (vs finite differences) " + tag, got, fd, 1e-4, 1e-7);

        // The same bits whichever block finishes a column tile (and in whatever order they run).
        emu::g_block_order = 3;
        const VicregRun s = vicreg_run(z, prm, gg, rg, cg);
        emu::g_block_order = 0;
        auto bits = [](const auto& a, const auto& b) {
            return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
        };
        const bool same = bits(s.gm, o.gm) && bits(s.mu, o.mu) && bits(s.zc, o.zc) && bits(s.zc16, o.zc16) &&
                          bits(s.c, o.c) && bits(s.c16, o.c16) && bits(s.vcoef, o.vcoef) && bits(s.dz, o.dz);
        std::printf("%s %-44s\n", same ? "OK    " : "NOT OK", ("vicreg shuffled blocks, outputs " + tag).c_str());
        g_failures += !same;
        vicreg_same("vicreg shuffled blocks, scalars " + tag, s.out, o.out);
    }
}

// ------------------------------------------------------------------------------------------
// adamw_multi_f32 against adamw_f32 tensor by tensor (same bits), over 3 steps: awkward sizes, per-
// tensor weight decay, bf16 copies for some, a grid of fewer blocks than tiles (each block takes
// several tiles of different tensors) and a block size that does not divide the tile.
static void adamw_multi(Rng& r) {
    const size_t sizes[] = {1, 1001, 4096, 4097, 3 * 4096 + 5, 33};
    const size_t nt = sizeof(sizes) / sizeof(sizes[0]);
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    vector<vector<float>> p1(nt), m1(nt), v1(nt), p2(nt), m2(nt), v2(nt);
    vector<vector<uint16_t>> p16(nt);
    for (size_t t = 0; t < nt; ++t) {
        p1[t] = p2[t] = r.vec(sizes[t]);
        m1[t] = m2[t] = vector<float>(sizes[t], 0);
        v1[t] = v2[t] = vector<float>(sizes[t], 0);
        p16[t] = vector<uint16_t>(sizes[t], 0x1234);
    }
    for (int step = 1; step <= 3; ++step) {
        const double bc1 = 1 - std::pow((double)b1, step), bc2 = 1 - std::pow((double)b2, step);
        BagsslAdamWMulti prm{};
        prm.n_tensors = (uint32_t)nt;
        prm.lr = lr, prm.beta1 = b1, prm.beta2 = b2, prm.eps = eps;
        prm.step_size = (float)(lr / bc1), prm.bias_correction2_sqrt = (float)std::sqrt(bc2);
        vector<vector<float>> g(nt);
        for (size_t t = 0; t < nt; ++t) {
            g[t] = r.vec(sizes[t]);
            const float wd = t % 2 ? 0.05f : 0.0f;
            BagsslAdamWParams one{(uint32_t)sizes[t], lr, b1, b2, eps, wd, prm.step_size, prm.bias_correction2_sqrt};
            emu::launch(adamw_f32, grid_1d(sizes[t], 2), BLOCK, p1[t].data(), (const float*)g[t].data(), m1[t].data(),
                        v1[t].data(), one);
            prm.param[t] = (uint64_t)(uintptr_t)p2[t].data();
            prm.grad[t] = (uint64_t)(uintptr_t)g[t].data();
            prm.m[t] = (uint64_t)(uintptr_t)m2[t].data();
            prm.v[t] = (uint64_t)(uintptr_t)v2[t].data();
            prm.param16[t] = t % 3 ? (uint64_t)(uintptr_t)p16[t].data() : 0;
            prm.n[t] = (uint32_t)sizes[t];
            prm.weight_decay[t] = wd;
            prm.first_tile[t + 1] = prm.first_tile[t] + (uint32_t)((sizes[t] + BAGSSL_ADAMW_TILE - 1) / BAGSSL_ADAMW_TILE);
        }
        emu::launch(adamw_multi_f32, 3u, 96u, prm);
    }
    for (size_t t = 0; t < nt; ++t) {
        const std::string tag = " n=" + std::to_string(sizes[t]);
        check_same("adamw_multi param" + tag, p2[t], p1[t]);
        check_same("adamw_multi m" + tag, m2[t], m1[t]);
        check_same("adamw_multi v" + tag, v2[t], v1[t]);
        if (t % 3)
            check_bf16_copy("adamw_multi param16" + tag, p16[t], p2[t]);
        else {
            const bool untouched = std::all_of(p16[t].begin(), p16[t].end(), [](uint16_t b) { return b == 0x1234; });
            std::printf("%s %-44s\n", untouched ? "OK    " : "NOT OK", ("adamw_multi no param16" + tag).c_str());
            g_failures += !untouched;
        }
    }
}

static void adamw(Rng& r) {
    const size_t n = 1001;
    auto p = r.vec(n);
    vector<float> m(n, 0), v(n, 0);
    vector<double> rp(p.begin(), p.end()), rm(n, 0), rv(n, 0);
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.05f;
    for (int t = 1; t <= 5; ++t) {
        auto g = r.vec(n);
        const double bc1 = 1 - std::pow((double)b1, t), bc2 = 1 - std::pow((double)b2, t);
        BagsslAdamWParams prm{(uint32_t)n, lr, b1, b2, eps, wd, (float)(lr / bc1), (float)std::sqrt(bc2)};
        emu::launch(adamw_f32, grid_1d(n, 2), BLOCK, p.data(), (const float*)g.data(), m.data(), v.data(), prm);
        for (size_t i = 0; i < n; ++i) {
            rp[i] *= 1 - (double)lr * wd;
            rm[i] = b1 * rm[i] + (1 - (double)b1) * g[i];
            rv[i] = b2 * rv[i] + (1 - (double)b2) * g[i] * g[i];
            rp[i] -= lr / bc1 * rm[i] / (std::sqrt(rv[i]) / std::sqrt(bc2) + eps);
        }
    }
    check("adamw param", p, rp, 1e-6, 1e-7);
    check("adamw m", m, rm, 1e-5);
    check("adamw v", v, rv, 1e-5);
    adamw_multi(r);
}

// ------------------------------------------------------------------------------------------
// Reference patch vector (docs/DEFINITIONS.md §3) in double: crop box, bilinear resize to p x p
// (half-pixel centres), flip, jitter, gray, blur (reflect), solarize, normalise.
static void patch_ref(const vector<uint8_t>& img, size_t H, size_t W, size_t p, const BagsslPatchSpec& s, const float* mean,
                      const float* stdv, double* out) {
    const double w[3] = {0.299, 0.587, 0.114};
    vector<double> x(p * p * 3);
    const uint8_t* im = img.data() + (size_t)s.image * H * W * 3;
    auto tap = [&](size_t i, size_t len, size_t& i0, size_t& i1, double& l1) {
        const double src = std::max(0.0, ((double)i + 0.5) * (double)len / (double)p - 0.5);
        i0 = std::min((size_t)std::floor(src), len - 1);
        i1 = std::min(i0 + 1, len - 1);
        l1 = src - (double)i0;
    };
    for (size_t y = 0; y < p; ++y)
        for (size_t xx = 0; xx < p; ++xx) {
            const size_t sx = (s.flags & BAGSSL_PATCH_FLIP) ? p - 1 - xx : xx;
            size_t y0, y1, x0, x1;
            double ly, lx;
            tap(y, s.box_h, y0, y1, ly);
            tap(sx, s.box_w, x0, x1, lx);
            auto at = [&](size_t yy, size_t xq, int c) { return im[((s.oy + yy) * W + s.ox + xq) * 3 + c] / 255.0; };
            for (int c = 0; c < 3; ++c)
                x[(y * p + xx) * 3 + c] = (1 - ly) * ((1 - lx) * at(y0, x0, c) + lx * at(y0, x1, c)) +
                                          ly * ((1 - lx) * at(y1, x0, c) + lx * at(y1, x1, c));
        }
    if (s.flags & BAGSSL_PATCH_JITTER) {
        double m = 0;
        for (size_t i = 0; i < p * p; ++i) {
            for (int c = 0; c < 3; ++c) x[i * 3 + c] *= s.brightness;
            m += x[i * 3] * w[0] + x[i * 3 + 1] * w[1] + x[i * 3 + 2] * w[2];
        }
        m /= (double)(p * p);
        for (size_t i = 0; i < p * p; ++i) {
            for (int c = 0; c < 3; ++c) x[i * 3 + c] = (x[i * 3 + c] - m) * s.contrast + m;
            const double g = x[i * 3] * w[0] + x[i * 3 + 1] * w[1] + x[i * 3 + 2] * w[2];
            for (int c = 0; c < 3; ++c) x[i * 3 + c] = std::min(1.0, std::max(0.0, (x[i * 3 + c] - g) * s.saturation + g));
        }
    }
    if (s.flags & BAGSSL_PATCH_GRAY)
        for (size_t i = 0; i < p * p; ++i) {
            const double g = x[i * 3] * w[0] + x[i * 3 + 1] * w[1] + x[i * 3 + 2] * w[2];
            for (int c = 0; c < 3; ++c) x[i * 3 + c] = g;
        }
    if (s.flags & BAGSSL_PATCH_BLUR) {
        const double sig = s.blur_sigma;
        const long k = std::min((long)std::ceil(3.0f * s.blur_sigma), (long)p - 1);  // the kernel's f32 half-width
        vector<double> g(2 * k + 1);
        double tot = 0;
        for (long t = -k; t <= k; ++t) tot += g[t + k] = std::exp(-0.5 * (t / sig) * (t / sig));
        auto refl = [&](long i) { return (size_t)(i < 0 ? -i : (i >= (long)p ? 2 * ((long)p - 1) - i : i)); };
        vector<double> rows(x.size());
        for (size_t y = 0; y < p; ++y)
            for (size_t xx = 0; xx < p; ++xx)
                for (int c = 0; c < 3; ++c) {
                    double a = 0;
                    for (long t = -k; t <= k; ++t) a += g[t + k] / tot * x[(y * p + refl((long)xx + t)) * 3 + c];
                    rows[(y * p + xx) * 3 + c] = a;
                }
        for (size_t y = 0; y < p; ++y)
            for (size_t xx = 0; xx < p; ++xx)
                for (int c = 0; c < 3; ++c) {
                    double a = 0;
                    for (long t = -k; t <= k; ++t) a += g[t + k] / tot * rows[(refl((long)y + t) * p + xx) * 3 + c];
                    x[(y * p + xx) * 3 + c] = a;
                }
    }
    for (size_t i = 0; i < p * p; ++i)
        for (int c = 0; c < 3; ++c) {
            double v = x[i * 3 + c];
            if ((s.flags & BAGSSL_PATCH_SOLARIZE) && v >= 0.5) v = 1.0 - v;
            out[i * 3 + c] = (v - mean[c]) / stdv[c];
        }
}

// Fixed boxes of the v2 kernel (flags 0..7), then (resized = true) random boxes larger and
// smaller than p with every flag (blur and solarize included) and sigmas whose kernel is cut.
static void patches(Rng& r) {
    for (auto [N, H, W, p, n_specs, resized] :
         {std::tuple<size_t, size_t, size_t, size_t, size_t, bool>{3, 13, 17, 5, 24, false}, {2, 20, 20, 17, 8, false},
          {3, 13, 17, 7, 64, true}, {2, 9, 11, 16, 32, true}}) {
        const std::string tag = std::to_string(H) + "x" + std::to_string(W) + " p=" + std::to_string(p) + (resized ? " resized" : "");
        vector<uint8_t> img(N * H * W * 3);
        for (auto& v : img) v = (uint8_t)(r.next() & 255);
        BagsslImageDims dims{(uint32_t)N, (uint32_t)H, (uint32_t)W, 0, {0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f}};
        vector<BagsslPatchSpec> specs(n_specs);
        for (size_t i = 0; i < n_specs; ++i) {
            auto& s = specs[i];
            s.image = r.next() % N;
            s.box_h = resized ? 1 + r.next() % H : (uint32_t)p;
            s.box_w = resized ? 1 + r.next() % W : (uint32_t)p;
            s.oy = r.next() % (H - s.box_h + 1);
            s.ox = r.next() % (W - s.box_w + 1);
            s.flags = resized ? (uint32_t)(i & 31) : (uint32_t)(i & 7);
            s.brightness = r.uniform(0.6f, 1.4f);
            s.contrast = r.uniform(0.6f, 1.4f);
            s.saturation = r.uniform(0.6f, 1.4f);
            s.blur_sigma = r.uniform(0.1f, 3.0f);
        }
        const size_t row = p * p * 3;
        vector<float> out(n_specs * row);
        vector<float> scratch(n_specs * row, NAN);
        BagsslPatchParams prm{dims, (uint32_t)n_specs, (uint32_t)p};
        const unsigned threads = (unsigned)std::min<size_t>(8, std::max<size_t>(1, (p * p + 31) / 32)) * 32;
        emu::launch(patch_embed_fwd_f32, (unsigned)n_specs, threads, (const unsigned char*)img.data(),
                    (const BagsslPatchSpec*)specs.data(), out.data(), (uint16_t*)nullptr, scratch.data(), prm);
        {  // with the bf16 copy (v2): the same floats, and bf16_bits of each
            vector<float> out2(out.size(), NAN);
            vector<uint16_t> out16(out.size(), 0x1234);
            emu::launch(patch_embed_fwd_f32, (unsigned)n_specs, threads, (const unsigned char*)img.data(),
                        (const BagsslPatchSpec*)specs.data(), out2.data(), out16.data(), scratch.data(), prm);
            check_same("patch_embed with out16 " + tag, out2, out);
            check_bf16_copy("patch_embed out16 " + tag, out16, out);
        }
        vector<double> ref(out.size());
        for (size_t i = 0; i < n_specs; ++i) patch_ref(img, H, W, p, specs[i], dims.mean, dims.std, ref.data() + i * row);
        check("patch_embed " + tag, out, ref, 0, 2e-5);
        if (resized) continue;

        const size_t s = 3, ny = (H - p) / s + 1, nx = (W - p) / s + 1, first = 1, count = N - 1;
        vector<float> grid(count * ny * nx * row);
        BagsslGridParams gp{dims, (uint32_t)first, (uint32_t)count, (uint32_t)p, (uint32_t)s, (uint32_t)ny, (uint32_t)nx};
        emu::launch(patch_grid_fwd_f32, (unsigned)(count * ny * nx), threads, (const unsigned char*)img.data(), grid.data(),
                    (uint16_t*)nullptr, gp);
        {
            vector<float> grid2(grid.size(), NAN);
            vector<uint16_t> grid16(grid.size(), 0x1234);
            emu::launch(patch_grid_fwd_f32, (unsigned)(count * ny * nx), threads, (const unsigned char*)img.data(),
                        grid2.data(), grid16.data(), gp);
            check_same("patch_grid with out16 " + tag, grid2, grid);
            check_bf16_copy("patch_grid out16 " + tag, grid16, grid);
        }
        vector<double> gref(grid.size());
        size_t k = 0;
        for (size_t im = first; im < first + count; ++im)
            for (size_t iy = 0; iy < ny; ++iy)
                for (size_t ix = 0; ix < nx; ++ix, ++k) {
                    BagsslPatchSpec sp{(uint32_t)im, (uint32_t)(iy * s), (uint32_t)(ix * s), 0, 1, 1, 1, 0, (uint32_t)p, (uint32_t)p};
                    patch_ref(img, H, W, p, sp, dims.mean, dims.std, gref.data() + k * row);
                }
        check("patch_grid " + tag, grid, gref, 0, 2e-5);
    }
}

// cast_bf16_f32 against an independent rounding: the nearer of the two bf16 neighbours in
// double, ties to the even one; specials (NaN, infinities, signed zeros, overflow to inf).
static uint16_t bf16_ref(float f) {
    if (std::isnan(f)) return 0x7fc0;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    // IEEE rounding treats the step past the largest finite value as 2^128 (then overflows to inf).
    auto val = [](uint16_t b) {
        if ((b & 0x7fff) == 0x7f80) return (b & 0x8000) ? -std::ldexp(1.0, 128) : std::ldexp(1.0, 128);
        uint32_t v = (uint32_t)b << 16;
        float g;
        std::memcpy(&g, &v, 4);
        return (double)g;
    };
    if ((u & 0xffff) == 0) return lo;
    const double dl = std::fabs((double)f - val(lo)), dh = std::fabs((double)f - val(hi));
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1) ? hi : lo;
}

static void cast_bf16(Rng& r) {
    for (size_t n : {1, 3, 4, 5, 1000, 4099}) {
        vector<float> x = r.vec(n);
        for (size_t i = 0; i < n; ++i) x[i] *= (i % 3 == 0) ? 1e30f : (i % 3 == 1 ? 1e-30f : 1.0f);
        const float specials[] = {NAN, -NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 3.4028235e38f, 1.0039062f, 1.0117188f};
        for (size_t i = 0; i < n && i < 9; ++i) x[i * 7 % n] = specials[i];
        vector<uint16_t> y(n);
        for (unsigned cap : {8192u, 2u})
            emu::launch(cast_bf16_f32, grid_1d(n, cap), BLOCK, (const float*)x.data(), y.data(), (uint32_t)n);
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) {
            const uint16_t want = bf16_ref(x[i]);
            const bool ok = std::isnan(x[i]) ? ((y[i] & 0x7f80) == 0x7f80 && (y[i] & 0x7f)) : y[i] == want;
            bad += !ok;
        }
        const std::string name = "cast_bf16 n=" + std::to_string(n);
        std::printf("%s %-44s %zu of %zu differ from round-to-nearest-even\n", bad ? "NOT OK" : "OK    ", name.c_str(), bad, n);
        g_failures += bad != 0;
    }
}

// ------------------------------------------------------------------------------------------
// conv.cu against plain CPU references that take another route to the same sums: col2im and
// max_pool_bwd as scatters, taps (ki, kj) in the outer loop, so each pixel still receives its
// terms in the kernels' (and crates/bagssl-autograd/src/cpu/conv.rs's) order: the same bits.

static BagsslWindow2d window(uint32_t n, uint32_t h, uint32_t w, uint32_t c, uint32_t kh, uint32_t kw, uint32_t s,
                             uint32_t p) {
    return BagsslWindow2d{n, h, w, c, kh, kw, s, p, (h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1};
}

static std::string window_str(const BagsslWindow2d& g) {
    char b[96];
    std::snprintf(b, sizeof b, "%ux%ux%ux%u k%ux%u s%u p%u", g.n, g.h, g.w, g.c, g.kh, g.kw, g.stride, g.pad);
    return b;
}

// The input pixel under tap (ki, kj) of output pixel r, or -1 over the padding.
static long pixel_of(const BagsslWindow2d& g, size_t r, uint32_t ki, uint32_t kj) {
    const size_t ox = r % g.out_w, oy = r / g.out_w % g.out_h, img = r / ((size_t)g.out_w * g.out_h);
    const long iy = (long)(oy * g.stride + ki) - (long)g.pad, ix = (long)(ox * g.stride + kj) - (long)g.pad;
    if (iy < 0 || ix < 0 || iy >= (long)g.h || ix >= (long)g.w) return -1;
    return ((long)img * g.h + iy) * g.w + ix;
}

// Bitwise equality, naming the first difference.
static void check_bits(const std::string& name, const vector<float>& got, const vector<float>& want) {
    size_t bad = 0, at = 0;
    for (size_t i = 0; i < want.size() && i < got.size(); ++i)
        if (std::memcmp(&got[i], &want[i], 4) != 0 && !bad++) at = i;
    bad += got.size() != want.size();
    std::printf("%s %-44s %zu of %zu differ in bits\n", bad ? "NOT OK" : "OK    ", name.c_str(), bad, want.size());
    if (bad) {
        ++g_failures;
        if (at < got.size() && at < want.size()) std::printf("       at %zu: got %.9g want %.9g\n", at, (double)got[at], (double)want[at]);
    }
}

static unsigned conv_grid(size_t n_elems, uint32_t c, size_t cap) { return grid_1d(n_elems / (c % 4 == 0 ? 4 : 1), cap); }

static void conv_data_movement(Rng& r) {
    const BagsslWindow2d geoms[] = {
        window(2, 7, 5, 3, 3, 3, 2, 1),   window(1, 6, 9, 2, 3, 3, 1, 3),  window(3, 5, 5, 4, 1, 1, 2, 0),
        window(1, 9, 7, 1, 7, 7, 2, 3),   window(2, 11, 13, 8, 7, 7, 2, 3), window(2, 8, 8, 4, 3, 3, 1, 1),
        window(2, 6, 7, 5, 2, 3, 2, 1),   window(1, 4, 4, 16, 4, 4, 4, 0), window(1, 9, 9, 12, 3, 3, 2, 0),
        window(2, 15, 15, 3, 7, 7, 2, 3), window(1, 1, 1, 7, 1, 1, 1, 0),  window(1, 5, 3, 4, 5, 3, 3, 2),
    };
    for (const BagsslWindow2d& g : geoms) {
        const size_t in_rows = (size_t)g.n * g.h * g.w, out_rows = (size_t)g.n * g.out_h * g.out_w;
        const size_t taps = (size_t)g.kh * g.kw, k = taps * g.c, n_x = in_rows * g.c, n_cols = out_rows * k;
        auto x = r.vec(n_x);
        x[0] = -0.0f;  // copied as it is
        vector<float> ref(n_cols, 0.0f);
        for (size_t row = 0; row < out_rows; ++row)
            for (uint32_t ki = 0; ki < g.kh; ++ki)
                for (uint32_t kj = 0; kj < g.kw; ++kj) {
                    const long src = pixel_of(g, row, ki, kj);
                    if (src >= 0)
                        for (uint32_t ch = 0; ch < g.c; ++ch)
                            ref[row * k + (ki * g.kw + kj) * g.c + ch] = x[(size_t)src * g.c + ch];
                }
        // Random column entries, then col2im's reference: a scatter, taps outer.
        auto cols_in = r.vec(n_cols, -3, 3);
        vector<float> dref(n_x, 0.0f);
        for (uint32_t ki = 0; ki < g.kh; ++ki)
            for (uint32_t kj = 0; kj < g.kw; ++kj)
                for (size_t row = 0; row < out_rows; ++row) {
                    const long dst = pixel_of(g, row, ki, kj);
                    if (dst >= 0)
                        for (uint32_t ch = 0; ch < g.c; ++ch)
                            dref[(size_t)dst * g.c + ch] += cols_in[row * k + (ki * g.kw + kj) * g.c + ch];
                }
        vector<double> dref64(n_x, 0.0);
        for (size_t row = 0; row < out_rows; ++row)
            for (size_t t = 0; t < taps; ++t) {
                const long dst = pixel_of(g, row, (uint32_t)(t / g.kw), (uint32_t)(t % g.kw));
                if (dst >= 0)
                    for (uint32_t ch = 0; ch < g.c; ++ch) dref64[(size_t)dst * g.c + ch] += cols_in[row * k + t * g.c + ch];
            }
        for (size_t cap : {(size_t)8192, (size_t)3}) {
            const std::string tag = window_str(g) + " grid<=" + std::to_string(cap);
            vector<float> cols(n_cols, NAN);
            vector<uint16_t> cols16(n_cols, 0x1234);
            emu::launch(im2col_f32, conv_grid(n_cols, g.c, cap), BLOCK, (const float*)x.data(), cols.data(),
                        (uint16_t*)nullptr, g);
            check_bits("im2col " + tag, cols, ref);
            emu::launch(im2col_f32, conv_grid(n_cols, g.c, cap), BLOCK, (const float*)x.data(), cols.data(),
                        cols16.data(), g);
            check_bits("im2col with cols16 " + tag, cols, ref);
            check_bf16_copy("im2col cols16 " + tag, cols16, ref);
            vector<float> dx(n_x, NAN);
            emu::launch(col2im_f32, conv_grid(n_x, g.c, cap), BLOCK, (const float*)cols_in.data(), dx.data(), g);
            check_bits("col2im " + tag, dx, dref);
            check("col2im vs f64 " + tag, dx, dref64, 1e-6);
        }
    }
    // The conv weight re-layout, both ways.
    for (auto [outer, a, b] : {std::tuple<uint32_t, uint32_t, uint32_t>{3, 5, 9}, {7, 9, 5}, {1, 1, 1}, {64, 27, 9}, {2, 1, 13}}) {
        const size_t n = (size_t)outer * a * b;
        auto x = r.vec(n);
        vector<float> ref(n), y(n, NAN), back(n, NAN);
        for (uint32_t o = 0; o < outer; ++o)
            for (uint32_t i = 0; i < a; ++i)
                for (uint32_t j = 0; j < b; ++j) ref[((size_t)o * b + j) * a + i] = x[((size_t)o * a + i) * b + j];
        for (size_t cap : {(size_t)8192, (size_t)2}) {
            const std::string tag = std::to_string(outer) + "x" + std::to_string(a) + "x" + std::to_string(b) +
                                    " grid<=" + std::to_string(cap);
            emu::launch(transpose_last2_f32, grid_1d(n, cap), BLOCK, (const float*)x.data(), y.data(), outer, a, b);
            check_bits("transpose_last2 " + tag, y, ref);
            emu::launch(transpose_last2_f32, grid_1d(n, cap), BLOCK, (const float*)y.data(), back.data(), outer, b, a);
            check_bits("transpose_last2 back " + tag, back, x);
        }
    }
}

// The CPU's max-pool rules (cpu/conv.rs): y by `v > m || v is NaN` from -inf over the taps inside the
// image; each window's dy to its first tap equal to y (a NaN y: the first NaN).
static bool equals_max_ref(float v, float m) { return v == m || (std::isnan(v) && std::isnan(m)); }

static void max_pool(Rng& r) {
    struct Case {
        BagsslWindow2d g;
        int values;  // 0: uniform; k > 0: integers 0 .. k-1 (ties); -1: with NaN, inf, -0.0
    };
    const Case cases[] = {
        {window(2, 9, 7, 3, 3, 3, 2, 1), 3},   {window(2, 8, 8, 8, 3, 3, 2, 1), 2},  {window(1, 5, 6, 4, 2, 2, 2, 0), 0},
        {window(1, 7, 7, 1, 3, 3, 1, 1), 2},   {window(2, 11, 9, 4, 3, 3, 2, 1), -1}, {window(1, 9, 9, 5, 3, 3, 2, 1), -1},
        {window(3, 16, 16, 12, 3, 3, 2, 1), 0}, {window(1, 6, 5, 2, 5, 3, 2, 2), 4},  {window(1, 1, 1, 4, 1, 1, 1, 0), 0},
        {window(2, 8, 8, 4, 3, 3, 2, 1), 1},
    };
    for (const Case& cs : cases) {
        const BagsslWindow2d& g = cs.g;
        const size_t in_rows = (size_t)g.n * g.h * g.w, out_rows = (size_t)g.n * g.out_h * g.out_w;
        const size_t n_x = in_rows * g.c, n_y = out_rows * g.c;
        vector<float> x = r.vec(n_x, -2, 2);
        if (cs.values > 0)
            for (auto& v : x) v = (float)(r.next() % cs.values);
        if (cs.values < 0) {
            const float specials[] = {NAN, INFINITY, -INFINITY, -0.0f, 0.0f};
            for (size_t i = 0; i < n_x; ++i)
                if (r.next() % 7 == 0) x[i] = specials[r.next() % 5];
        }
        vector<float> yref(n_y), dref(n_x, 0.0f);
        vector<int> arg(n_y, -1);  // tap of each window's max
        for (size_t row = 0; row < out_rows; ++row)
            for (uint32_t ch = 0; ch < g.c; ++ch) {
                float m = -INFINITY;
                for (uint32_t t = 0; t < g.kh * g.kw; ++t) {
                    const long src = pixel_of(g, row, t / g.kw, t % g.kw);
                    if (src >= 0 && (x[(size_t)src * g.c + ch] > m || std::isnan(x[(size_t)src * g.c + ch]))) m = x[(size_t)src * g.c + ch];
                }
                yref[row * g.c + ch] = m;
                for (uint32_t t = 0; t < g.kh * g.kw && arg[row * g.c + ch] < 0; ++t) {
                    const long src = pixel_of(g, row, t / g.kw, t % g.kw);
                    if (src >= 0 && equals_max_ref(x[(size_t)src * g.c + ch], m)) arg[row * g.c + ch] = (int)t;
                }
            }
        auto dy = r.vec(n_y, -3, 3);
        for (uint32_t t = 0; t < g.kh * g.kw; ++t)  // taps outer: each pixel's terms in tap order
            for (size_t row = 0; row < out_rows; ++row)
                for (uint32_t ch = 0; ch < g.c; ++ch)
                    if (arg[row * g.c + ch] == (int)t)
                        dref[(size_t)pixel_of(g, row, t / g.kw, t % g.kw) * g.c + ch] += dy[row * g.c + ch];
        double sent = 0, got_total = 0;
        for (float v : dy) sent += v;
        for (size_t cap : {(size_t)8192, (size_t)3}) {
            const std::string tag = window_str(g) + (cs.values > 0 ? " ties" : cs.values < 0 ? " specials" : "") +
                                    " grid<=" + std::to_string(cap);
            vector<float> y(n_y, 7.0f), dx(n_x, NAN);
            emu::launch(max_pool_fwd_f32, conv_grid(n_y, g.c, cap), BLOCK, (const float*)x.data(), y.data(), g);
            check_bits("max_pool_fwd " + tag, y, yref);
            emu::launch(max_pool_bwd_f32, conv_grid(n_x, g.c, cap), BLOCK, (const float*)x.data(),
                        (const float*)yref.data(), (const float*)dy.data(), dx.data(), g);
            check_bits("max_pool_bwd " + tag, dx, dref);
            got_total = 0;
            for (float v : dx) got_total += v;
        }
        // Every window sends its gradient exactly once.
        check1("max_pool_bwd sum " + window_str(g), got_total, sent, 1e-5, 1e-5);
    }
}

static void add(Rng& r) {
    for (auto [n, cap] : {std::pair<size_t, size_t>{1, 8192}, {1001, 8192}, {4099, 3}}) {
        auto a = r.vec(n), b = r.vec(n);
        vector<float> y(n, NAN), ref(n);
        for (size_t i = 0; i < n; ++i) ref[i] = a[i] + b[i];
        emu::launch(add_f32, grid_1d(n, cap), BLOCK, (const float*)a.data(), (const float*)b.data(), y.data(), (uint32_t)n);
        check_bits("add n=" + std::to_string(n) + " grid<=" + std::to_string(cap), y, ref);
    }
}

int main() {
    Rng r(42);
    elementwise(r);
    cast_bf16(r);
    batchnorm(r);
    batchnorm_nan();
    bn_ema_multi(r);
    vicreg(r);
    adamw(r);
    patches(r);
    conv_data_movement(r);
    max_pool(r);
    add(r);
    std::printf("%s: %d mismatches\n", g_failures ? "NOT OK" : "OK", g_failures);
    return g_failures ? 1 : 0;
}
