// Driver: masked_statistics kernel on CPU. Reads values (double), counts (int64); writes out.
#include "cuda_sim.h"
#include "../../kernels/masked_stats.cu"
#include <cstdio>
int main(int argc, char** argv) {
    FILE* f = std::fopen(argv[1], "rb");
    long long m, r;
    std::fread(&m, 8, 1, f); std::fread(&r, 8, 1, f);
    std::vector<double> v(m > 0 ? m : 1); std::vector<long long> n(r), s(r);
    std::fread(v.data(), 8, m, f); std::fread(n.data(), 8, r, f); std::fclose(f);
    long long acc = 0;
    for (long long i = 0; i < r; ++i) { s[i] = acc; acc += n[i]; }
    std::vector<double> out(r * 11);
    sim_launch(r, 256, [&] { masked_statistics(v.data(), s.data(), n.data(), (int)r, out.data()); });
    f = std::fopen(argv[2], "wb"); std::fwrite(out.data(), 8, out.size(), f); std::fclose(f);
}
