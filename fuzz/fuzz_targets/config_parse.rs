//! Fuzzes the configuration parser: any input must yield `Ok` or `Err`, never a panic,
//! a hang or unbounded memory. Includes are refused (no file system); a few environment
//! variables exist so that `$VAR` fallback, nested env parsing and env cycles run too.
#![no_main]

use std::io;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

use strait_conf as conf;

struct FuzzHost;

impl conf::Host for FuzzHost {
    fn read_file(&self, _path: &Path) -> io::Result<String> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "includes are disabled",
        ))
    }

    fn env_var(&self, name: &str) -> Option<String> {
        match name {
            "PORT" => Some("4222".into()),
            "MAP" => Some("{ a: 1, b: [x, $PORT] }".into()),
            "LOOP_A" => Some("$LOOP_B".into()),
            "LOOP_B" => Some("$LOOP_A".into()),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(map) = conf::parse_str(&text, "fuzz.conf", &FuzzHost) {
        // Walk the result the way the options layer and debug dumps do.
        let _ = map.to_json();
        for entry in map.iter() {
            let _ = entry.value.as_duration();
            let _ = entry.key_pos.to_string();
        }
    }
    // The duration parser sees user strings too.
    let _ = conf::parse_duration(&text);
});
