// The shape of a CI test or a build step: the parent fills 300 pages, forks a child that
// writes all of them three calls deep and exits at once; the parent waits for it, writes them
// again (the same three calls) and exits right after. Both live far less than a tracer's
// polling interval. Prints the pages' range first: "pages START END".
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGES 300

// The write itself, inlined into its caller (debug information says so).
static inline __attribute__((always_inline)) void touch(volatile char *page, char value) {
    page[0] = value;
}

// Not a leaf: gcc sets up no frame pointer in a leaf function, even when told to keep them,
// and a frame-pointer walk would then skip its caller.
__attribute__((noinline)) void written(void) { __asm__ volatile(""); }

static long page_size;

__attribute__((noinline)) int level3(char *pages, char value) {
    for (int i = 0; i < PAGES; i++) touch(pages + i * page_size, value);
    written();
    return pages[0];
}

__attribute__((noinline)) int level2(char *pages, char value) {
    return level3(pages, value) + 1;
}

__attribute__((noinline)) int level1(char *pages, char value) {
    return level2(pages, value) + 1;
}

int main(void) {
    page_size = sysconf(_SC_PAGESIZE);
    char *pages = mmap(NULL, PAGES * page_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pages == MAP_FAILED) return 1;
    memset(pages, 1, PAGES * page_size);
    printf("pages %lx %lx\n", (unsigned long)pages, (unsigned long)(pages + PAGES * page_size));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) _exit(level1(pages, 2) == 4 ? 0 : 1);
    int status;
    waitpid(child, &status, 0);
    return level1(pages, 3) == 5 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
