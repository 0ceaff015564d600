//! Snapshot stream format: a byte stream holding a stream's files, for backup and
//! restore. `STRAITSN` ‖ version u32, then per file: name length u16 (0 ends the stream),
//! name, size u64, data, CRC32C of the data u32. Integers little endian.

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Result, StoreError};

const MAGIC: &[u8; 8] = b"STRAITSN";
const VERSION: u32 = 1;

fn io(e: std::io::Error) -> StoreError {
    StoreError::Snapshot(e.to_string())
}

pub(crate) struct Writer<'a, W: Write> {
    out: &'a mut W,
}

impl<'a, W: Write> Writer<'a, W> {
    pub(crate) fn new(out: &'a mut W) -> Result<Self> {
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&VERSION.to_le_bytes()).map_err(io)?;
        Ok(Writer { out })
    }

    pub(crate) fn file(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.out
            .write_all(&(name.len() as u16).to_le_bytes())
            .map_err(io)?;
        self.out.write_all(name.as_bytes()).map_err(io)?;
        self.out
            .write_all(&(data.len() as u64).to_le_bytes())
            .map_err(io)?;
        self.out.write_all(data).map_err(io)?;
        self.out
            .write_all(&crc32c::crc32c(data).to_le_bytes())
            .map_err(io)?;
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<()> {
        self.out.write_all(&0u16.to_le_bytes()).map_err(io)?;
        self.out.flush().map_err(io)
    }
}

fn valid_name(name: &str) -> bool {
    name == "meta"
        || (name.len() == 24
            && (name.ends_with(".seg") || name.ends_with(".sum"))
            && name[..20].bytes().all(|b| b.is_ascii_digit()))
}

/// Restores the files of a snapshot into `dir` (created; must hold no store).
pub fn restore<R: Read>(dir: &Path, input: &mut R) -> Result<()> {
    if dir.join("meta").exists() {
        return Err(StoreError::Snapshot(format!(
            "{} already holds a store",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut hdr = [0u8; 12];
    input.read_exact(&mut hdr).map_err(io)?;
    if &hdr[..8] != MAGIC || u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) != VERSION {
        return Err(StoreError::Snapshot("not a strait stream snapshot".into()));
    }
    loop {
        let mut l = [0u8; 2];
        input.read_exact(&mut l).map_err(io)?;
        let nlen = u16::from_le_bytes(l) as usize;
        if nlen == 0 {
            break;
        }
        let mut name = vec![0u8; nlen];
        input.read_exact(&mut name).map_err(io)?;
        let name = String::from_utf8(name)
            .ok()
            .filter(|n| valid_name(n))
            .ok_or_else(|| StoreError::Snapshot("bad file name in snapshot".into()))?;
        let mut sz = [0u8; 8];
        input.read_exact(&mut sz).map_err(io)?;
        let size = u64::from_le_bytes(sz);
        if size > 1 << 40 {
            return Err(StoreError::Snapshot("file too large in snapshot".into()));
        }
        let mut data = vec![0u8; size as usize];
        input.read_exact(&mut data).map_err(io)?;
        let mut c = [0u8; 4];
        input.read_exact(&mut c).map_err(io)?;
        if crc32c::crc32c(&data) != u32::from_le_bytes(c) {
            return Err(StoreError::Snapshot(format!("checksum mismatch in {name}")));
        }
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, &data).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, dir.join(&name)).map_err(io)?;
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
