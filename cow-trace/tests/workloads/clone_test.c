// The article's clone experiment: the child writes to the parent's buffer. Without
// CLONE_VM it writes its own copy (a copy-on-write fault); with CLONE_VM it writes the
// parent's memory, which the parent then sees. Prints the buffer's address and the child's
// pid so a test can find the child's fault.
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int child_func(void *arg) {
    char *buf = (char *)arg;
    strcpy(buf, "hello from child");
    return 0;
}

const int STACK_SIZE = 256 * 1024;
int main(int argc, char **argv) {
    char *stack = malloc(STACK_SIZE);
    int clone_flags = SIGCHLD;
    if (argc > 1 && !strcmp(argv[1], "clone_vm")) {
        clone_flags |= CLONE_VM;
    }
    char buf[] = "msg from parent";
    int child = clone(child_func, stack + STACK_SIZE, clone_flags, buf);
    if (child == -1) {
        exit(1);
    }
    waitpid(child, NULL, 0);
    printf("child pid: %d\n", child);
    printf("buf address: %lx\n", (unsigned long)buf);
    printf("in parent, buf:\"%s\"\n", buf);
    return 0;
}
