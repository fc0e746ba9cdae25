// Copy-on-write writes four calls deep, one of the calls in a shared library (libunwind_deep):
// main -> cow_outer -> cow_lib_middle (the library) -> cow_inner -> cow_write_pages. The tests
// build it three ways: optimized without frame pointers (unwound with .eh_frame), with frame
// pointers (--stack=fp), and with neither tables nor frame pointers (a stack that must say
// where it stopped). Prints "buffer START END", then forks: the child writes every page of
// the buffer, which its parent still shares (each write copies a page), and exits.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

int cow_lib_middle(int (*inner)(char *, long), char *buffer, long pages);

static long page_size;

// Not a leaf: gcc sets up no frame pointer in a leaf function, even when told to keep them.
__attribute__((noinline)) void cow_written(void) { __asm__ volatile(""); }

__attribute__((noinline)) int cow_write_pages(char *buffer, long pages) {
    for (long i = 0; i < pages; i++) ((volatile char *)buffer)[i * page_size] = (char)i;
    cow_written();
    return (int)pages;
}

// Each caller uses the result after the call, so no call is a tail call.
__attribute__((noinline)) int cow_inner(char *buffer, long pages) {
    int written = cow_write_pages(buffer, pages);
    __asm__ volatile("" ::: "memory");
    return written + 1;
}

__attribute__((noinline)) int cow_outer(char *buffer, long pages) {
    int written = cow_lib_middle(cow_inner, buffer, pages);
    __asm__ volatile("" ::: "memory");
    return written + 1;
}

int main(int argc, char **argv) {
    long pages = argc > 1 ? atol(argv[1]) : 64;
    page_size = sysconf(_SC_PAGESIZE);
    long size = pages * page_size;
    char *buffer = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffer == MAP_FAILED) return 1;
    memset(buffer, 1, size);
    printf("buffer %lx %lx\n", (unsigned long)buffer, (unsigned long)(buffer + size));
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) _exit(cow_outer(buffer, pages) == pages + 3 ? 0 : 1);
    int status;
    if (waitpid(child, &status, 0) != child) return 1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
