// The call of unwind_deep's chain that lies in a shared library: the unwinder crosses into
// another file's tables and back.
__attribute__((noinline)) int cow_lib_middle(int (*inner)(char *, long), char *buffer, long pages) {
    int written = inner(buffer, pages);
    __asm__ volatile("" ::: "memory");
    return written + 1;
}
