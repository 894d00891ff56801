# cython: language_level=3
"""The running CPU's instruction-set features, as the compiler's own run-time check sees them
(``__builtin_cpu_supports``: CPUID plus the operating system's support for the wider
registers).  Built like every portable module, without instruction-set flags, so it is safe to
import on any CPU; ``cnnkit._cpu`` turns its answer into the feature set selection uses."""

cdef extern from *:
    """
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #define CNNKIT_CPU_CHECK 1
    /* __builtin_cpu_supports takes string literals only, hence one case per feature */
    static int cnnkit_cpu_has(int which) {
        __builtin_cpu_init();
        switch (which) {
            case 0: return __builtin_cpu_supports("avx2") != 0;
            case 1: return __builtin_cpu_supports("fma") != 0;
            case 2: return __builtin_cpu_supports("avx512f") != 0;
            case 3: return __builtin_cpu_supports("avx512bw") != 0;
            case 4: return __builtin_cpu_supports("avx512vl") != 0;
            case 5: return __builtin_cpu_supports("avx512dq") != 0;
            default: return 0;
        }
    }
    #else
    #define CNNKIT_CPU_CHECK 0
    static int cnnkit_cpu_has(int which) { (void)which; return 0; }
    #endif
    """
    int CNNKIT_CPU_CHECK
    int cnnkit_cpu_has(int which) noexcept nogil

#: The features this module can ask about, in the order of the cases above.
FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq")


def supported():
    """{feature: bool} for every name of ``FEATURES``, or ``None`` when this build has no
    check (a compiler without ``__builtin_cpu_supports``, or not an x86 CPU)."""
    if not CNNKIT_CPU_CHECK:
        return None
    return {name: bool(cnnkit_cpu_has(i)) for i, name in enumerate(FEATURES)}
