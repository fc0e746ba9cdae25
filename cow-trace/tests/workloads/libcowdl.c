// A library that dlopen_deleted loads, calls and unloads before it exits: faults taken in its
// code must still name it and its function once it is gone.
__attribute__((noinline)) int cowdl_write(char *pages, int count) {
    for (int i = 0; i < count; i++) pages[(long)i * 4096] = 1;
    return count;
}
