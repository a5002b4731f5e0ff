//! The concat splitter on any bytes, cut into reads where the input says: it never panics,
//! every frame it yields is within the cap, and the cuts do not change what it yields.
#![no_main]

use aestream::frame::framing::{Framing, Split, Splitter};
use libfuzzer_sys::fuzz_target;

fn split(data: &[u8], cuts: &[usize], max: usize) -> Vec<Split> {
    let mut s = Splitter::new(Framing::Concat).with_max_frame(max);
    let mut out = Vec::new();
    let mut last = 0;
    for &c in cuts.iter().chain([&data.len()]) {
        s.push(&data[last..c]);
        while let Some(x) = s.next() {
            out.push(x);
        }
        last = c;
    }
    out.extend(s.finish());
    out
}

fuzz_target!(|input: &[u8]| {
    // First byte: the cap (small caps reach the over-the-limit paths); second: read size.
    let [cap, step, data @ ..] = input else { return };
    let max = 16 + *cap as usize * 64;
    let step = 1 + *step as usize % 64;
    let cuts: Vec<usize> = (step..data.len()).step_by(step).collect();
    let whole = split(data, &[], max);
    for x in &whole {
        if let Split::Frame(f) = x {
            assert!(f.bytes.len() <= max);
        }
    }
    assert_eq!(whole, split(data, &cuts, max));
});
