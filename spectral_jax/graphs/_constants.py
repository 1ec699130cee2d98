"""SPEC §2 reference values of the graphs (DSM and NeuralEF)."""

# Degrees below this are treated as 1 (isolated nodes), as the DSM reference does.
MIN_DEGREE = 1e-12

# DSM colour–position k-NN passes (k, position weight λ).
DSM_N_NEIGHBORS = (20, 10)
DSM_DISTANCE_WEIGHTS = (2.0, 0.1)
# NeuralEF: feature k-NN, pixel-graph passes and the pixel-graph weight α.
NEURALEF_K = 256
NEURALEF_N_NEIGHBORS = (10, 5)
NEURALEF_DISTANCE_WEIGHTS = (2.0, 0.1)
NEURALEF_ALPHA = 0.3
# Forms of one device's rows of the NeuralEF batch kernel (`kernel.batch_kernel_matmul`).
NEURALEF_KERNEL_FORMS = ("dense", "knn")
# How a sharded global kernel reaches the other devices' tokens: all-gather them, or pass
# blocks around the device ring (`kernel.batch_kernel_matmul(ring=True)`).
NEURALEF_GLOBAL_FORMS = ("gather", "ring")
