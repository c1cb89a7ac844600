//! The appliance's memory allocator. mimalloc keeps fragmentation low across tokio's worker threads, where
//! glibc's per-thread arenas held hundreds of MB after a large cluster sync (`bench/RESULTS.md`, clusters).
//!
//! By default mimalloc waits before giving freed pages back to the system, and pages freed by a thread that
//! then goes idle wait longer still: after a first sync of 10,000 Services the appliance stayed ~60 MiB above
//! its live data for several seconds. Purging at once costs nothing measurable in the benchmarks
//! (`bench/RESULTS.md`), so the appliance does that.

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (its position in the enum, the same in v2 and v3;
/// `libmimalloc-sys` names the options around it but not this one).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc return freed memory to the system at once. Call it first thing in `main`.
pub fn return_freed_memory_at_once() {
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table and reads nothing through a pointer;
    // 0 is a documented value of this option ("0 for immediate purging").
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_option_is_the_purge_delay() {
        // The option libmimalloc-sys does name right after it pins its position.
        assert_eq!(libmimalloc_sys::mi_option_use_numa_nodes - 1, super::PURGE_DELAY);
        super::return_freed_memory_at_once();
        // SAFETY: reads an integer from mimalloc's option table.
        #[allow(unsafe_code)]
        let value = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(value, 0);
    }
}
