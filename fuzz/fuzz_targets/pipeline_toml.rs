//! Pipeline TOML on any text: parsing and validating never panics. (A file that passes is
//! only as large as its keys' bounds allow; loading its model is not fuzzed.)
#![no_main]

use aestream::config::PipelineConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PipelineConfig::from_toml(text, "fuzz.toml");
    }
});
