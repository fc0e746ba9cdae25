// Run from a copy that the test deletes while it runs. Usage: dlopen_deleted LIBRARY FIFO.
// Prints "lib START END" and "own START END" (page ranges), waits for a line on FIFO, then:
// loads LIBRARY, has its cowdl_write() read and write the "lib" pages, unloads it, reads and
// writes the "own" pages itself, and exits at once.
#include <dlfcn.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGES 64

static long page_size;

// Not a leaf, so it has a frame pointer (gcc sets up none in a leaf function).
__attribute__((noinline)) void written(void) { __asm__ volatile(""); }

// Reads each page first, as cowdl_write does: each write is then a write-protect fault.
__attribute__((noinline)) int write_own(char *pages) {
    int sum = 0;
    for (int i = 0; i < PAGES; i++) sum += ((volatile char *)pages)[i * page_size];
    for (int i = 0; i < PAGES; i++) pages[i * page_size] = 2;
    written();
    return sum;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    page_size = sysconf(_SC_PAGESIZE);
    char *lib_pages = mmap(NULL, PAGES * page_size, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *own_pages = mmap(NULL, PAGES * page_size, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (lib_pages == MAP_FAILED || own_pages == MAP_FAILED) return 3;
    printf("lib %lx %lx\n", (unsigned long)lib_pages, (unsigned long)(lib_pages + PAGES * page_size));
    printf("own %lx %lx\n", (unsigned long)own_pages, (unsigned long)(own_pages + PAGES * page_size));
    fflush(stdout);
    FILE *fifo = fopen(argv[2], "r");
    char line[16];
    if (!fifo || !fgets(line, sizeof line, fifo)) return 4;
    void *library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        fprintf(stderr, "%s\n", dlerror());
        return 5;
    }
    int (*cowdl_write)(char *, int, long) =
        (int (*)(char *, int, long))dlsym(library, "cowdl_write");
    if (!cowdl_write || cowdl_write(lib_pages, PAGES, page_size) != PAGES) return 6;
    dlclose(library);
    return write_own(own_pages);
}
