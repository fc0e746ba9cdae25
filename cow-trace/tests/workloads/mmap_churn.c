// Usage: mmap_churn [REGIONS]. Maps and unmaps REGIONS (100 000) one-page regions (of the
// system's page size), writing
// each once: in 64 slots of a fixed area, so each region takes the place of one unmapped
// before. Prints "area START END" first.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define SLOTS 64
#define AREA 0x600000000000UL

int main(int argc, char **argv) {
    long regions = argc > 1 ? atol(argv[1]) : 100000;
    unsigned long page_size = sysconf(_SC_PAGESIZE);
    printf("area %lx %lx\n", AREA, AREA + 2 * SLOTS * page_size);
    fflush(stdout);
    for (long i = 0; i < regions; i++) {
        // Every other page of the area, so neighbours never merge into one mapping.
        char *want = (char *)(AREA + 2 * (i % SLOTS) * page_size);
        char *page = mmap(want, page_size, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (page != want) return 1;
        page[0] = 1;
        if (munmap(page, page_size)) return 2;
    }
    return 0;
}
