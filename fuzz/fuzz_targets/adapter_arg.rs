//! `--adapter PATH[:SCALE]`: any UTF-8 string gives `Ok((path, scale))` with a finite
//! scale and a non-empty path, or an `Err`; never a panic.
#![no_main]

use edgelora::engine::parse_adapter_arg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(arg) = std::str::from_utf8(data) else { return };
    if let Ok((path, scale)) = parse_adapter_arg(arg) {
        assert!(scale.is_finite(), "{arg:?}: scale {scale}");
        assert!(!path.as_os_str().is_empty(), "{arg:?}: empty path");
    }
});
