//! glibc malloc, tuned for a process that moves large buffers (`tune`), and handing free memory
//! back to the OS (`trim`). Elsewhere than glibc both are no-ops.
//!
//! Measured (1:1, 2 cores, subscriber CPU per message; `benches/` and the README): with glibc's
//! defaults a 16 KiB stream spent most of its time in the kernel faulting pages in: the receive
//! buffers (hundreds of KiB each) were `mmap`ed and unmapped per request, and the tokio workers'
//! arenas trimmed and regrew with every burst, so every page was zeroed again. Raising the mmap
//! threshold to 4 MiB and the trim threshold to 16 MiB took 16 KiB from ~11.5 to ~6.3 µs of
//! subscriber CPU per message (59k -> 94k msg/s) and 1 MiB from 1.07k to 1.69k msg/s. The cost:
//! up to 16 MiB of free memory may stay mapped per malloc arena after a burst (the endpoint's
//! `malloc_trim` after connection floods still returns it).
//!
//! `tune` runs once per process, when the first broker starts, unless the user set malloc
//! tunables (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `GLIBC_TUNABLES`) or
//! `HYPERBROKER_MALLOC_TUNING=0`.

/// mmap threshold: allocations below it come from the heap (bodies up to the default `max_body`)
pub const MMAP_THRESHOLD: i32 = 4 << 20;
/// free memory at the top of an arena kept rather than returned at once
pub const TRIM_THRESHOLD: i32 = 16 << 20;

/// Whether `tune` should change anything: the user's own settings win.
pub fn wanted(env: impl Fn(&str) -> Option<String>) -> bool {
    if env("HYPERBROKER_MALLOC_TUNING").is_some_and(|v| matches!(v.trim(), "0" | "off" | "false" | "no")) {
        return false;
    }
    ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"].iter().all(|k| env(k).is_none())
}

/// Apply the settings above once per process (see the module doc); returns whether they apply.
pub fn tune() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| wanted(|k| std::env::var(k).ok()) && imp::tune())
}

/// Hand free memory of every arena back to the OS.
pub fn trim() {
    imp::trim()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::os::raw::c_int;

    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
        fn malloc_trim(pad: usize) -> c_int;
    }
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;

    pub fn tune() -> bool {
        // SAFETY: mallopt only changes glibc's allocation parameters; thread-safe (it locks).
        unsafe { mallopt(M_MMAP_THRESHOLD, super::MMAP_THRESHOLD) == 1 && mallopt(M_TRIM_THRESHOLD, super::TRIM_THRESHOLD) == 1 }
    }

    pub fn trim() {
        // SAFETY: malloc_trim only releases free memory of glibc's own heaps; thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn tune() -> bool {
        false
    }
    pub fn trim() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_settings_win() {
        let env =
            |set: &'static [(&'static str, &'static str)]| move |k: &str| set.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert!(wanted(env(&[])));
        assert!(wanted(env(&[("HYPERBROKER_MALLOC_TUNING", "1")])));
        assert!(!wanted(env(&[("HYPERBROKER_MALLOC_TUNING", "0")])));
        assert!(!wanted(env(&[("HYPERBROKER_MALLOC_TUNING", "off")])));
        assert!(!wanted(env(&[("MALLOC_TRIM_THRESHOLD_", "1")])));
        assert!(!wanted(env(&[("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")])));
    }
}
