//! Keeping freed tensor memory in the process.
//!
//! Every evaluation allocates and frees the same few hundred megabytes of
//! activations. glibc hands each block over 32 MB straight back to the kernel
//! (munmap) and maps it again on the next evaluation, paying page faults and page
//! zeroing every time. Keeping freed memory in the heap makes the next evaluation
//! reuse the same buffers: measured 5-13 % per evaluation on CPU at 256-512 px
//! (README, Speed). The worker calls this once at start-up; memory stays with the
//! process for its next job. `STYLEFARM_KEEP_FREED_MEMORY=0` turns it off.

/// Returns whether the allocator was tuned.
pub fn keep_freed_memory() -> bool {
    if std::env::var("STYLEFARM_KEEP_FREED_MEMORY").is_ok_and(|v| v == "0") {
        return false;
    }
    tune()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune() -> bool {
    // SAFETY: mallopt only changes allocator parameters; called before threads allocate heavily.
    unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune() -> bool {
    false
}
