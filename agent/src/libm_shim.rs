//! `pow` and `log2` without the C math library.
//!
//! The agent's only calls into libm are two, inlined from libcontainer's
//! cgroup v2 CPU-weight conversion (`log2`, `pow`), and they run in the
//! process that sets a container up, never in the agent itself. Yet linking
//! them makes the loader map `libm.so.6` into the agent for its whole life:
//! 350 KiB of resident pages at idle (its code, relocated and faulted
//! around), 6 % of the idle budget. Release builds link with
//! `-Wl,--wrap=pow,--wrap=log2` (agent/build.rs), which points those calls
//! here, to the `libm` crate (rust-lang's port of musl's libm, the same
//! functions the Rust compiler's builtins use), so the linker leaves libm
//! out (`--as-needed`).

/// `pow(3)`, for the calls the linker wraps.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn __wrap_pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// `log2(3)`, for the calls the linker wraps.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn __wrap_log2(x: f64) -> f64 {
    libm::log2(x)
}

#[cfg(test)]
mod tests {
    /// libcontainer's conversion of CPU shares to a cgroup v2 weight, with
    /// the given functions.
    fn weight(shares: u64, log2: fn(f64) -> f64, pow: fn(f64, f64) -> f64) -> u64 {
        let l = log2(shares as f64);
        let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
        pow(10.0, exponent).ceil() as u64
    }

    /// The same answers as the C library the tests link (the wrap applies
    /// to the agent binary only): the weights libcontainer writes for every
    /// share count it converts, and the functions themselves within one ulp.
    #[test]
    fn pow_and_log2_give_the_c_library_s_answers() {
        let log2: fn(f64) -> f64 = |x| super::__wrap_log2(x);
        let pow: fn(f64, f64) -> f64 = |x, y| super::__wrap_pow(x, y);
        assert_eq!(weight(1024, log2, pow), 100, "the default 1024 shares are weight 100");
        for shares in 3..262_144u64 {
            assert_eq!(weight(shares, log2, pow), weight(shares, f64::log2, f64::powf), "shares {shares}");
        }
        let ulps = |a: f64, b: f64| (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs();
        for x in [0.5, 1.0, 3.0, 1e-300, 7.25e12, f64::MAX] {
            assert!(ulps(log2(x), x.log2()) <= 1, "log2({x})");
            for y in [-3.5, 0.0, 0.25, 2.0, 17.0] {
                assert!(ulps(pow(x, y), x.powf(y)) <= 1, "pow({x}, {y})");
            }
        }
    }
}
