// (kernels of the shape family: see scip_gpu/_gpu_shape.py)
