//! The journal reader on any bytes: never panics; what it keeps lies within the file.
#![no_main]

use aestream::source::folder::journal::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse(std::io::Cursor::new(data)) {
        assert!(p.valid_len as usize <= data.len());
        assert!(p.done.len() <= p.records);
    }
});
