// The benchmark workload of `cargo xtask bench`. It times its own page faults,
// so the harness can compare ns per fault with and without a tracer attached.
//
//   bench_cow cow MIB          the root maps MIB MiB of private anonymous memory in base pages
//                              (MADV_NOHUGEPAGE), writes every page, and forks; the child writes
//                              one byte per page: one copy-on-write fault per page
//   bench_cow touch MIB        the child maps MIB MiB and writes one byte per page: one
//                              first-touch fault per page (nothing shared, nothing copied)
//   bench_cow threads MIB T    as cow, but T threads of the child share the pages between them
//   bench_cow soak SECONDS RATE MIB
//                              the root fills MIB MiB, then forks one child after another for
//                              SECONDS; each child writes the inherited pages and exits, paced
//                              (every 10 ms) so that the soak as a whole takes RATE COW faults
//                              per second
//
// Protocol. The root forks the measured child (in every mode, so one process is measured and the
// root can read that child's lifetime fault count from wait4). The child prints
//   target PID
// and blocks on stdin until the harness, once its tracer is attached, writes a line. The child
// times the write loop, counting its faults with getrusage before and after, and prints
//   result pid=P pages=N loop_ns=T ns_per_fault=X loop_minflt=D start_minflt=S
// where S is its minflt from just before it blocked on stdin.
// and exits. The root waits for it and prints the kernel's count of the child's minor faults
// over its whole life, so faults after the loop (printing, exiting) are accounted for too:
//   exit pid=P minflt=M
// Every fault from S on happened with the tracer attached: M - S is what a tracer should see.
// In soak mode the root prints the target line for itself and, at the end,
//   soak children=C faults=F elapsed_ms=T
// where F sums the children's lifetime minflt from wait4.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// The system's page size (arm64 kernels use 4, 16 or 64 KiB), read once at start.
static long page_size;
#define PAGE page_size
#define MIB (1024L * 1024)

static void fail(const char *what) {
    perror(what);
    _exit(99);
}

// Lines go out with write(2), unbuffered, so the harness sees each as soon as it is printed.
static void say(const char *text) {
    if (write(1, text, strlen(text)) < 0) _exit(98);
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static long minflt(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) fail("getrusage");
    return ru.ru_minflt;
}

static char *map_pages(long pages) {
    char *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("mmap");
    // Base pages: one fault per page, never one per 2 MiB huge page.
    if (madvise(p, pages * PAGE, MADV_NOHUGEPAGE)) fail("madvise");
    return p;
}

static void write_pages(char *p, long from, long to, char value) {
    for (long i = from; i < to; i++) ((volatile char *)p)[i * PAGE] = value;
}

// Blocks until the harness says go, and returns minflt as it was just before blocking: the
// tracer attaches while this process waits, and every fault from then on should reach it. The
// buffer is written first, so reading into it takes no fault.
static long wait_for_go(void) {
    char line[64];
    memset(line, 0, sizeof line);
    char announce[64];
    snprintf(announce, sizeof announce, "target %d\n", getpid());
    say(announce);
    long before = minflt();
    if (read(0, line, sizeof line) <= 0) _exit(97);
    return before;
}

static void report(long pages, long loop_ns, long loop_minflt, long before) {
    char line[256];
    snprintf(line, sizeof line,
             "result pid=%d pages=%ld loop_ns=%ld ns_per_fault=%.1f loop_minflt=%ld "
             "start_minflt=%ld\n",
             getpid(), pages, loop_ns, (double)loop_ns / pages, loop_minflt, before);
    say(line);
}

// --- threads: the child's threads wait at a barrier until the clock has started ---

static pthread_barrier_t start_line;
static char *shared_pages;
static long shared_count, thread_count;

static void *thread_main(void *arg) {
    long index = (long)arg;
    pthread_barrier_wait(&start_line);
    write_pages(shared_pages, shared_count * index / thread_count,
                shared_count * (index + 1) / thread_count, 2);
    return NULL;
}

static void measured_threads(char *p, long pages, long threads) {
    pthread_t ids[256];
    if (threads < 1 || threads > 256) fail("thread count");
    shared_pages = p;
    shared_count = pages;
    thread_count = threads;
    pthread_barrier_init(&start_line, NULL, threads + 1);
    for (long i = 0; i < threads; i++)
        if (pthread_create(&ids[i], NULL, thread_main, (void *)i)) fail("pthread_create");
    long before = wait_for_go();
    long start = minflt();
    long t0 = now_ns();
    pthread_barrier_wait(&start_line);
    for (long i = 0; i < threads; i++) pthread_join(ids[i], NULL);
    long t1 = now_ns();
    report(pages, t1 - t0, minflt() - start, before);
}

// --- cow and touch: one thread writes every page ---

static void measured_loop(char *p, long pages, int map_first) {
    if (map_first) p = map_pages(pages);
    long before = wait_for_go();
    long start = minflt();
    long t0 = now_ns();
    write_pages(p, 0, pages, 2);
    long t1 = now_ns();
    report(pages, t1 - t0, minflt() - start, before);
}

// Waits for a child and returns its lifetime minor-fault count (the kernel's own).
static long reap(pid_t child) {
    int status;
    struct rusage ru;
    if (wait4(child, &status, 0, &ru) != child) fail("wait4");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "bench_cow: child %d failed (status %#x)\n", child, status);
        exit(1);
    }
    return ru.ru_minflt;
}

static int measured(const char *mode, long mib, long threads) {
    long pages = mib * MIB / PAGE;
    char *p = NULL;
    int touch = !strcmp(mode, "touch");
    if (!touch) {
        p = map_pages(pages);
        write_pages(p, 0, pages, 1);
    }
    pid_t child = fork();
    if (child < 0) fail("fork");
    if (child == 0) {
        if (!strcmp(mode, "threads")) measured_threads(p, pages, threads);
        else measured_loop(p, pages, touch);
        _exit(0);
    }
    long total = reap(child);
    char line[128];
    snprintf(line, sizeof line, "exit pid=%d minflt=%ld\n", child, total);
    say(line);
    return 0;
}

// --- soak: a steady rate of COW faults from a stream of short-lived children ---

// Writes the pages in batches of 10 ms worth, each sleeping until the soak's one schedule
// (start + faults so far / rate) says the next batch is due, so the time between children,
// forking and exiting, is caught up and the rate holds over the whole soak.
static void paced_writes(char *p, long pages, long rate, long start, long before) {
    long per_tick = rate / 100;
    for (long done = 0; done < pages; done += per_tick) {
        long end = done + per_tick < pages ? done + per_tick : pages;
        write_pages(p, done, end, 2);
        long due = start + (before + end) * 1000000000L / rate;
        struct timespec at = {due / 1000000000L, due % 1000000000L};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
    }
}

static int soak(long seconds, long rate, long mib) {
    long pages = mib * MIB / PAGE;
    char *p = map_pages(pages);
    write_pages(p, 0, pages, 1);
    wait_for_go();
    long start = now_ns();
    long end = start + seconds * 1000000000L;
    long children = 0, faults = 0;
    while (now_ns() < end) {
        pid_t child = fork();
        if (child < 0) fail("fork");
        if (child == 0) {
            paced_writes(p, pages, rate, start, children * pages);
            _exit(0);
        }
        faults += reap(child);
        children++;
    }
    char line[128];
    snprintf(line, sizeof line, "soak children=%ld faults=%ld elapsed_ms=%ld\n", children,
             faults, (now_ns() - start) / 1000000);
    say(line);
    return 0;
}

int main(int argc, char **argv) {
    page_size = sysconf(_SC_PAGESIZE);
    if (page_size <= 0) fail("sysconf(_SC_PAGESIZE)");
    if (argc >= 5 && !strcmp(argv[1], "soak"))
        return soak(atol(argv[2]), atol(argv[3]), atol(argv[4]));
    if (argc >= 3 && (!strcmp(argv[1], "cow") || !strcmp(argv[1], "touch")))
        return measured(argv[1], atol(argv[2]), 1);
    if (argc >= 4 && !strcmp(argv[1], "threads"))
        return measured(argv[1], atol(argv[2]), atol(argv[3]));
    fprintf(stderr, "usage: bench_cow cow|touch MIB | threads MIB T | soak SECONDS RATE MIB\n");
    return 2;
}
