# cython: language_level=3
"""OpenMP helpers shared by the kernel modules (each one cimports this file).

The C below is compiled into every module that cimports it, so ``cnnkit_last_team`` is one
int per module, i.e. per kernel family.  Without OpenMP every region runs on one thread.

``note_team()`` is called once at the start of each parallel region: thread 0 stores the
team size, a plain int store (the region's closing barrier orders it before any later read).
Tests read it through each module's ``last_team_size()`` to prove that a shape above the
module's threshold really ran on several threads and one below it on one.
"""

cdef extern from *:
    """
    #ifndef CNNKIT_OMP_HELPERS
    #define CNNKIT_OMP_HELPERS
    static int cnnkit_last_team = 0;
    #ifdef _OPENMP
    #include <omp.h>
    static int cnnkit_max_threads(void) { return omp_get_max_threads(); }
    static void cnnkit_set_max_threads(int n) { omp_set_num_threads(n); }
    static void cnnkit_note_team(void) {
        if (omp_get_thread_num() == 0) cnnkit_last_team = omp_get_num_threads();
    }
    #else
    static int cnnkit_max_threads(void) { return 1; }
    static void cnnkit_set_max_threads(int n) { }
    static void cnnkit_note_team(void) { cnnkit_last_team = 1; }
    #endif
    static int cnnkit_last_team_size(void) { return cnnkit_last_team; }
    #endif
    """
    int omp_max_threads "cnnkit_max_threads"() noexcept nogil
    void omp_set_max_threads "cnnkit_set_max_threads"(int n) noexcept nogil
    void note_team "cnnkit_note_team"() noexcept nogil
    int omp_last_team "cnnkit_last_team_size"() noexcept nogil
