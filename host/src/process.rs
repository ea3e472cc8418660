//! Process-wide memory settings of a long-running host: what it sets once,
//! at start, before it starts any thread, and what it gives back to the
//! operating system as it runs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Cap glibc's malloc arenas at the number of cores.
///
/// glibc gives each thread that allocates under contention a heap arena of
/// its own, up to eight per core, and an arena keeps the high-water mark of
/// what was allocated in it. A host whose session tasks move between tokio
/// workers, with sled's and the journal's threads beside them, then holds
/// the peak of many arenas, and its resident memory creeps upwards for
/// thousands of steps. Measured with the 20,000-step endurance test on two
/// cores: resident memory in the last quarter +8.1…+13.1% over the first
/// in five runs with glibc's default, +3.7…+6.5% in six with the arenas capped
/// at two.
///
/// Call it first thing in `main` (and in a test that measures the process):
/// arenas that exist already are not merged. Elsewhere than glibc it does
/// nothing.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cap = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tuning parameter of the allocator; it
        // is safe to call at any time, and M_ARENA_MAX takes a positive count.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cap);
        }
    }
}

/// Bytes the allocator has handed out and not had back (glibc's
/// `mallinfo2`: its arenas plus the chunks it mapped on its own), or `None`
/// elsewhere than glibc.
///
/// Beside the resident set it tells live growth from fragmentation: the
/// resident set also counts freed memory the allocator still holds.
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// The shortest time between two [`release_free_memory`] calls that trim:
/// trimming walks every arena under its lock, so many sessions compacting
/// at once share one trim.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Give the memory the allocator holds free back to the operating system
/// (glibc's `malloc_trim`), at most once per [`TRIM_INTERVAL`] in the
/// process. Returns whether it trimmed.
///
/// Why: glibc keeps freed memory in its arenas for reuse, and what a session
/// frees at a compaction (its old context, the outputs folded away) lies
/// between live allocations, where it stays resident. Measured with the
/// 20,000-step endurance test: the heap in use is flat after the first
/// 2,000 steps (about 41 MiB), while the resident set without trimming
/// settled anywhere from 12 to 25 MiB above it, run to run (last quarter
/// +2.5…+14.7% over the first in nine runs); trimming after compactions, it
/// stays 8 to 11 MiB above (+3.0…+7.7% in six runs).
pub fn release_free_memory() -> bool {
    static LAST_TRIM: Mutex<Option<Instant>> = Mutex::new(None);
    let Ok(mut last) = LAST_TRIM.try_lock() else {
        // Another thread is trimming right now.
        return false;
    };
    if last.is_some_and(|at| at.elapsed() < TRIM_INTERVAL) {
        return false;
    }
    *last = Some(Instant::now());
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free pages to the system; it is
        // safe to call from any thread at any time.
        unsafe {
            libc::malloc_trim(0);
        }
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn free_memory_is_released_at_most_once_per_interval() {
        let started = Instant::now();
        while !release_free_memory() {
            assert!(started.elapsed() < 2 * TRIM_INTERVAL, "never trimmed");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!release_free_memory(), "trimmed again at once");
    }

    #[test]
    fn the_heap_in_use_counts_a_live_allocation() {
        // The count is the whole process's: a test on another thread that
        // frees memory between the two readings hides part of the growth.
        // Such a race is rare and brief, so one of a few tries sees the
        // whole block; an uncounted block is never seen.
        let mut seen = Vec::new();
        for _ in 0..5 {
            let before = heap_in_use().unwrap();
            let block = std::hint::black_box(vec![1u8; 8 << 20]);
            let during = heap_in_use().unwrap();
            drop(block);
            if during >= before + (8 << 20) {
                return;
            }
            seen.push((before, during));
        }
        panic!("an 8 MiB block was never counted whole: {seen:?}");
    }
}

/// Raise this process's open-file limit to its hard limit, so that a
/// server is bounded by its own connection caps rather than by a low
/// default. Returns the limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// Let a closed standard output end this process quietly, as it ends any
/// Unix filter (`longrun replay list | head`): Rust ignores `SIGPIPE`, so
/// every later `println!` would panic on the broken pipe instead. Only for
/// commands whose job is printing; a server keeps ignoring it, so that a
/// client that hangs up is an error on that connection, not the end.
pub fn end_quietly_when_output_closes() {
    // SAFETY: restores the default disposition of one signal; no handler
    // runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The open-file limit in force now.
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}
