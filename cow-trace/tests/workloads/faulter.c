// A scripted workload for tests. Reads one command per line on stdin and blocks in read(2)
// between commands, so a test can read /proc/PID/stat while it takes no faults.
// It writes "ok\n" to stdout after each command.
//   touch N      map N private anonymous pages and write one byte to each
//   read N       map N private anonymous pages and read each (the shared zero page)
//   sparse N     map N regions of 64 KiB and write the first page of each: N faults, each in
//                a region of its own (as the in-kernel summary counts them)
//   zero N       as read N, print "pages ADDR", then write each page (N zero-page fills)
//   huge-zero    map a huge page's worth (a PMD's span, MADV_HUGEPAGE), read it (the huge zero
//                page, where the kernel has one), print "pages ADDR", write one byte (a zero
//                fill: of a whole huge page on kernels that allocate one there), and print
//                "huge KB", the huge pages then mapped (AnonHugePages of smaps_rollup)
//   cow N        map and fill N pages, print "pages ADDR", fork; the child writes each page
//                (N COW faults) and exits
//   reuse N      like cow, then the parent writes each page again after the child exited
//                (N copies in the child, N reuses in the parent)
//   snapshot N   map and fill N pages, fork a child that waits; the parent writes each page
//                (N copies while the child lives), then lets the child exit. Prints
//                "pages ADDR" and "child PID"
//   snapshot N M the same, but the parent writes only the first M pages while the child lives
//                (M copies), then all N after it exited (N - M reuses), as Redis does
//   snapshot-helpers N
//                as snapshot N, but before the parent writes it runs two helpers to their end:
//                one by posix_spawn (a child sharing its memory, CLONE_VM) and one by fork and
//                exec (a snapshot until its exec). The copies are still the first child's
//   frame N      call a function whose frame holds N pages and write them from the top down:
//                N first touches of the stack, each below the stack pointer's reach so far
//   threads T N  T threads each map and write N pages
//   pool T       start T threads that wait for pool-touch (threads existing before a tracer
//                attaches)
//   grow T MS    in the background, a thread starts T more pool threads, one every MS ms, and
//                returns at once (threads created by a thread while a tracer attaches)
//   grown        wait until the background growth is over
//   pool-touch N each pool thread maps and writes N pages; returns when all are done
//   major PATH N write an N-page file at PATH, drop its page cache, map it and read each page
//   private PATH N cached|uncached
//                write an N-page file at PATH (cached: its pages stay in the page cache;
//                uncached: dropped from it, checked with mincore, and no readahead), map it
//                MAP_PRIVATE, read its first half, then write every page: N copies of a file page into private memory,
//                about half of them at a first write to a page not mapped yet. Prints
//                "pages ADDR" and, uncached, "resident K" (pages still cached before the reads)
//   shared PATH N cached|uncached
//                write an N-page file at PATH (uncached: as for private), map it MAP_SHARED,
//                write every page: no copy. Prints "pages ADDR" (and "resident K")
//   shared-reread PATH N
//                as shared PATH N cached, but read every page before writing it: each write is
//                then a write-protect fault (the kernel tracking the clean page's first
//                write), no copy-on-write. Prints "pages ADDR"
//   shm N        map N pages of shared anonymous memory and write each: no copy. Prints
//                "pages ADDR"
//   pin          stay on the current CPU from now on (before pageout: see pin())
//   pageout      push the pages of the private file mappings kept (copies by now) out to swap
//                (MADV_PAGEOUT); prints "swapped K", how many are in swap
//   rewrite      write every page of the mappings kept again (after pageout: each is read
//                back from swap, no copy)
//   release      unmap what private, shared and shm mapped (it stays mapped till then, for
//                pageout and rewrite) and delete the files
//   tree N       fork a child that forks a grandchild; the grandchild writes N pages, prints
//                "grandchild PID", and both exit
//   forks N R    map R regions of 64 KiB and write the first page of each, then fork N children
//                one after another; each writes the first page of every region (R copies, each
//                in a region of its own) and exits. Prints "child PID MINFLT MAJFLT" for each,
//                the kernel's counts read from /proc/PID/stat before reaping it
//   rename NAME N  set the thread's name to NAME (prctl), print "pages ADDR", write N pages
//   exec-thread N  a second thread prints "pages ADDR" and "ok", writes N pages, and execs
//                this program again: the new image takes over the process's pid (the thread's
//                own id is gone) and reads the next command. The writes are the thread's last
//                faults before execve.
//   stacks N     map N private anonymous pages and read each (N <= 65536), each from a call
//                stack of its own: more distinct user stacks than --stack's map holds
//   idle-thread  start a second thread that sleeps for good; print "thread TID"
//   spin         fault forever (an unrelated busy process for filtering tests)
//   exit         exit(0)
#define _GNU_SOURCE
#include <alloca.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

// The system's page size (arm64 kernels use 4, 16 or 64 KiB), read once at start.
static long page_size;
#define PAGE page_size
// The largest page size of the architectures cow-trace runs on.
#define MAX_PAGE 65536

static void say(const char *text) {
    if (write(1, text, strlen(text)) < 0) _exit(2);
}

static char *map_pages(long n) {
    char *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) _exit(3);
    madvise(p, n * PAGE, MADV_NOHUGEPAGE);
    return p;
}

static void touch(long n) {
    char *p = map_pages(n);
    for (long i = 0; i < n; i++) p[i * PAGE] = 1;
}

// Reads n fresh pages (each maps the shared zero page), prints "pages ADDR", then writes each:
// n write-protect faults on the zero page, each filled with a zeroed page, nothing copied.
static void zero(long n) {
    volatile char *p = map_pages(n);
    long sum = 0;
    for (long i = 0; i < n; i++) sum += p[i * PAGE];
    if (sum != 0) _exit(4);
    char line[64];
    snprintf(line, sizeof line, "pages %lx\n", (unsigned long)p);
    say(line);
    for (long i = 0; i < n; i++) p[i * PAGE] = 1;
}

static void huge_zero(void) {
    // A PMD maps as many pages as a page holds 8-byte entries.
    const long span = PAGE * (PAGE / 8);
    char *raw = mmap(NULL, 2 * span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) _exit(3);
    volatile char *p = (char *)(((unsigned long)raw + span - 1) & ~(unsigned long)(span - 1));
    madvise((void *)p, span, MADV_HUGEPAGE);
    if (p[0] != 0) _exit(4);
    char line[128];
    snprintf(line, sizeof line, "pages %lx\n", (unsigned long)p);
    say(line);
    p[2 * PAGE] = 1;
    long huge_kb = 0;
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f) _exit(5);
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld", &huge_kb) == 1) break;
    fclose(f);
    snprintf(line, sizeof line, "huge %ld\n", huge_kb);
    say(line);
}

static void sparse(long n) {
    const long stride = 16 * PAGE;
    char *p = mmap(NULL, n * stride, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) _exit(3);
    madvise(p, n * stride, MADV_NOHUGEPAGE);
    for (long i = 0; i < n; i++) p[i * stride] = 1;
    munmap(p, n * stride);
}

static void readpages(long n) {
    volatile char *p = map_pages(n);
    long sum = 0;
    for (long i = 0; i < n; i++) sum += p[i * PAGE];
    if (sum != 0) _exit(4);
}

// Page i is read at the end of a chain of 16 calls, each through stack_zero or stack_one as
// bit k of i says: no two pages fault with the same user stack (the return addresses differ).
static volatile char stack_sink;
static int stack_step(volatile char *page, unsigned bits, int depth);
__attribute__((noinline)) static int stack_zero(volatile char *page, unsigned bits, int depth) {
    return stack_step(page, bits, depth) + 1;
}
__attribute__((noinline)) static int stack_one(volatile char *page, unsigned bits, int depth) {
    return stack_step(page, bits, depth) + 2;
}
__attribute__((noinline)) static int stack_step(volatile char *page, unsigned bits, int depth) {
    if (depth == 0) {
        stack_sink = *page;
        return 0;
    }
    if (bits & 1) return stack_one(page, bits >> 1, depth - 1) + 1;
    return stack_zero(page, bits >> 1, depth - 1) + 1;
}

static void stacks(long n) {
    volatile char *p = map_pages(n);
    for (long i = 0; i < n; i++) stack_step(p + i * PAGE, (unsigned)i, 16);
}

// Maps and fills n pages, prints "pages ADDR", forks; the child writes each page (n COW
// faults, each a copy) and exits. Returns the pages to the parent once the child is gone.
static char *cow(long n) {
    char *p = map_pages(n);
    for (long i = 0; i < n; i++) p[i * PAGE] = 1;
    char line[64];
    snprintf(line, sizeof line, "pages %lx\n", (unsigned long)p);
    say(line);
    pid_t child = fork();
    if (child == 0) {
        for (long i = 0; i < n; i++) p[i * PAGE] = 2;
        _exit(0);
    }
    waitpid(child, NULL, 0);
    return p;
}

// Keeps the process on the CPU it runs on: a page still in another CPU's LRU batch holds an
// extra reference, and the kernel then copies rather than reuses it ("references from remote
// LRU pagevecs" in mm/memory.c), which a migration between filling and rewriting would cause.
static void pin_to_this_cpu(void) {
    cpu_set_t here;
    CPU_ZERO(&here);
    CPU_SET(sched_getcpu(), &here);
    if (sched_setaffinity(0, sizeof here, &here)) _exit(13);
}

// As cow, then the parent writes each page again: the parent, their last sharer, reuses each
// (on one CPU, see pin_to_this_cpu).
static void reuse(long n) {
    pin_to_this_cpu();
    char *p = cow(n);
    for (long i = 0; i < n; i++) p[i * PAGE] = 3;
}

// As reuse, but after each rewrite a system call allocates a user page (mmap's MAP_POPULATE
// faults it in): an allocation after the fault, not in it. Prints "pages ADDR".
static void reuse_then_allocate(long n) {
    pin_to_this_cpu();
    char *p = cow(n);
    for (long i = 0; i < n; i++) {
        p[i * PAGE] = 3;
        char *q = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (q == MAP_FAILED) _exit(16);
        munmap(q, PAGE);
    }
}

// A child that runs another program (as a shell's do): it shares its parent's memory only
// until its exec. The parent writes n pages it filled before the fork once the child has
// exec'd (a close-on-exec pipe says when): reuses, no snapshot's. Prints "pages ADDR" and
// "child PID"; the child (sleep) is ended after.
static void exec_child(long n) {
    char *p = map_pages(n);
    for (long i = 0; i < n; i++) p[i * PAGE] = 1;
    int exec_done[2];
    if (pipe2(exec_done, O_CLOEXEC)) _exit(9);
    pid_t child = fork();
    if (child == 0) {
        execl("/bin/sleep", "sleep", "30", (char *)NULL);
        _exit(127);
    }
    close(exec_done[1]);
    char c;
    if (read(exec_done[0], &c, 1) != 0) _exit(10);
    close(exec_done[0]);
    // The pipe closes early in the exec; the kernel's exec tracepoint fires once the program is
    // loaded. Sleeping in its own program (state S, comm "sleep"), the child is past both.
    char path[64], stat[256];
    snprintf(path, sizeof path, "/proc/%d/stat", child);
    for (int tries = 0;; tries++) {
        int fd = open(path, O_RDONLY);
        long got = fd >= 0 ? read(fd, stat, sizeof stat - 1) : -1;
        if (fd >= 0) close(fd);
        if (got > 0) {
            stat[got] = 0;
            if (strstr(stat, "(sleep) S")) break;
        }
        if (tries == 10000) _exit(19);
        usleep(1000);
    }
    for (long i = 0; i < n; i++) p[i * PAGE] = 2;
    char line[96];
    snprintf(line, sizeof line, "pages %lx\nchild %d\n", (unsigned long)p, child);
    say(line);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
}

// Runs /bin/true to its end, by posix_spawn (vfork-like: CLONE_VM) or by fork and exec.
static void run_helper(int by_spawn) {
    char *argv[] = {"true", NULL}, *envp[] = {NULL};
    pid_t helper;
    if (by_spawn) {
        if (posix_spawn(&helper, "/bin/true", NULL, NULL, argv, envp)) _exit(20);
    } else {
        helper = fork();
        if (helper == 0) {
            execve("/bin/true", argv, envp);
            _exit(127);
        }
    }
    int status;
    if (helper < 0 || waitpid(helper, &status, 0) != helper || status != 0) _exit(21);
}

// A fork-based snapshot, as Redis's BGSAVE: the child only reads (it would write the snapshot
// out) while the parent keeps writing, so the parent copies each page it writes during the
// child's life; the first write to each other page after the child exited reuses it. The
// parent writes the first m pages during the child's life, all n after. With `helpers`, the
// parent first runs two programs to their end, as a shell-out (system(), popen()) beside a
// BGSAVE child: one by posix_spawn, one by fork and exec. Prints "pages ADDR" and "child PID".
static void snapshot(long n, long m, int helpers) {
    char *p = map_pages(n);
    for (long i = 0; i < n; i++) p[i * PAGE] = 1;
    int go[2], done[2];
    if (pipe(go) || pipe(done)) _exit(9);
    pid_t child = fork();
    if (child == 0) {
        char c;
        if (read(go[0], &c, 1) != 1) _exit(10);
        _exit(0);
    }
    if (helpers) {
        run_helper(1);
        run_helper(0);
    }
    char line[96];
    snprintf(line, sizeof line, "pages %lx\nchild %d\n", (unsigned long)p, child);
    say(line);
    for (long i = 0; i < m; i++) p[i * PAGE] = 2;
    if (write(go[1], "x", 1) != 1) _exit(11);
    waitpid(child, NULL, 0);
    for (long i = 0; i < n; i++) p[i * PAGE] = 4;
    close(go[0]); close(go[1]); close(done[0]); close(done[1]);
}

// N pages of stack written from the top down (as a deep call chain touches its stack). The
// frame lies below the stack pointer's reach so far: a tracer copying the user stack at each
// fault reads pages not yet present.
__attribute__((noinline)) static void frame(long n) {
    char *pages = alloca(n * PAGE);
    for (long i = n - 1; i >= 0; i--) ((volatile char *)pages)[i * PAGE] = 1;
}

static long per_thread;
static void *thread_main(void *arg) {
    (void)arg;
    touch(per_thread);
    return NULL;
}

// The thread renames itself, then faults: each fault is the new name's.
static void rename_and_touch(const char *name, long n) {
    if (prctl(PR_SET_NAME, name, 0, 0, 0)) _exit(12);
    char *p = map_pages(n);
    char line[64];
    snprintf(line, sizeof line, "pages %lx\n", (unsigned long)p);
    say(line);
    for (long i = 0; i < n; i++) p[i * PAGE] = 1;
}

static void *exec_thread_main(void *arg) {
    long n = *(long *)arg;
    char *p = map_pages(n);
    // Everything execve reads lives on this stack, touched now; a failing execve runs its
    // code once. So no fault comes between the last write and the exec.
    char path[] = "/proc/self/exe", name[] = "faulter", missing[] = "/nonexistent";
    char *argv[] = {name, NULL}, *envp[] = {NULL};
    execve(missing, argv, envp);
    char line[64];
    snprintf(line, sizeof line, "pages %lx\nok\n", (unsigned long)p);
    say(line);
    for (long i = 0; i < n; i++) p[i * PAGE] = 1;
    execve(path, argv, envp);
    perror("faulter: execve /proc/self/exe");
    _exit(13);
}

static void exec_thread(long n) {
    pthread_t id;
    pthread_create(&id, NULL, exec_thread_main, &n);
    pthread_join(id, NULL);  // never returns: the thread's execve ends this image
}

static void threads(long t, long n) {
    pthread_t ids[64];
    per_thread = n;
    if (t > 64) t = 64;
    for (long i = 0; i < t; i++) pthread_create(&ids[i], NULL, thread_main, NULL);
    for (long i = 0; i < t; i++) pthread_join(ids[i], NULL);
}

// The pool: threads that wait for a round number to change, then touch pool_pages pages each.
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER, pool_done = PTHREAD_COND_INITIALIZER;
static long pool_round, pool_size, pool_finished, pool_pages;

static void *pool_main(void *arg) {
    long seen = (long)arg;
    for (;;) {
        pthread_mutex_lock(&pool_lock);
        while (pool_round == seen) pthread_cond_wait(&pool_wake, &pool_lock);
        seen = pool_round;
        long n = pool_pages;
        pthread_mutex_unlock(&pool_lock);
        touch(n);
        pthread_mutex_lock(&pool_lock);
        pool_finished++;
        pthread_cond_signal(&pool_done);
        pthread_mutex_unlock(&pool_lock);
    }
    return NULL;
}

static void pool_add(void) {
    pthread_t id;
    pthread_mutex_lock(&pool_lock);
    if (pthread_create(&id, NULL, pool_main, (void *)pool_round)) _exit(14);
    pool_size++;
    pthread_mutex_unlock(&pool_lock);
}

static long grow_count, grow_ms;
static pthread_t grower;
static void *grow_main(void *arg) {
    (void)arg;
    for (long i = 0; i < grow_count; i++) {
        pool_add();
        usleep(grow_ms * 1000);
    }
    return NULL;
}

static void pool_touch(long n) {
    pthread_mutex_lock(&pool_lock);
    pool_pages = n;
    pool_finished = 0;
    pool_round++;
    pthread_cond_broadcast(&pool_wake);
    while (pool_finished < pool_size) pthread_cond_wait(&pool_done, &pool_lock);
    pthread_mutex_unlock(&pool_lock);
}

static void *idle_thread_main(void *arg) {
    char line[64];
    snprintf(line, sizeof line, "thread %d\n", gettid());
    say(line);
    sem_post(arg);
    for (;;) pause();
    return NULL;
}

// A thread that stays: its id is a thread id, not a process id.
static void idle_thread(void) {
    static sem_t started;
    pthread_t id;
    sem_init(&started, 0, 0);
    pthread_create(&id, NULL, idle_thread_main, &started);
    while (sem_wait(&started)) {}
}

static void major(const char *path, long n) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) _exit(5);
    static char page[MAX_PAGE];
    memset(page, 7, PAGE);
    for (long i = 0; i < n; i++)
        if (write(fd, page, PAGE) != PAGE) _exit(6);
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    volatile char *p = mmap(NULL, n * PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) _exit(7);
    madvise((void *)p, n * PAGE, MADV_RANDOM);
    long sum = 0;
    for (long i = 0; i < n; i++) sum += p[i * PAGE];
    if (sum != 7 * n) _exit(8);
    munmap((void *)p, n * PAGE);
    close(fd);
    unlink(path);
}

// File mappings stay until "release", for the commands that work on them again (pageout, pin,
// rewrite).
static struct kept {
    void *p;
    long n;
    int fd;
    char path[1024];
} kept[16];
static int kept_count;

static void keep(void *p, long n, int fd, const char *path) {
    if (kept_count == 16) _exit(15);
    struct kept *k = &kept[kept_count++];
    k->p = p;
    k->n = n;
    k->fd = fd;
    snprintf(k->path, sizeof k->path, "%s", path);
}

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

// Pushes the pages of the kept private file mappings (copied, so anonymous) out to swap, and
// prints "swapped K": how many of them are in swap now (/proc/self/pagemap bit 62).
static void pageout(void) {
    long swapped = 0;
    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    if (pagemap < 0) _exit(16);
    for (int i = 0; i < kept_count; i++) {
        if (kept[i].fd < 0) continue;
        madvise(kept[i].p, kept[i].n * PAGE, MADV_PAGEOUT);
        for (long j = 0; j < kept[i].n; j++) {
            unsigned long long entry;
            off_t at = ((unsigned long)kept[i].p / PAGE + j) * sizeof entry;
            if (pread(pagemap, &entry, sizeof entry, at) != sizeof entry) _exit(17);
            swapped += (entry >> 62) & 1;
        }
    }
    close(pagemap);
    char line[64];
    snprintf(line, sizeof line, "swapped %ld\n", swapped);
    say(line);
}

// Keeps this process on the CPU it runs on: a page it faults in waits in that CPU's batch
// before it joins the LRU lists, and MADV_PAGEOUT moves only its own CPU's batch there.
static void pin(void) {
    cpu_set_t here;
    CPU_ZERO(&here);
    CPU_SET(sched_getcpu(), &here);
    if (sched_setaffinity(0, sizeof here, &here)) _exit(13);
}

// Writes every page of the kept mappings again.
static void rewrite(void) {
    for (int i = 0; i < kept_count; i++)
        for (long j = 0; j < kept[i].n; j++) ((char *)kept[i].p)[j * PAGE] = 3;
}

static void release(void) {
    for (int i = 0; i < kept_count; i++) {
        munmap(kept[i].p, kept[i].n * PAGE);
        if (kept[i].fd >= 0) {
            close(kept[i].fd);
            unlink(kept[i].path);
        }
    }
    kept_count = 0;
}

// Writes an n-page file of 7s at path; with drop, pushes it out of the page cache and returns
// how many of its pages are still resident (mincore), else 0.
static int make_file(const char *path, long n, int drop, long *resident) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) _exit(5);
    static char page[MAX_PAGE];
    memset(page, 7, PAGE);
    for (long i = 0; i < n; i++)
        if (write(fd, page, PAGE) != PAGE) _exit(6);
    *resident = n;
    if (drop) {
        // A clean file's pages leave the cache at DONTNEED: write them back first.
        fdatasync(fd);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        void *probe = mmap(NULL, n * PAGE, PROT_READ, MAP_SHARED, fd, 0);
        if (probe == MAP_FAILED) _exit(7);
        static unsigned char in_core[1 << 16];
        if (n > (long)sizeof in_core || mincore(probe, n * PAGE, in_core)) _exit(14);
        *resident = 0;
        for (long i = 0; i < n; i++) *resident += in_core[i] & 1;
        munmap(probe, n * PAGE);
    }
    return fd;
}

// A private file mapping: reads the first half (each read maps the file's page read-only, and
// the kernel maps the cached pages around it too), then writes every page. Each write copies
// the file's page into private memory: a page mapped before at a write-protect fault, the
// others at their first fault (the kernel's do_cow_fault). n copies in all.
static void private_file(const char *path, long n, int drop) {
    long resident;
    int fd = make_file(path, n, drop, &resident);
    volatile char *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) _exit(7);
    // No readahead: each page not cached is read from the disk by the fault that needs it, so
    // the writes to the second half read the file's page before copying it.
    if (drop) madvise((void *)p, n * PAGE, MADV_RANDOM);
    char line[96];
    snprintf(line, sizeof line, "pages %lx\n", (unsigned long)p);
    say(line);
    if (drop) {
        snprintf(line, sizeof line, "resident %ld\n", resident);
        say(line);
    }
    long sum = 0;
    for (long i = 0; i < n / 2; i++) sum += p[i * PAGE];
    if (sum != 7 * (n / 2)) _exit(8);
    for (long i = 0; i < n; i++) p[i * PAGE] = 1;
    keep((void *)p, n, fd, path);
}

// A shared file mapping written: the file's own pages are written, nothing is copied (those
// not cached are read into the page cache first: uncached).
static void shared_file(const char *path, long n, int drop, int reread) {
    long resident;
    int fd = make_file(path, n, drop, &resident);
    char *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) _exit(7);
    if (drop) madvise(p, n * PAGE, MADV_RANDOM);
    if (reread) {
        volatile char *q = p;
        long sum = 0;
        for (long i = 0; i < n; i++) sum += q[i * PAGE];
        if (sum < 0) _exit(4);
    }
    char line[64];
    snprintf(line, sizeof line, "pages %lx\n", (unsigned long)p);
    say(line);
    if (drop) {
        snprintf(line, sizeof line, "resident %ld\n", resident);
        say(line);
    }
    for (long i = 0; i < n; i++) p[i * PAGE] = 1;
    keep(p, n, fd, path);
}

// Mappings moved by mremap where others were unmapped, which the kernel's mapping records do
// not say: shared anonymous memory moved onto an unmapped private file mapping, then written
// (its pages are allocated not zeroed, as a file copy's are, but no copies); then a private file mapping moved onto unmapped memory, then
// written (n copies of the file's pages). Prints "pages ADDR" for each; kept until "release".
static void moved(const char *path, long n) {
    long resident;
    int fd = make_file(path, n, 0, &resident);
    char *file = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    char *anon = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (file == MAP_FAILED || anon == MAP_FAILED || munmap(file, n * PAGE)) _exit(7);
    char *p = mremap(anon, n * PAGE, n * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, file);
    if (p != file) _exit(18);
    char line[64];
    snprintf(line, sizeof line, "pages %lx\n", (unsigned long)p);
    say(line);
    for (long i = 0; i < n; i++) p[i * PAGE] = 1;
    keep(p, n, -1, "");

    char *q = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    char *hole = map_pages(n);
    if (q == MAP_FAILED || munmap(hole, n * PAGE)) _exit(7);
    char *r = mremap(q, n * PAGE, n * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, hole);
    if (r != hole) _exit(18);
    snprintf(line, sizeof line, "pages %lx\n", (unsigned long)r);
    say(line);
    for (long i = 0; i < n; i++) r[i * PAGE] = 2;
    keep(r, n, fd, path);
}

// Shared anonymous memory (shmem) written: each first write fills a page of shmem, no copy.
// Stays mapped until "release".
static void shm(long n) {
    char *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) _exit(3);
    char line[64];
    snprintf(line, sizeof line, "pages %lx\n", (unsigned long)p);
    say(line);
    for (long i = 0; i < n; i++) p[i * PAGE] = 1;
    keep(p, n, -1, "");
}

static void tree(long n) {
    pid_t child = fork();
    if (child == 0) {
        pid_t grandchild = fork();
        if (grandchild == 0) {
            touch(n);
            char line[64];
            snprintf(line, sizeof line, "grandchild %d\n", getpid());
            say(line);
            _exit(0);
        }
        waitpid(grandchild, NULL, 0);
        _exit(0);
    }
    waitpid(child, NULL, 0);
}

// Many short-lived processes, one after another: each leaves what the in-kernel summary counted
// of it (R regions and its start and exit) behind in the summary's maps. Each child's counts
// are read from its /proc/PID/stat as a zombie, when it faults no more, before it is reaped.
static void forks(long n, long regions) {
    const long stride = 16 * PAGE;  // at least the summary's 64 KiB region
    char *p = mmap(NULL, regions * stride, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) _exit(3);
    madvise(p, regions * stride, MADV_NOHUGEPAGE);
    for (long r = 0; r < regions; r++) p[r * stride] = 1;
    for (long i = 0; i < n; i++) {
        pid_t child = fork();
        if (child < 0) _exit(5);
        if (child == 0) {
            for (long r = 0; r < regions; r++) p[r * stride] = 2;
            _exit(0);
        }
        siginfo_t info;
        if (waitid(P_PID, child, &info, WEXITED | WNOWAIT)) _exit(6);
        char path[64], stat[1024];
        snprintf(path, sizeof path, "/proc/%d/stat", child);
        int fd = open(path, O_RDONLY);
        long got = fd >= 0 ? read(fd, stat, sizeof stat - 1) : -1;
        if (got <= 0) _exit(7);
        close(fd);
        stat[got] = 0;
        // After the ")" that ends comm: state is field 3, minflt 10, majflt 12.
        char *rest = strrchr(stat, ')');
        unsigned long minflt = 0, majflt = 0;
        if (!rest || sscanf(rest + 2, "%*c %*d %*d %*d %*d %*d %*u %lu %*u %lu", &minflt,
                            &majflt) != 2)
            _exit(8);
        char line[96];
        snprintf(line, sizeof line, "child %d %lu %lu\n", child, minflt, majflt);
        say(line);
        waitpid(child, NULL, 0);
    }
    munmap(p, regions * stride);
}

static void spin(void) {
    for (;;) {
        char *p = map_pages(64);
        for (long i = 0; i < 64; i++) p[i * PAGE] = 1;
        munmap(p, 64 * PAGE);
    }
}

static void *serve(void *arg);

// The main thread hands the commands to a new thread and exits alone (the exit system call,
// as pthread_exit ends in; pthread_exit itself needs libgcc_s, which a minimal root may lack):
// the process lives on with a zombie leader, as /proc shows it.
static void leader_exit(void) {
    pthread_t server;
    if (pthread_create(&server, NULL, serve, "ok\n")) _exit(17);
    for (;;) syscall(SYS_exit, 0);
}

// Runs another program in this process (its commands then come from the same stdin).
static void exec_program(const char *path) {
    execl(path, path, (char *)NULL);
    _exit(127);
}

int main(void) {
    page_size = sysconf(_SC_PAGESIZE);
    if (page_size <= 0 || page_size > MAX_PAGE) _exit(9);
    serve(NULL);
    return 0;
}

// Runs commands read from stdin, one per line, saying "ok" after each; `first` is said first.
static void *serve(void *first) {
    if (first) say(first);
    static char line[4096];
    for (;;) {
        // Read a line with read(2) only: stdio would allocate (and fault) between commands.
        long len = 0;
        for (;;) {
            long got = read(0, line + len, 1);
            if (got <= 0) exit(0);
            if (line[len] == '\n' || len == (long)sizeof line - 2) break;
            len++;
        }
        line[len] = 0;
        char path[1024], mode[16];
        long a = 0, b = 0;
        if (sscanf(line, "touch %ld", &a) == 1) touch(a);
        else if (sscanf(line, "read %ld", &a) == 1) readpages(a);
        else if (sscanf(line, "sparse %ld", &a) == 1) sparse(a);
        else if (sscanf(line, "zero %ld", &a) == 1) zero(a);
        else if (!strcmp(line, "huge-zero")) huge_zero();
        else if (sscanf(line, "cow %ld", &a) == 1) cow(a);
        else if (sscanf(line, "reuse %ld", &a) == 1) reuse(a);
        else if (sscanf(line, "reuse-then-allocate %ld", &a) == 1) reuse_then_allocate(a);
        else if (sscanf(line, "exec-child %ld", &a) == 1) exec_child(a);
        else if (sscanf(line, "frame %ld", &a) == 1) frame(a);
        else if (sscanf(line, "snapshot-helpers %ld", &a) == 1) snapshot(a, a, 1);
        else if (sscanf(line, "snapshot %ld %ld", &a, &b) == 2) snapshot(a, b, 0);
        else if (sscanf(line, "snapshot %ld", &a) == 1) snapshot(a, a, 0);
        else if (sscanf(line, "threads %ld %ld", &a, &b) == 2) threads(a, b);
        else if (sscanf(line, "major %1023s %ld", path, &a) == 2) major(path, a);
        else if (sscanf(line, "pool %ld", &a) == 1)
            for (long i = 0; i < a; i++) pool_add();
        else if (sscanf(line, "grow %ld %ld", &a, &b) == 2) {
            grow_count = a, grow_ms = b;
            if (pthread_create(&grower, NULL, grow_main, NULL)) _exit(15);
        } else if (!strcmp(line, "grown")) pthread_join(grower, NULL);
        else if (sscanf(line, "pool-touch %ld", &a) == 1) pool_touch(a);
        else if (sscanf(line, "private %1023s %ld %15s", path, &a, mode) == 3
                 && (!strcmp(mode, "cached") || !strcmp(mode, "uncached")))
            private_file(path, a, !strcmp(mode, "uncached"));
        else if (sscanf(line, "shared %1023s %ld %15s", path, &a, mode) == 3
                 && (!strcmp(mode, "cached") || !strcmp(mode, "uncached")))
            shared_file(path, a, !strcmp(mode, "uncached"), 0);
        else if (sscanf(line, "shared-reread %1023s %ld", path, &a) == 2)
            shared_file(path, a, 0, 1);
        else if (sscanf(line, "shm %ld", &a) == 1) shm(a);
        else if (sscanf(line, "moved %1023s %ld", path, &a) == 2) moved(path, a);
        else if (!strcmp(line, "release")) release();
        else if (!strcmp(line, "pageout")) pageout();
        else if (!strcmp(line, "pin")) pin();
        else if (!strcmp(line, "rewrite")) rewrite();
        else if (sscanf(line, "tree %ld", &a) == 1) tree(a);
        else if (sscanf(line, "forks %ld %ld", &a, &b) == 2) forks(a, b);
        else if (sscanf(line, "rename %15s %ld", path, &a) == 2) rename_and_touch(path, a);
        else if (sscanf(line, "exec-thread %ld", &a) == 1) exec_thread(a);
        else if (sscanf(line, "stacks %ld", &a) == 1) stacks(a);
        else if (!strcmp(line, "idle-thread")) idle_thread();
        else if (!strcmp(line, "spin")) spin();
        else if (!strcmp(line, "leader-exit")) leader_exit();
        else if (sscanf(line, "exec %1023s", path) == 1) exec_program(path);
        else if (!strcmp(line, "exit")) exit(0);
        else { say("unknown command\n"); continue; }
        say("ok\n");
    }
}
