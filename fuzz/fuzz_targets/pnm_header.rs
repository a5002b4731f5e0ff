//! The PNM header reader on any bytes: never panics, and a length it gives covers the header
//! and stays within the cap.
#![no_main]

use aestream::frame::framing::pnm_frame_len;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let [cap, data @ ..] = input else { return };
    let max = 1usize << (*cap % 40);
    if let Ok(Some(n)) = pnm_frame_len(data, max) {
        assert!(n <= max);
        assert!(n >= 9, "{n}");
    }
});
