//! Child-process plumbing shared by the harness: spawning children that die
//! with the test process, terminating them by pid, free ports, waiting.
//!
//! Only processes this harness spawned are ever signalled, and only by pid.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const PR_SET_PDEATHSIG: i32 = 1;

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(option: i32, ...) -> i32;
    fn getppid() -> i32;
    fn setrlimit(resource: i32, rlim: *const [u64; 2]) -> i32;
}

const RLIMIT_NOFILE: i32 = 7;

/// Make `cmd`'s child run with at most `n` open files (soft and hard limit), set between fork
/// and exec, so the test process keeps its own limit.
pub fn limit_open_files(cmd: &mut Command, n: u64) {
    // SAFETY: setrlimit is async-signal-safe; the array outlives the call.
    unsafe {
        cmd.pre_exec(move || {
            let limit = [n, n];
            if setrlimit(RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Send `sig` to exactly this pid (no process groups, no names).
pub fn signal_pid(pid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: plain libc call with a positive pid.
    let rc = unsafe { kill(pid as i32, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn sigterm(pid: u32) -> io::Result<()> {
    signal_pid(pid, SIGTERM)
}

type Job = Box<dyn FnOnce() + Send>;

/// All children are spawned from one long-lived thread. `PR_SET_PDEATHSIG`
/// fires when the *thread* that forked the child exits, so forking from a
/// short-lived test thread (or a tokio blocking thread) would kill the child
/// too early; this thread lives as long as the test process.
fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("test-child-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn the child-spawner thread");
        Mutex::new(tx)
    })
}

/// Spawn `cmd` so that the child gets SIGKILL if the test process dies
/// (e.g. the test runner is killed by a CI timeout), so no child outlives it.
pub fn spawn_child(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id() as i32;
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if prctl(PR_SET_PDEATHSIG, SIGKILL as std::ffi::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may already have died between fork and prctl.
            if getppid() != parent {
                return Err(io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(cmd.spawn());
    });
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("child-spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("child-spawner thread dropped the job"))?
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child.
pub fn terminate(child: &mut Child, grace: Duration) -> io::Result<ExitStatus> {
    if let Some(st) = child.try_wait()? {
        return Ok(st);
    }
    let _ = sigterm(child.id());
    if let Some(st) = wait_timeout(child, grace)? {
        return Ok(st);
    }
    let _ = child.kill(); // SIGKILL to this pid
    child.wait()
}

/// SIGTERM several children at once, give them `grace` together, then
/// SIGKILL the stragglers. Faster than terminating them one by one.
pub fn terminate_all(children: &mut [&mut Child], grace: Duration) {
    for c in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            let _ = sigterm(c.id());
        }
    }
    let deadline = Instant::now() + grace;
    loop {
        let all_done = children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
        if all_done || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    for c in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}

/// Poll `child` until it exits or `timeout` passes.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Poll `f` every `every` until it returns `Some`, or give up after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}

/// A TCP port that was free on 127.0.0.1 (and on ::1 too when `ipv6`) a
/// moment ago. The listener is dropped before returning, so a tiny race
/// remains; callers that can detect "address in use" should retry.
pub fn free_port(ipv6: bool) -> io::Result<u16> {
    for _ in 0..50 {
        let l4 = TcpListener::bind("127.0.0.1:0")?;
        let port = l4.local_addr()?.port();
        if ipv6 {
            let a6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            if TcpListener::bind(a6).is_err() {
                continue;
            }
        }
        return Ok(port);
    }
    Err(io::Error::other("no free port found"))
}

/// Is this pid a live (non-zombie) process?
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // state is the field after the parenthesised comm
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Pids of live processes whose command line contains `needle`
/// (read-only scan of /proc, used by tests to prove cleanup).
pub fn pids_with_cmdline_containing(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmd.contains(needle) && pid_alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

/// Last `n` lines of a text file ("" if unreadable).
pub fn tail_file(path: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Output of [`run_with_timeout`].
#[derive(Debug)]
pub struct RunOutput {
    /// `None` when the command was killed for exceeding its time limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Run `cmd` to completion with piped stdout/stderr (read on threads, so
/// large outputs cannot stall it), killing it (by pid) after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> io::Result<RunOutput> {
    use std::io::Read;
    use std::process::Stdio;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = spawn_child(cmd)?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = match wait_timeout(&mut child, timeout)? {
        Some(st) => Some(st),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Ok(RunOutput {
        status,
        stdout,
        stderr,
        elapsed: t0.elapsed(),
    })
}
