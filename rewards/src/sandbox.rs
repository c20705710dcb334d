//! A namespace sandbox for untrusted programs (Linux), used by the Python verifier.
//!
//! Threat model: the program is hostile model output. It may try to read secrets (`/etc/*`,
//! home directories, the repository), write anywhere, reach the network, signal or kill the
//! verifier, fork without bound, or leave daemons behind. None of that may succeed, and the
//! verifier must never fall back to a weaker mode silently: when the kernel refuses a piece
//! of the sandbox the run fails with a [`SandboxError`] saying how to enable it.
//!
//! Layout of one run (all set up in [`Command::pre_exec`], with raw syscalls only and no
//! allocation, because the parent may be multi-threaded):
//!
//! ```text
//! verifier ──fork──▶ I (supervisor: own session, dies with the verifier)
//!                    └─clone(NEWUSER|NEWNS|NEWPID|NEWNET|NEWIPC|NEWUTS)─▶ G (PID 1, init)
//!                                                                         └─fork─▶ P (python)
//! ```
//!
//! - **user namespace**: as root the program runs as host `nobody` (65534), otherwise as the
//!   caller's uid; either way uid 1000 inside, with every capability, the bounding set and the
//!   ambient set dropped and `no_new_privs` set, so `RLIMIT_NPROC` applies and no mount can be
//!   undone.
//! - **mount namespace**: a fresh tmpfs root holding read-only binds of `/usr` (and the
//!   `/bin`, `/lib*` links or dirs), `/etc/ld.so.cache` and `/etc/localtime` only, a minimal
//!   `/dev`, a fresh `/proc` of the new PID namespace (skipped where the kernel forbids it), and
//!   a private size-limited writable `/tmp` (the working directory). The old root is detached:
//!   `/etc/passwd`, `/root`, `/home` and the host's `/tmp` do not exist inside.
//! - **PID namespace**: the program cannot see or signal anything outside; G is its init, and
//!   when P exits G exits, which makes the kernel kill (and reap) every process left in the
//!   namespace before the verifier's wait returns — daemons and `setsid` tricks included. G
//!   and I die with `PR_SET_PDEATHSIG` if their parent dies.
//! - **network namespace**: only a loopback interface that is down.
//! - **rlimits** (on P): CPU seconds, address space, file size, process count, open files, no
//!   core dumps.
//!
//! Failures in the set-up stages are reported to the parent through a pipe as
//! `(stage, errno)` records; the program is started only after every stage succeeded.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::path::Path;

/// uid and gid of the program inside its user namespace.
pub const INNER_ID: u32 = 1000;
/// Host uid/gid the program runs as when the verifier runs as root.
const NOBODY: u32 = 65534;
/// Where the new root is assembled (inside the private mount namespace only).
const STAGING: &str = "/tmp";
/// Report-pipe tag carrying the init's host pid.
const TAG_PID: u32 = 1;
/// Exit code of a supervisor or init whose set-up failed (the real cause is in the report pipe).
const EXIT_SETUP: i32 = 126;

/// The sandbox could not be built; the untrusted program was not started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox unavailable: {stage} failed: {source}. {hint}")]
    Setup {
        stage: Stage,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("sandbox: {0}")]
    Host(String),
}

/// Set-up stages, in order; each maps to a remedy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    Pipe = 2,
    UserNamespace,
    IdMap,
    Mount,
    PivotRoot,
    DropPrivileges,
    CopyProgram,
    Fork,
}

impl Stage {
    const ALL: [Stage; 8] = [
        Stage::Pipe,
        Stage::UserNamespace,
        Stage::IdMap,
        Stage::Mount,
        Stage::PivotRoot,
        Stage::DropPrivileges,
        Stage::CopyProgram,
        Stage::Fork,
    ];

    fn from_tag(tag: u32) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as u32 == tag)
    }

    fn hint(self) -> &'static str {
        match self {
            Stage::UserNamespace => {
                "Untrusted code is not run without user, mount, PID and network namespaces. Enable \
                 them: `sysctl -w kernel.unprivileged_userns_clone=1` (Debian), `sysctl -w \
                 user.max_user_namespaces=15000`, `sysctl -w \
                 kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 23.10+), or in a container \
                 allow `unshare`/`clone` of namespaces (e.g. docker `--security-opt \
                 seccomp=unconfined`)."
            }
            Stage::IdMap => {
                "Could not write the new user namespace's uid/gid map (as root this needs \
                 CAP_SETUID/CAP_SETGID; check that /proc is writable)."
            }
            Stage::Mount | Stage::PivotRoot => {
                "The kernel refused to assemble the sandbox's private filesystem in a new mount \
                 namespace (an LSM or container policy forbids mounts in user namespaces); allow \
                 mount namespaces for this process."
            }
            _ => "This is unexpected; the untrusted program was not started.",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Stage::Pipe => "creating a pipe",
            Stage::UserNamespace => "creating user/mount/PID/network namespaces",
            Stage::IdMap => "writing the uid/gid map",
            Stage::Mount => "mounting the private filesystem",
            Stage::PivotRoot => "switching to the private root",
            Stage::DropPrivileges => "dropping privileges",
            Stage::CopyProgram => "copying the program into the sandbox",
            Stage::Fork => "starting the program",
        };
        f.write_str(s)
    }
}

/// Resource limits applied to the program (per process, except `max_processes`).
#[derive(Debug, Clone, Copy)]
pub struct Rlimits {
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub max_processes: u64,
    pub open_files: u64,
}

/// One filesystem operation of the set-up, paths already under the staging root.
enum Op {
    Mkdir(CString),
    Touch(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    /// Bind `src` on `dst`, then make it read-only, nosuid, nodev.
    BindRo {
        src: CString,
        dst: CString,
    },
    /// Bind a device node (left writable: /dev/null and friends).
    BindDev {
        src: CString,
        dst: CString,
    },
    Tmpfs {
        dst: CString,
        opts: CString,
    },
    /// A fresh procfs; skipped when the kernel refuses (a stricter sandbox, not a weaker one).
    Proc(CString),
    /// Remount an existing mount point read-only.
    ReadOnly(CString),
}

/// Everything the child side needs, prepared (allocated) in the parent.
pub struct Plan {
    ops: Vec<Op>,
    staging: CString,
    dot: CString,
    root: CString,
    tmp: CString,
    program: CString,
    dev_null: CString,
    uid_map: CString,
    gid_map: CString,
    deny_setgroups: bool,
    privileged: bool,
    report_fd: RawFd,
    limits: Rlimits,
}

fn cstr(s: &str) -> Result<CString, SandboxError> {
    CString::new(s).map_err(|_| SandboxError::Host(format!("path with NUL: {s:?}")))
}

/// The top-level system directories exposed read-only (or as the same symlinks).
const SYSTEM_DIRS: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
const ETC_FILES: [&str; 2] = ["ld.so.cache", "localtime"];
const DEV_NODES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// Whether `exe` (canonical) lives under the read-only system directories.
pub fn visible_inside(exe: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| exe.starts_with(Path::new("/").join(d)))
}

fn system_ops(ops: &mut Vec<Op>) -> Result<(), SandboxError> {
    for d in SYSTEM_DIRS {
        let host = Path::new("/").join(d);
        let dst = cstr(&format!("{STAGING}/{d}"))?;
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&host).map_err(|e| SandboxError::Host(format!("{host:?}: {e}")))?;
                ops.push(Op::Symlink { target: cstr(&target.to_string_lossy())?, link: dst });
            }
            Ok(m) if m.is_dir() => {
                ops.push(Op::Mkdir(dst.clone()));
                ops.push(Op::BindRo { src: cstr(&host.to_string_lossy())?, dst });
            }
            _ => {}
        }
    }
    Ok(())
}

fn etc_ops(ops: &mut Vec<Op>) -> Result<(), SandboxError> {
    ops.push(Op::Mkdir(cstr(&format!("{STAGING}/etc"))?));
    for f in ETC_FILES {
        let host = format!("/etc/{f}");
        if std::fs::metadata(&host).is_ok_and(|m| m.is_file()) {
            let dst = cstr(&format!("{STAGING}/etc/{f}"))?;
            ops.push(Op::Touch(dst.clone()));
            ops.push(Op::BindRo { src: cstr(&host)?, dst });
        }
    }
    Ok(())
}

fn dev_ops(ops: &mut Vec<Op>) -> Result<(), SandboxError> {
    let dev = format!("{STAGING}/dev");
    ops.push(Op::Mkdir(cstr(&dev)?));
    ops.push(Op::Tmpfs { dst: cstr(&dev)?, opts: cstr("size=64k,nr_inodes=64,mode=0755")? });
    for n in DEV_NODES {
        if Path::new("/dev").join(n).exists() {
            let dst = cstr(&format!("{dev}/{n}"))?;
            ops.push(Op::Touch(dst.clone()));
            ops.push(Op::BindDev { src: cstr(&format!("/dev/{n}"))?, dst });
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ops.push(Op::Symlink { target: cstr(target)?, link: cstr(&format!("{dev}/{link}"))? });
    }
    ops.push(Op::Mkdir(cstr(&format!("{dev}/shm"))?));
    ops.push(Op::Tmpfs { dst: cstr(&format!("{dev}/shm"))?, opts: cstr("size=16m,nr_inodes=256,mode=1777")? });
    ops.push(Op::ReadOnly(cstr(&dev)?));
    Ok(())
}

impl Plan {
    /// Prepare a sandbox whose set-up failures are written to `report_fd`.
    pub fn new(limits: Rlimits, tmp_bytes: u64, report_fd: RawFd) -> Result<Plan, SandboxError> {
        let mut ops = Vec::new();
        system_ops(&mut ops)?;
        etc_ops(&mut ops)?;
        dev_ops(&mut ops)?;
        ops.push(Op::Mkdir(cstr(&format!("{STAGING}/proc"))?));
        ops.push(Op::Proc(cstr(&format!("{STAGING}/proc"))?));
        ops.push(Op::Mkdir(cstr(&format!("{STAGING}/tmp"))?));
        ops.push(Op::Tmpfs {
            dst: cstr(&format!("{STAGING}/tmp"))?,
            opts: cstr(&format!("size={tmp_bytes},nr_inodes=4096,mode=1777"))?,
        });
        // SAFETY: plain getters.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let privileged = euid == 0;
        let (uid_map, gid_map) = if privileged {
            // root stays mapped (as root) for the set-up only; the program runs as host nobody
            (format!("0 0 1\n{INNER_ID} {NOBODY} 1\n"), format!("0 0 1\n{INNER_ID} {NOBODY} 1\n"))
        } else {
            (format!("{INNER_ID} {euid} 1\n"), format!("{INNER_ID} {egid} 1\n"))
        };
        Ok(Plan {
            ops,
            staging: cstr(STAGING)?,
            dot: cstr(".")?,
            root: cstr("/")?,
            tmp: cstr("/tmp")?,
            program: cstr("/tmp/solution.py")?,
            dev_null: cstr("/dev/null")?,
            uid_map: cstr(&uid_map)?,
            gid_map: cstr(&gid_map)?,
            deny_setgroups: !privileged,
            privileged,
            report_fd,
            limits,
        })
    }

    /// Path of the program inside the sandbox (copied from the child's stdin).
    pub const PROGRAM: &'static str = "/tmp/solution.py";
}

/// Decode the report pipe: the init's host pid and the first set-up failure, if any.
pub fn decode_report(bytes: &[u8]) -> (Option<i32>, Option<SandboxError>) {
    let mut pid = None;
    let mut err = None;
    for rec in bytes.chunks_exact(8) {
        let tag = u32::from_ne_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let val = i32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
        if tag == TAG_PID {
            pid = Some(val);
        } else if let (Some(stage), None) = (Stage::from_tag(tag), &err) {
            err = Some(SandboxError::Setup { stage, source: io::Error::from_raw_os_error(val), hint: stage.hint() });
        }
    }
    (pid, err)
}

// ------------------------------------------------------------------------------------------
// Child side. Everything below runs between fork and exec: raw syscalls, no allocation.
// ------------------------------------------------------------------------------------------

type Fail = (Stage, i32);

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

fn ok(r: libc::c_long, stage: Stage) -> Result<libc::c_long, Fail> {
    if r < 0 {
        Err((stage, errno()))
    } else {
        Ok(r)
    }
}

fn report(fd: RawFd, tag: u32, val: i32) {
    let mut rec = [0u8; 8];
    rec[..4].copy_from_slice(&tag.to_ne_bytes());
    rec[4..].copy_from_slice(&val.to_ne_bytes());
    // SAFETY: writes 8 bytes from a local buffer.
    unsafe {
        libc::write(fd, rec.as_ptr().cast(), rec.len());
    }
}

fn die(fd: RawFd, (stage, err): Fail) -> ! {
    report(fd, stage as u32, err);
    // SAFETY: terminates this child without running the parent's destructors.
    unsafe { libc::_exit(EXIT_SETUP) }
}

/// fork(2) through the raw syscall (no atfork handlers), optionally into new namespaces.
fn raw_fork(ns_flags: libc::c_int) -> libc::c_long {
    // SAFETY: clone without CLONE_VM and without a new stack behaves like fork; on every
    // Linux architecture the remaining arguments are zero.
    unsafe {
        libc::syscall(libc::SYS_clone, (ns_flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize)
    }
}

/// Close (or mark close-on-exec) every descriptor ≥ 3 except `keep`.
fn close_fds_from_3(keep: RawFd, cloexec: bool) {
    let flags = if cloexec { libc::CLOSE_RANGE_CLOEXEC } else { 0 };
    let ranges: [(u32, u32); 2] =
        if keep >= 3 { [(3, keep as u32 - 1), (keep as u32 + 1, u32::MAX)] } else { [(3, u32::MAX), (1, 0)] };
    for (lo, hi) in ranges {
        if lo > hi {
            continue;
        }
        // SAFETY: plain syscall on descriptor numbers.
        let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, flags) };
        if r < 0 {
            for fd in lo..hi.min(4096) {
                // SAFETY: as above, per descriptor.
                unsafe {
                    if cloexec {
                        libc::fcntl(fd as RawFd, libc::F_SETFD, libc::FD_CLOEXEC);
                    } else {
                        libc::close(fd as RawFd);
                    }
                }
            }
        }
    }
}

/// Wait for `pid`; its exit code, or 128 + the signal that ended it.
fn wait_code(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waits on our own children.
        let w = unsafe { libc::waitpid(-1, &mut status, 0) };
        if w == pid {
            break;
        }
        if w < 0 && errno() != libc::EINTR {
            return EXIT_SETUP;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn write_file(path: &[u8], bytes: &[u8]) -> Result<(), Fail> {
    // SAFETY: `path` is NUL-terminated by the caller.
    unsafe {
        let fd = ok(libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC) as _, Stage::IdMap)? as RawFd;
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let e = errno();
        libc::close(fd);
        if n != bytes.len() as isize {
            return Err((Stage::IdMap, e));
        }
    }
    Ok(())
}

/// `/proc/<pid>/<leaf>\0` in a stack buffer.
fn proc_path(buf: &mut [u8; 64], pid: libc::pid_t, leaf: &[u8]) -> usize {
    let mut digits = [0u8; 12];
    let (mut n, mut v) = (0, pid.max(0) as u32);
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut len = 0;
    for &b in b"/proc/".iter().chain(digits[..n].iter().rev()).chain(b"/".iter()).chain(leaf.iter()) {
        buf[len] = b;
        len += 1;
    }
    buf[len] = 0;
    len + 1
}

fn write_id_maps(plan: &Plan, pid: libc::pid_t) -> Result<(), Fail> {
    let mut buf = [0u8; 64];
    if plan.deny_setgroups {
        let n = proc_path(&mut buf, pid, b"setgroups");
        write_file(&buf[..n], b"deny")?;
    }
    let n = proc_path(&mut buf, pid, b"uid_map");
    write_file(&buf[..n], plan.uid_map.as_bytes())?;
    let n = proc_path(&mut buf, pid, b"gid_map");
    write_file(&buf[..n], plan.gid_map.as_bytes())
}

/// Entry point for [`std::os::unix::process::CommandExt::pre_exec`]: returns only in the
/// program's process, fully confined; the supervisor and init never return.
pub fn enter(plan: &Plan) -> io::Result<()> {
    let fd = plan.report_fd;
    // SAFETY: raw syscalls on our own process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::setsid();
    }
    let mut sync = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(sync.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        die(fd, (Stage::Pipe, errno()));
    }
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    let pid = raw_fork(flags);
    if pid < 0 {
        die(fd, (Stage::UserNamespace, errno()));
    }
    if pid == 0 {
        // SAFETY: our copy of the write end; the supervisor keeps its own.
        unsafe { libc::close(sync[1]) };
        return init(plan, sync[0]);
    }
    supervise(plan, pid as libc::pid_t, sync)
}

/// I: map ids for the init, release it, then mirror its exit status.
fn supervise(plan: &Plan, pid: libc::pid_t, sync: [RawFd; 2]) -> ! {
    let fd = plan.report_fd;
    report(fd, TAG_PID, pid);
    if let Err(f) = write_id_maps(plan, pid) {
        // SAFETY: kill our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        die(fd, f);
    }
    // SAFETY: one byte from a static buffer; then closing our descriptors.
    unsafe {
        libc::write(sync[1], b"1".as_ptr().cast(), 1);
        libc::close(sync[1]);
        libc::close(sync[0]);
    }
    close_fds_from_3(-1, false);
    let code = wait_code(pid);
    // SAFETY: leave without running anything of the parent's.
    unsafe { libc::_exit(code) }
}

/// G: wait for the id maps, build the filesystem, drop privileges, start P and reap.
fn init(plan: &Plan, sync_r: RawFd) -> io::Result<()> {
    let fd = plan.report_fd;
    let mut b = [0u8; 1];
    // SAFETY: raw syscalls on our own process and descriptors.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::setsid();
        if libc::read(sync_r, b.as_mut_ptr().cast(), 1) != 1 {
            libc::_exit(EXIT_SETUP);
        }
        libc::close(sync_r);
    }
    if let Err(f) = build_root(plan).and_then(|_| drop_privileges(plan)).and_then(|_| copy_program(plan)) {
        die(fd, f);
    }
    let child = raw_fork(0);
    if child < 0 {
        die(fd, (Stage::Fork, errno()));
    }
    if child == 0 {
        set_rlimits(&plan.limits);
        close_fds_from_3(-1, true);
        return Ok(());
    }
    close_fds_from_3(-1, false);
    let code = wait_code(child as libc::pid_t);
    // SAFETY: init exits; the kernel kills and reaps the rest of the namespace first.
    unsafe { libc::_exit(code) }
}

fn mount(
    src: Option<&CStr>,
    dst: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), Fail> {
    let p = |c: Option<&CStr>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string owned by the plan.
    let r = unsafe { libc::mount(p(src), dst.as_ptr(), p(fstype), flags, p(data).cast()) };
    ok(r as _, Stage::Mount).map(|_| ())
}

fn remount_ro(dst: &CStr) -> Result<(), Fail> {
    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    mount(None, dst, None, flags, None)
}

fn run_op(op: &Op) -> Result<(), Fail> {
    let tmpfs = c"tmpfs";
    // SAFETY: NUL-terminated strings owned by the plan or static.
    unsafe {
        match op {
            Op::Mkdir(p) => ok(libc::mkdir(p.as_ptr(), 0o755) as _, Stage::Mount).map(|_| ()),
            Op::Touch(p) => {
                let f = ok(
                    libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC, 0o644) as _,
                    Stage::Mount,
                )?;
                libc::close(f as RawFd);
                Ok(())
            }
            Op::Symlink { target, link } => {
                ok(libc::symlink(target.as_ptr(), link.as_ptr()) as _, Stage::Mount).map(|_| ())
            }
            Op::BindRo { src, dst } => {
                mount(Some(src.as_c_str()), dst, None, libc::MS_BIND, None)?;
                remount_ro(dst)
            }
            Op::BindDev { src, dst } => mount(Some(src.as_c_str()), dst, None, libc::MS_BIND, None),
            Op::Tmpfs { dst, opts } => {
                let r = libc::mount(
                    tmpfs.as_ptr(),
                    dst.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    opts.as_ptr().cast(),
                );
                ok(r as _, Stage::Mount).map(|_| ())
            }
            Op::Proc(dst) => {
                let proc_ = c"proc";
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                libc::mount(proc_.as_ptr(), dst.as_ptr(), proc_.as_ptr(), flags, std::ptr::null());
                Ok(())
            }
            Op::ReadOnly(dst) => remount_ro(dst),
        }
    }
}

fn build_root(plan: &Plan) -> Result<(), Fail> {
    let private = libc::MS_REC | libc::MS_PRIVATE;
    mount(None, &plan.root, None, private, None)?;
    let opts = c"size=1m,nr_inodes=256,mode=0755";
    mount(Some(c"tmpfs"), &plan.staging, Some(c"tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some(opts))?;
    for op in &plan.ops {
        run_op(op)?;
    }
    // SAFETY: NUL-terminated strings owned by the plan.
    unsafe {
        ok(libc::chdir(plan.staging.as_ptr()) as _, Stage::PivotRoot)?;
        ok(libc::syscall(libc::SYS_pivot_root, plan.dot.as_ptr(), plan.dot.as_ptr()), Stage::PivotRoot)?;
        ok(libc::umount2(plan.dot.as_ptr(), libc::MNT_DETACH) as _, Stage::PivotRoot)?;
        ok(libc::chdir(plan.root.as_ptr()) as _, Stage::PivotRoot)?;
    }
    remount_ro(&plan.root).map_err(|(_, e)| (Stage::PivotRoot, e))?;
    // SAFETY: as above.
    unsafe { ok(libc::chdir(plan.tmp.as_ptr()) as _, Stage::PivotRoot).map(|_| ()) }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn drop_privileges(plan: &Plan) -> Result<(), Fail> {
    let s = Stage::DropPrivileges;
    let id = INNER_ID;
    // SAFETY: raw syscalls on our own credentials.
    unsafe {
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap);
        }
        if plan.privileged {
            ok(libc::setgroups(0, std::ptr::null()) as _, s)?;
        }
        ok(libc::setresgid(id, id, id) as _, s)?;
        ok(libc::setresuid(id, id, id) as _, s)?;
        let mut hdr = CapHeader { version: 0x2008_0522, pid: 0 };
        let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
        ok(libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()), s)?;
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        ok(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as _, s)?;
    }
    Ok(())
}

/// Copy the program from stdin into the private `/tmp`, then point stdin at `/dev/null`.
fn copy_program(plan: &Plan) -> Result<(), Fail> {
    let s = Stage::CopyProgram;
    let mut buf = [0u8; 4096];
    // SAFETY: reads and writes through local buffers and descriptors we own.
    unsafe {
        let out = ok(
            libc::open(plan.program.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC, 0o644)
                as _,
            s,
        )? as RawFd;
        loop {
            let n = libc::read(0, buf.as_mut_ptr().cast(), buf.len());
            if n == 0 {
                break;
            }
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                return Err((s, errno()));
            }
            if libc::write(out, buf.as_ptr().cast(), n as usize) != n {
                return Err((s, errno()));
            }
        }
        libc::close(out);
        let null = ok(libc::open(plan.dev_null.as_ptr(), libc::O_RDONLY) as _, s)? as RawFd;
        ok(libc::dup2(null, 0) as _, s)?;
        libc::close(null);
    }
    Ok(())
}

fn set_rlimits(l: &Rlimits) {
    let set = |res, v: u64| {
        let r = libc::rlimit { rlim_cur: v as libc::rlim_t, rlim_max: v as libc::rlim_t };
        // SAFETY: plain syscall with a local struct.
        unsafe { libc::setrlimit(res, &r) };
    };
    set(libc::RLIMIT_CPU, l.cpu_seconds);
    set(libc::RLIMIT_AS, l.memory_bytes);
    set(libc::RLIMIT_FSIZE, l.file_bytes);
    set(libc::RLIMIT_NPROC, l.max_processes);
    set(libc::RLIMIT_NOFILE, l.open_files);
    set(libc::RLIMIT_CORE, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tag: u32, val: i32) -> Vec<u8> {
        [tag.to_ne_bytes(), val.to_ne_bytes()].concat()
    }

    #[test]
    fn a_refused_namespace_is_an_error_that_says_how_to_enable_it() {
        let bytes = [record(TAG_PID, 42), record(Stage::UserNamespace as u32, libc::EPERM)].concat();
        let (pid, err) = decode_report(&bytes);
        assert_eq!(pid, Some(42));
        let msg = err.expect("a set-up failure must be reported").to_string();
        assert!(msg.contains("unprivileged_userns_clone") && msg.contains("max_user_namespaces"), "{msg}");
        assert!(decode_report(&record(TAG_PID, 7)).1.is_none());
    }

    #[test]
    fn python_outside_the_system_dirs_is_not_visible() {
        assert!(visible_inside(Path::new("/usr/bin/python3.11")));
        assert!(!visible_inside(Path::new("/root/.pyenv/versions/3.11/bin/python3")));
    }
}
