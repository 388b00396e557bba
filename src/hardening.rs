//! What the server process does to itself before it handles a key: no core
//! dumps, and not dumpable.
//!
//! Keys pass through memory in plaintext for the moment a request takes (the
//! protobuf string of a Validate, a minted key on its way to the client). A
//! core file written on a crash, or a same-user process reading
//! `/proc/<pid>/mem` through ptrace, would carry them to disk or to another
//! program. Both are off for the server's lifetime.

/// Sets the core-file size limit to zero and marks the process not dumpable
/// (`PR_SET_DUMPABLE` 0, which also refuses ptrace attaches from processes
/// of the same user that lack `CAP_SYS_PTRACE`).
///
/// # Errors
/// When the operating system refuses either; the caller decides whether to
/// go on.
pub fn disable_core_dumps() -> std::io::Result<()> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}
