//! This machine's name, for what must differ between daemons on several hosts that share a
//! stream or a folder: Redis consumer names, and the temporary files of atomic writes.

/// gethostname(2): works under the unit's ProcSubset=pid, which hides /proc/sys. `aestream`
/// when the name cannot be had.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the result is NUL-terminated on success
    // (and we stop at the first NUL or the end either way).
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if ok && !name.is_empty() {
        name
    } else {
        "aestream".into()
    }
}
