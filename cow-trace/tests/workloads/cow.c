// The article's cow.c experiment, made scriptable: the parent fills a 400 KB array on its
// stack and forks; the child waits for a line on stdin (the article's getchar), then writes
// four elements 10240 ints (40 KiB, ten pages) apart and prints their addresses.
// The parent prints the child's pid first, so a tracer can attach with -x CHILD_PID.
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    int msg[1024 * 100] = {0};
    memset(msg, 0, sizeof(msg));
    setvbuf(stdout, NULL, _IONBF, 0);

    pid_t pid = fork();
    if (pid == 0) {
        getchar();
        msg[1024 * 10] = 1;
        msg[1024 * 20] = 1;
        msg[1024 * 30] = 1;
        msg[1024 * 40] = 1;
        printf("address msg[1024 * 10]: %-10lx\n", (unsigned long)(msg + 1024 * 10));
        printf("address msg[1024 * 20]: %-10lx\n", (unsigned long)(msg + 1024 * 20));
        printf("address msg[1024 * 30]: %-10lx\n", (unsigned long)(msg + 1024 * 30));
        printf("address msg[1024 * 40]: %-10lx\n", (unsigned long)(msg + 1024 * 40));
        // Wait for a second line before exiting, so the test can read /proc/PID/stat while the
        // child is quiet (the article's child sleeps forever instead).
        getchar();
        return 0;
    }
    printf("child pid: %d\n", pid);
    waitpid(pid, NULL, 0);
    return 0;
}
