"""numba kernel caches that depend on other modules' kernels (labelling.forget_stale_kernels)."""


def test_kernel_caches_are_forgotten_when_a_kernel_they_call_changes(tmp_path):
    """numba keys a cache on its own module only; labelling.py's kernel calls threshold.py's and
    weak_spots.py's, so a digest of those beside the cache decides whether it is still valid."""
    from algorithms.spotfinding.labelling import forget_stale_kernels

    module, callee = tmp_path / "caller.py", tmp_path / "callee.py"
    module.write_text("# caller")
    callee.write_text("# callee, first version")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    compiled = [cache / "caller.kernel-12.py311.nbi", cache / "caller.kernel-12.py311.1.nbc"]
    other = cache / "callee.kernel-3.py311.nbi"
    for path in [*compiled, other]:
        path.write_bytes(b"")
    assert forget_stale_kernels(module, [callee])  # no digest yet: the caches' age is unknown
    assert not any(path.exists() for path in compiled) and other.exists()
    for path in compiled:
        path.write_bytes(b"")
    assert not forget_stale_kernels(module, [callee])  # unchanged callee: caches kept
    assert all(path.exists() for path in compiled)
    callee.write_text("# callee, second version")
    assert forget_stale_kernels(module, [callee])
    assert not any(path.exists() for path in compiled)
