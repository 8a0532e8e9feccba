//! Atomic file writes: a temporary file beside the target, synced, then renamed.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::gguf::temp_path_for;

/// Writes `bytes` to `path` so that `path` either keeps its old content or has all of
/// the new one, never a part.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path_for(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
