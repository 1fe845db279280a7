// (kernels of the texture family: see scip_gpu/_gpu_texture.py)
