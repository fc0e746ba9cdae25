// A library that dlopen_deleted loads, calls and unloads before it exits: faults taken in its
// code must still name it and its function once it is gone.
// Not a leaf, so it has a frame pointer (gcc sets up none in a leaf function).
__attribute__((noinline)) void cowdl_written(void) { __asm__ volatile(""); }

// Reads each page first (the shared zero page is mapped), so each write is a write-protect
// fault that has a stack in --summary -g.
__attribute__((noinline)) int cowdl_write(char *pages, int count, long page_size) {
    int sum = 0;
    for (int i = 0; i < count; i++) sum += ((volatile char *)pages)[i * page_size];
    for (int i = 0; i < count; i++) pages[i * page_size] = 1;
    cowdl_written();
    return count + sum;
}
