// (kernels of the intensity family: see scip_gpu/_gpu_intensity.py)
