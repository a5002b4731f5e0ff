//! The length-prefix splitter on any bytes, cut into reads where the input says: it never
//! panics, frames are within the cap, and the cuts do not change what it yields.
#![no_main]

use aestream::frame::framing::{Framing, Split, Splitter};
use libfuzzer_sys::fuzz_target;

fn split(data: &[u8], step: usize, max: usize) -> Vec<Split> {
    let mut s = Splitter::new(Framing::Length).with_max_frame(max);
    let mut out = Vec::new();
    for chunk in data.chunks(step) {
        s.push(chunk);
        while let Some(x) = s.next() {
            out.push(x);
        }
    }
    out.extend(s.finish());
    out
}

fuzz_target!(|input: &[u8]| {
    let [cap, step, data @ ..] = input else { return };
    let max = *cap as usize * 4;
    let step = 1 + *step as usize % 64;
    let whole = split(data, data.len().max(1), max);
    for x in &whole {
        if let Split::Frame(f) = x {
            assert!(f.bytes.len() <= max);
        }
    }
    assert_eq!(whole, split(data, step, max));
});
