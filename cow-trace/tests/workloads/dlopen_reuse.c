// Loads LIBRARY (libcowdl) with dlopen, unloads it and loads it again (where it was), has the
// second one's cowdl_write() read and write pages, and exits at once. Usage: dlopen_reuse
// LIBRARY. Prints "first START" and "second START" (cowdl_write's address in each) and "lib
// START END" (the pages the library wrote).
//
// Its own write-protect faults come first, more of them (each with its stack) than cow-trace
// takes from its event ring in one read: the unmap of the first library then waits in that
// ring while the records of the second one's mapping, which came later, are read already.
#include <dlfcn.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#define OWN_PAGES 1024
#define LIB_PAGES 64

typedef int (*write_fn)(char *, int, long);

static long page_size;

// Not a leaf, so it has a frame pointer (gcc sets up none in a leaf function).
__attribute__((noinline)) void written(void) { __asm__ volatile(""); }

// Reads each page first (the shared zero page is mapped): each write is a write-protect fault.
__attribute__((noinline)) int write_own(char *pages, int count) {
    int sum = 0;
    for (int i = 0; i < count; i++) sum += ((volatile char *)pages)[i * page_size];
    for (int i = 0; i < count; i++) pages[i * page_size] = 2;
    written();
    return sum;
}

// LIBRARY loaded, and its cowdl_write; NULL on failure (said on stderr).
static void *load(const char *path, write_fn *function) {
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        fprintf(stderr, "%s\n", dlerror());
        return NULL;
    }
    *function = (write_fn)dlsym(library, "cowdl_write");
    return *function ? library : NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    page_size = sysconf(_SC_PAGESIZE);
    int prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS;
    char *own_pages = mmap(NULL, OWN_PAGES * page_size, prot, flags, -1, 0);
    char *lib_pages = mmap(NULL, LIB_PAGES * page_size, prot, flags, -1, 0);
    if (own_pages == MAP_FAILED || lib_pages == MAP_FAILED) return 3;
    write_own(own_pages, OWN_PAGES);
    write_fn first, second;
    void *library = load(argv[1], &first);
    if (!library || dlclose(library) != 0) return 4;
    library = load(argv[1], &second);
    if (!library || second(lib_pages, LIB_PAGES, page_size) != LIB_PAGES) return 5;
    printf("first %lx\n", (unsigned long)first);
    printf("second %lx\n", (unsigned long)second);
    printf("lib %lx %lx\n", (unsigned long)lib_pages, (unsigned long)(lib_pages + LIB_PAGES * page_size));
    return 0;
}
