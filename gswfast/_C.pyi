# The compiled extension (csrc/): importing it registers the ops under torch.ops.gswfast.*;
# it has no Python attributes of its own. Typed wrappers: gswfast/ops.py.
