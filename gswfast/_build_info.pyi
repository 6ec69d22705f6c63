# Types of gswfast/_build_info.py, which CMake writes at build time (cmake/_build_info.py.in).
TORCH_VERSION: str
CUDA_BUILT: bool
CUDA_ARCHITECTURES: str
CUDA_VERSION: str
OPENMP: bool
