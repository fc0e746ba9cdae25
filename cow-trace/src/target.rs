//! What to trace: an existing process tree (-x PID), or a command started held (-- CMD).
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    sys::{
        signal::{Signal, kill, killpg},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, Gid, Pid, Uid, User, fork, pipe2, setpgid},
};

use crate::failure::{Status, failure};

const PF_KTHREAD: u32 = 0x0020_0000;

/// Checks that `pid` names a live user process that can be traced: not cow-trace itself.
pub fn check_pid(pid: i32) -> anyhow::Result<()> {
    if pid as u32 == std::process::id() {
        return Err(failure(
            Status::Target,
            format!("pid {pid} is cow-trace itself, which never traces itself: give another pid"),
        ));
    }
    let process = procfs::process::Process::new(pid).map_err(|_| {
        failure(
            Status::Target,
            format!("no process with pid {pid}: check the pid with `ps -p {pid}`"),
        )
    })?;
    let stat = process.stat().map_err(|_| {
        failure(
            Status::Target,
            format!("process {pid} exited before tracing began"),
        )
    })?;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(failure(
            Status::Target,
            format!(
                "pid {pid} ({}) is a kernel thread: it takes no user page faults; give a user process",
                stat.comm
            ),
        ));
    }
    // A leader that exited while its other threads run on is a zombie too: the process lives.
    if matches!(stat.state, 'Z' | 'X') && stat.num_threads <= 1 {
        return Err(failure(
            Status::Target,
            format!(
                "pid {pid} ({}) is a zombie: it has exited and has no memory left to trace",
                stat.comm
            ),
        ));
    }
    Ok(())
}

/// The process (thread group) `pid` belongs to: itself for a process, its process for a
/// thread id, as `ps -L` and `top -H` show them. The kernel follows processes, not threads.
pub fn process_of(pid: i32) -> anyhow::Result<i32> {
    let status = procfs::process::Process::new(pid)
        .and_then(|process| process.status())
        .map_err(|_| {
            failure(
                Status::Target,
                format!("process {pid} exited before tracing began"),
            )
        })?;
    Ok(status.tgid)
}

/// Every live descendant of `root` (children, grandchildren, ...), from /proc.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(processes) = procfs::process::all_processes() {
        for stat in processes.flatten().filter_map(|p| p.stat().ok()) {
            children.entry(stat.ppid).or_default().push(stat.pid);
        }
    }
    let mut found = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if seen.insert(child) {
                found.push(child);
                queue.push(child);
            }
        }
    }
    found
}

/// The thread ids of `pid` (none if it has exited).
pub fn threads(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Is process `pid` still running: not gone, not a zombie with no thread but its leader (a
/// process whose leader exited while other threads run on still runs)?
pub fn is_alive(pid: u32) -> bool {
    !has_exited(pid)
}

/// Whether `pid`'s last exec made it non-dumpable (a set-user-ID or set-group-ID program, or
/// one its user may not read), in which case the kernel dropped every perf event on it
/// (`begin_new_exec()`: "crossing a security domain"), cow-trace's completion and mapping
/// events among them. /proc shows it: a non-dumpable process's files belong to root, a
/// dumpable one's to its effective user. For a process running as root, whose files are
/// root's either way, its user and group ids say: it is non-dumpable after exec when they
/// differ from the effective ones, unless `fs.suid_dumpable` is 1.
pub fn exec_dropped_perf_events(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    // Most execs leave the process dumpable: one stat of /proc/PID says so.
    let owner = std::fs::metadata(format!("/proc/{pid}")).map(|m| m.uid());
    if owner.map_or(true, |owner| owner != 0) {
        return false;
    }
    let Ok(status) = procfs::process::Process::new(pid as i32).and_then(|p| p.status()) else {
        return false;
    };
    if status.euid != 0 {
        return true;
    }
    let ids_differ = status.ruid != status.euid || status.rgid != status.egid;
    let suid_dumpable = std::fs::read_to_string("/proc/sys/fs/suid_dumpable")
        .is_ok_and(|value| value.trim() == "1");
    ids_differ && !suid_dumpable
}

/// Has process `pid` ended for good, every thread of it gone? True once it is gone from /proc,
/// or is a zombie with no thread left but its leader (a leader that exited while its other
/// threads run on is a zombie too, of more than one thread). Unsure (/proc unreadable
/// otherwise): false. A plain read, for it is asked of every process that exits.
pub fn has_exited(pid: u32) -> bool {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(error) => {
            return error.kind() == std::io::ErrorKind::NotFound
                || error.raw_os_error() == Some(libc::ESRCH);
        }
    };
    // After the ")" that ends comm: the state (field 3), num_threads 17 fields on (field 20).
    let Some(rest) = stat.rfind(')').and_then(|end| stat.get(end + 2..)) else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let zombie = matches!(fields.next(), Some("Z" | "X"));
    let threads = fields.nth(16).and_then(|n| n.parse::<u64>().ok());
    zombie && matches!(threads, Some(0 | 1))
}

/// A command forked and stopped before exec until the probes are attached, so none of its
/// faults after exec is missed. Dropped without `release`, it is killed, never left waiting.
pub struct HeldCommand {
    pub pid: Pid,
    go: Option<OwnedFd>,
    /// The command leads a process group of its own, which ending it signals (as `timeout`
    /// does). Not in the foreground of a terminal: there it shares cow-trace's group, so it
    /// keeps the terminal (as with `timeout --foreground`).
    own_group: bool,
    /// Its exit status, once reaped.
    status: Option<i32>,
}

/// How long the command's processes have to end after SIGTERM before they get SIGKILL.
pub const GRACE: Duration = Duration::from_secs(2);

/// How long to wait for processes sent SIGKILL to have exited: they cannot refuse, but on a
/// loaded machine each must still be scheduled to run its exit.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Who the command runs as.
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub name: String,
}

impl Identity {
    /// `--user NAME`, else the user who ran sudo, else nobody in particular (run as we are).
    pub fn choose(user: Option<&str>) -> anyhow::Result<Option<Identity>> {
        if let Some(name) = user {
            let user = User::from_name(name).ok().flatten().ok_or_else(|| {
                failure(
                    Status::Target,
                    format!("no user named {name:?}: give an existing user to --user"),
                )
            })?;
            return Ok(Some(Identity {
                uid: user.uid,
                gid: user.gid,
                name: user.name,
            }));
        }
        let (Ok(uid), Ok(gid)) = (std::env::var("SUDO_UID"), std::env::var("SUDO_GID")) else {
            return Ok(None);
        };
        let (Ok(uid), Ok(gid)) = (uid.parse::<u32>(), gid.parse::<u32>()) else {
            return Ok(None);
        };
        if !Uid::effective().is_root() || uid == 0 {
            return Ok(None);
        }
        let name = std::env::var("SUDO_USER").unwrap_or_else(|_| uid.to_string());
        Ok(Some(Identity {
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            name,
        }))
    }
}

impl HeldCommand {
    /// Forks `argv`, which waits for `release` before exec. Call before any thread starts.
    /// `stdout_to_stderr`: the command writes its standard output to our standard error
    /// (stdout carries a machine-readable stream its lines must not break).
    pub fn spawn(
        argv: &[std::ffi::OsString],
        identity: Option<&Identity>,
        stdout_to_stderr: bool,
    ) -> anyhow::Result<HeldCommand> {
        // Arguments are bytes, as execve takes them (a file name need not be UTF-8).
        let program = &argv[0].to_string_lossy();
        let resolved = which_program(&argv[0]).ok_or_else(|| {
            failure(
                Status::Target,
                format!("command not found: {program}: check the name and PATH"),
            )
        })?;
        if let Err(why) = nix::unistd::access(&resolved, nix::unistd::AccessFlags::X_OK) {
            return Err(failure(
                Status::Target,
                format!("cannot run {program}: {why}: make it executable, or run it with sh"),
            ));
        }
        if let Some(id) = identity
            && let Err(why) = runnable_as(&resolved, id)
        {
            return Err(failure(
                Status::Target,
                format!(
                    "cannot run {program} as {}: {why}: give {} the right to run it, or choose \
                     another --user",
                    id.name, id.name
                ),
            ));
        }
        if let Some(interpreter) = missing_interpreter(&resolved) {
            return Err(failure(
                Status::Target,
                format!(
                    "cannot run {program}: its #! line names {interpreter}, which is not an \
                     executable file: install it, or fix the line"
                ),
            ));
        }
        let path = CString::new(resolved.as_os_str().as_encoded_bytes())
            .context("command path contains a NUL byte")?;
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .context("a command argument contains a NUL byte")?;
        let groups_for = identity
            .map(|id| CString::new(id.name.as_bytes()))
            .transpose()
            .context("user name contains a NUL byte")?;
        let (wait_end, go_end) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
        // A process group of its own would take the terminal from an interactive command:
        // reading it would stop the command (SIGTTIN), and Ctrl-C would not reach it.
        let own_group = !in_terminal_foreground();

        // SAFETY: called before the tokio runtime or any other thread exists, so the child is
        // a copy of a single-threaded process and may call what it likes before exec
        // (initgroups and execv allocate, which is not async-signal-safe). Were another
        // thread alive at the fork, a lock it held would stay held in the child forever.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                drop(go_end);
                if own_group {
                    // SAFETY: plain setpgid(2) on ourselves.
                    unsafe { libc::setpgid(0, 0) };
                }
                let mut byte = [0u8; 1];
                // EOF instead of a byte: cow-trace died or gave up before attaching.
                // SAFETY: plain read(2) on our own pipe.
                let n = unsafe { libc::read(wait_end.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
                if n != 1 {
                    unsafe { libc::_exit(126) };
                }
                // SAFETY: plain dup2(2) on standard descriptors.
                if stdout_to_stderr && unsafe { libc::dup2(2, 1) } != 1 {
                    unsafe { libc::_exit(126) };
                }
                if let (Some(id), Some(name)) = (identity, groups_for.as_ref()) {
                    // SAFETY: plain system calls; failures end the child before exec.
                    let ok = unsafe {
                        libc::initgroups(name.as_ptr(), id.gid.as_raw()) == 0
                            && libc::setgid(id.gid.as_raw()) == 0
                            && libc::setuid(id.uid.as_raw()) == 0
                    };
                    if !ok {
                        unsafe { libc::_exit(126) };
                    }
                }
                let Err(error) = nix::unistd::execv(&path, &args);
                if error == nix::errno::Errno::ENOEXEC {
                    // No #! line: a shell script, as execvp and shells take it.
                    let mut script = vec![c"/bin/sh".to_owned(), path.clone()];
                    script.extend(args.iter().skip(1).cloned());
                    let _ = nix::unistd::execv(c"/bin/sh", &script);
                }
                // As a shell says it: 126 for a file found that would not run.
                let why = format!("cow-trace: cannot run {program}: {}\n", error.desc());
                // SAFETY: plain write(2) of our own buffer to standard error.
                unsafe { libc::write(2, why.as_ptr().cast(), why.len()) };
                unsafe {
                    libc::_exit(if error == nix::errno::Errno::ENOENT {
                        127
                    } else {
                        126
                    })
                };
            }
            ForkResult::Parent { child } => {
                drop(wait_end);
                if own_group {
                    // Both sides set it: whichever runs first, the group exists before we
                    // could signal it.
                    let _ = setpgid(child, child);
                }
                Ok(HeldCommand {
                    pid: child,
                    go: Some(go_end),
                    own_group,
                    status: None,
                })
            }
        }
    }

    /// Lets the command exec.
    pub fn release(&mut self) -> anyhow::Result<()> {
        if let Some(go) = self.go.take() {
            nix::unistd::write(&go, &[1]).context("releasing the held command")?;
        }
        Ok(())
    }

    /// Waits for the command and returns its exit status as a shell would (128+N for signal N).
    pub fn wait(&mut self) -> anyhow::Result<i32> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            match waitpid(self.pid, None) {
                Ok(status) => self.status = exit_status(status),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => return Err(errno).context("waitpid on the traced command"),
            }
        }
    }

    /// Ends the command early (tracing stopped by a signal, --duration or a closed output),
    /// with its descendants: SIGTERM to its process group, or, sharing ours in a terminal's
    /// foreground, to it and each of `traced` (the traced processes still alive); SIGKILL to
    /// whatever is left of them after [`GRACE`], then waits for those to have exited. Returns
    /// whether SIGKILL was needed.
    pub fn terminate(&mut self, traced: &[u32]) -> bool {
        // Never ourselves, whatever the caller's list holds.
        let me = std::process::id();
        let others: Vec<Pid> = traced
            .iter()
            .filter(|&&pid| pid != me && pid != self.pid.as_raw() as u32)
            .map(|&pid| Pid::from_raw(pid as i32))
            .collect();
        self.signal(Signal::SIGTERM, &others);
        let deadline = Instant::now() + GRACE;
        while self.any_left(&others) {
            if Instant::now() >= deadline {
                self.signal(Signal::SIGKILL, &others);
                self.wait_killed(&others);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn signal(&self, signal: Signal, others: &[Pid]) {
        if self.own_group {
            let _ = killpg(self.pid, signal);
        } else {
            for &pid in std::iter::once(&self.pid).chain(others) {
                let _ = kill(pid, signal);
            }
        }
    }

    /// Waits until no process `terminate` sent SIGKILL still runs (zombies have exited), up to
    /// [`KILL_WAIT`]: so that none is left running once cow-trace has ended.
    fn wait_killed(&mut self, others: &[Pid]) {
        let deadline = Instant::now() + KILL_WAIT;
        while Instant::now() < deadline && self.any_running(others) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// As [`HeldCommand::any_left`], but a zombie, which has exited and waits for its parent
    /// (init, for an orphan) to reap it, is not left.
    fn any_running(&mut self, others: &[Pid]) -> bool {
        let left = self.any_left(others);
        if !left || !self.own_group {
            // Not our group: `any_left` already passed over zombies.
            return left;
        }
        let group = self.pid.as_raw();
        procfs::process::all_processes().is_ok_and(|mut all| {
            all.any(|process| {
                process
                    .and_then(|p| p.stat())
                    .is_ok_and(|stat| stat.pgrp == group && !matches!(stat.state, 'Z' | 'X'))
            })
        })
    }

    /// Is any process `terminate` signalled still running? Reaps the command meanwhile.
    fn any_left(&mut self, others: &[Pid]) -> bool {
        if self.status.is_none()
            && let Ok(status) = waitpid(self.pid, Some(WaitPidFlag::WNOHANG))
        {
            self.status = exit_status(status);
        }
        if self.own_group {
            // Signal 0 finds any member left, the command itself once reaped no more.
            killpg(self.pid, None).is_ok()
        } else {
            self.status.is_none() || others.iter().any(|&pid| is_alive(pid.as_raw() as u32))
        }
    }
}

/// The status a shell would give (128+N for signal N); None while it runs.
fn exit_status(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// Does cow-trace run in the foreground of its controlling terminal (an interactive shell's
/// job), where the command must stay in its process group to use the terminal?
fn in_terminal_foreground() -> bool {
    let Ok(terminal) = std::fs::File::open("/dev/tty") else {
        return false;
    };
    // SAFETY: plain tcgetpgrp(3) and getpgrp(2) calls on a descriptor we hold.
    let foreground = unsafe { libc::tcgetpgrp(terminal.as_raw_fd()) };
    foreground > 0 && foreground == unsafe { libc::getpgrp() }
}

impl Drop for HeldCommand {
    fn drop(&mut self) {
        if self.go.is_some() {
            // Never released: attaching failed. Do not leave it waiting.
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        } else if self.status.is_none() {
            // Released, never waited for: tracing failed (an output error), and the command
            // must not run on untraced, as tracing's other ends see to.
            self.terminate(&[]);
            let _ = self.wait();
        }
    }
}

/// Whether `id` may execute `program` (and search every directory on its way), asked by a
/// child that takes the identity the command will run with: cow-trace itself, root, may run
/// files the user may not. Call before any thread starts (see `HeldCommand::spawn`).
fn runnable_as(program: &std::path::Path, id: &Identity) -> Result<(), nix::errno::Errno> {
    let path = CString::new(program.as_os_str().as_encoded_bytes())
        .map_err(|_| nix::errno::Errno::EINVAL)?;
    let name = CString::new(id.name.as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    // SAFETY: single-threaded here (see the caller); the child makes system calls and exits.
    match unsafe { fork() }.map_err(|_| nix::errno::Errno::EAGAIN)? {
        ForkResult::Child => {
            // SAFETY: plain system calls; the child's errno is its exit status.
            unsafe {
                let switched = libc::initgroups(name.as_ptr(), id.gid.as_raw()) == 0
                    && libc::setgid(id.gid.as_raw()) == 0
                    && libc::setuid(id.uid.as_raw()) == 0;
                let status = if !switched {
                    libc::EPERM
                } else if libc::access(path.as_ptr(), libc::X_OK) != 0 {
                    nix::errno::Errno::last_raw()
                } else {
                    0
                };
                libc::_exit(status)
            }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(_, errno)) => {
                    return Err(nix::errno::Errno::from_raw(errno));
                }
                Err(nix::errno::Errno::EINTR) => continue,
                // Killed, or not waitable: the exec will tell.
                _ => return Ok(()),
            }
        },
    }
}

/// The interpreter a script's `#!` line names, if the kernel could not run it (missing, or not
/// executable), which execve would only report as "No such file or directory" about the
/// script itself, after tracing began.
fn missing_interpreter(script: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0; 256];
    let read = std::fs::File::open(script)
        .and_then(|mut file| file.read(&mut head))
        .ok()?;
    let line = head[..read].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let interpreter = line
        .split(|&b| b == b' ' || b == b'\t')
        .find(|word| !word.is_empty())?;
    let interpreter = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(interpreter));
    let runnable = nix::unistd::access(&interpreter, nix::unistd::AccessFlags::X_OK).is_ok()
        && interpreter.is_file();
    (!runnable).then(|| interpreter.display().to_string())
}

fn which_program(program: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    if program.as_bytes().contains(&b'/') {
        let path = std::path::PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process has exited for good once a zombie (of one thread) or gone; running, or a
    /// leader whose other thread runs on, it has not.
    #[test]
    fn exited_for_good_means_every_thread_gone() {
        assert!(!has_exited(std::process::id()), "we run");
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 0"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !has_exited(pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!is_alive(pid), "a zombie now");
        child.wait().unwrap();
        assert!(has_exited(pid), "reaped: gone");
    }

    #[test]
    fn a_live_process_is_traceable_but_not_ourselves() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let traceable = check_pid(child.id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        traceable.unwrap();
        let err = check_pid(std::process::id() as i32).unwrap_err();
        assert!(err.to_string().contains("cow-trace itself"), "{err}");
    }

    #[test]
    fn a_thread_id_names_its_process() {
        let me = std::process::id() as i32;
        assert_eq!(process_of(me).unwrap(), me);
        let (send, receive) = std::sync::mpsc::channel();
        let (stop, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            send.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = wait.recv();
        });
        let live = receive.recv().unwrap();
        assert_ne!(live, me);
        assert_eq!(process_of(live).unwrap(), me);
        drop(stop);
        thread.join().unwrap();
    }

    #[test]
    fn missing_pid_is_a_target_error() {
        let err = check_pid(i32::MAX).unwrap_err();
        let failure = err.downcast_ref::<crate::failure::Failure>().unwrap();
        assert_eq!(failure.status, Status::Target);
        assert!(failure.message.contains("no process with pid"));
    }

    #[test]
    fn kernel_thread_is_refused() {
        // kthreadd is pid 2 on every Linux system.
        let err = check_pid(2).unwrap_err();
        assert!(err.to_string().contains("kernel thread"), "{err}");
    }

    #[test]
    fn finds_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let found = descendants(me);
            if found.len() >= 2 || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
        assert!(found.contains(&(child.id() as i32)), "{found:?}");
        assert!(
            found.len() >= 2,
            "the sleep grandchild is missing: {found:?}"
        );
    }

    #[test]
    fn resolves_programs_on_path() {
        assert!(which_program("sh".as_ref()).is_some());
        assert!(which_program("no-such-program-cow-trace".as_ref()).is_none());
        assert!(which_program("/bin/sh".as_ref()).is_some());
    }
}
