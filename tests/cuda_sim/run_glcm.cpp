// Driver: glcm_props kernel on CPU.
#include "cuda_sim.h"
#include "../../kernels/glcm.cu"
#include <cstdio>
int main(int argc, char** argv) {
    FILE* f = std::fopen(argv[1], "rb");
    int M, H, W, K;
    std::fread(&M, 4, 1, f); std::fread(&H, 4, 1, f); std::fread(&W, 4, 1, f); std::fread(&K, 4, 1, f);
    std::vector<double> x((size_t)M * H * W), e((size_t)M * 16);
    std::vector<unsigned char> view((size_t)M * H * W);
    std::vector<long long> ext(2 * M);
    std::vector<int> off(2 * K);
    std::fread(x.data(), 8, x.size(), f); std::fread(view.data(), 1, view.size(), f);
    std::fread(ext.data(), 8, ext.size(), f); std::fread(e.data(), 8, e.size(), f);
    std::fread(off.data(), 4, off.size(), f); std::fclose(f);
    std::vector<double> out((size_t)M * K * 6);
    sim_launch(M, 64, [&] { glcm_props(x.data(), view.data(), ext.data(), e.data(), off.data(), K, H, W, M, out.data()); });
    f = std::fopen(argv[2], "wb"); std::fwrite(out.data(), 8, out.size(), f); std::fclose(f);
}
