"""Prints what CMake needs to know about the torch it builds against, one item per line."""

import os

import torch

root = os.path.dirname(torch.__file__)
print(os.path.join(root, "include"))
print(os.path.join(root, "lib"))
print(torch.__version__)
print(torch.version.cuda or "")
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
