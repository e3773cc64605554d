"""``task=matmul``: time a matrix product on one device.

``task`` is the task; ``timing`` measures one product properly (warm-up, synchronisation,
adaptive repeats) and needs only torch, so ``benchmarks/gpu_check.sh`` runs it on a bare
machine (nothing here imports more).
"""
