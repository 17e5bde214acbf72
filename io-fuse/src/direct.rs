//! Writing a large file once, without the page cache: a snapshot's LTX file and database on
//! a replica, a database copy on a primary (decision 0010).
//!
//! Each of those is a gigabyte written once and not read soon (or read once, sequentially).
//! Through the page cache every byte is first copied into freshly allocated cache pages, and
//! on a virtual machine whose host reclaims free guest memory each such page is also a host
//! fault: measured on the benchmark machine, 1.5–2.6 s per GiB of CPU for buffered writes
//! into a new file, against 0.6–0.75 s of (mostly idle) waiting per GiB with `O_DIRECT`.
//! [`DirectWriter`] gathers writes into aligned chunks and writes them with `O_DIRECT` on a
//! thread of its own, so the disk works while the caller decodes and verifies. Where the
//! file system refuses `O_DIRECT` (tmpfs, some FUSE file systems), or a chunk is not aligned
//! (a database of 512-byte pages around its lock page), it writes through the page cache.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Alignment of direct writes (offset, length and memory): the largest logical block size in
/// common use, so it suits 512-byte and 4 KiB sector disks alike.
pub const DIRECT_ALIGN: usize = 4096;

/// Bytes per write: large enough that the disk streams, small enough that the chunks in
/// flight stay a few MiB per file.
const CHUNK_BYTES: usize = 1 << 20;

/// Chunks queued for the writing thread besides the one being filled: the caller runs ahead
/// of the disk by at most this much.
const CHUNKS_QUEUED: usize = 3;

/// A buffer whose contents start at an address aligned to [`DIRECT_ALIGN`], without unsafe
/// allocation: a `Vec` a little larger than needed, used from its first aligned byte.
struct AlignedChunk {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedChunk {
    fn new() -> AlignedChunk {
        let raw = vec![0u8; CHUNK_BYTES + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        assert!(start < DIRECT_ALIGN, "a byte buffer can always be aligned within one alignment");
        AlignedChunk { raw, start, len: 0 }
    }

    fn data(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn room(&self) -> usize {
        CHUNK_BYTES - self.len
    }

    fn push(&mut self, bytes: &[u8]) {
        let at = self.start + self.len;
        self.raw[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Zeros up to the next multiple of the alignment, so a last chunk can be written
    /// directly; the caller truncates the file to its real length afterwards.
    fn pad(&mut self) {
        let padded = self.len.next_multiple_of(DIRECT_ALIGN).min(CHUNK_BYTES);
        let from = self.start + self.len;
        self.raw[from..self.start + padded].fill(0);
        self.len = padded;
    }
}

/// A chunk and where in the file it goes.
struct Job {
    chunk: AlignedChunk,
    offset: u64,
}

/// Writes a file from positioned writes, gathering contiguous ones into aligned chunks that
/// a thread of its own writes with `O_DIRECT` where it can. Errors of the thread surface at
/// the next write or at [`DirectWriter::finish`].
pub struct DirectWriter {
    file: Arc<File>,
    chunk: AlignedChunk,
    /// File offset of the chunk's first byte.
    chunk_at: u64,
    jobs: Option<SyncSender<Job>>,
    spare: Receiver<AlignedChunk>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl DirectWriter {
    /// Writes `file` (open for writing), with `O_DIRECT` if its file system allows it.
    pub fn new(file: File) -> io::Result<DirectWriter> {
        let direct = set_direct(&file, true).is_ok();
        let file = Arc::new(file);
        let (jobs, queue) = sync_channel::<Job>(CHUNKS_QUEUED);
        let (give_back, spare) = sync_channel::<AlignedChunk>(CHUNKS_QUEUED + 1);
        let writing = Arc::clone(&file);
        let thread = std::thread::Builder::new()
            .name("replite-direct".into())
            .spawn(move || write_jobs(&writing, direct, &queue, &give_back))?;
        Ok(DirectWriter {
            file,
            chunk: AlignedChunk::new(),
            chunk_at: 0,
            jobs: Some(jobs),
            spare,
            thread: Some(thread),
        })
    }

    /// Writes `bytes` at `offset`. Writes that continue the previous one are gathered.
    pub fn write_at(&mut self, offset: u64, mut bytes: &[u8]) -> io::Result<()> {
        // The next chunk starts where the one sent last ended (`send_chunk`).
        if self.chunk.len > 0 && self.chunk_at + self.chunk.len as u64 != offset {
            self.send_chunk()?;
        }
        if self.chunk.len == 0 {
            self.chunk_at = offset;
        }
        while !bytes.is_empty() {
            let n = bytes.len().min(self.chunk.room());
            self.chunk.push(&bytes[..n]);
            bytes = &bytes[n..];
            if self.chunk.room() == 0 {
                self.send_chunk()?;
            }
        }
        Ok(())
    }

    /// Writes what is gathered, waits for every write, and sets the file's length to `len`
    /// (a last chunk may have been padded). Returns the file (not fsynced).
    pub fn finish(mut self, len: u64) -> io::Result<Arc<File>> {
        if self.chunk.len > 0 {
            self.chunk.pad();
            self.send_chunk()?;
        }
        self.stop()?;
        self.file.set_len(len)?;
        // Buffered from here, whoever reads or writes the file next.
        let _ = set_direct(&self.file, false);
        Ok(Arc::clone(&self.file))
    }

    /// Hands the chunk to the thread and takes a fresh one.
    fn send_chunk(&mut self) -> io::Result<()> {
        let next = match self.spare.try_recv() {
            Ok(mut chunk) => {
                chunk.len = 0;
                chunk
            }
            Err(_) => AlignedChunk::new(),
        };
        let chunk = std::mem::replace(&mut self.chunk, next);
        let offset = self.chunk_at;
        self.chunk_at += chunk.len as u64;
        let jobs = self.jobs.as_ref().expect("jobs are open until finish or drop");
        if jobs.send(Job { chunk, offset }).is_err() {
            // The thread stopped: it failed, and says why.
            return Err(self.stop().err().unwrap_or_else(|| io::Error::other("the writing thread stopped")));
        }
        Ok(())
    }

    fn stop(&mut self) -> io::Result<()> {
        self.jobs = None;
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| io::Error::other("the writing thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn write_jobs(
    file: &File,
    direct: bool,
    queue: &Receiver<Job>,
    give_back: &SyncSender<AlignedChunk>,
) -> io::Result<()> {
    // Whether O_DIRECT may be used at all (the file system took the flag and has not refused
    // a write with it), and whether it is on right now.
    let mut allowed = direct;
    let mut on = direct;
    // Bounded: the queue ends when the writer finishes or is dropped.
    while let Ok(Job { chunk, offset }) = queue.recv() {
        let aligned = offset % DIRECT_ALIGN as u64 == 0 && chunk.len % DIRECT_ALIGN == 0;
        if on != (allowed && aligned) {
            on = allowed && aligned;
            set_direct(file, on)?;
        }
        match file.write_all_at(chunk.data(), offset) {
            Ok(()) => {}
            // Some file systems take the flag but refuse the I/O: through the cache from here.
            Err(e) if on && e.raw_os_error() == Some(libc::EINVAL) => {
                allowed = false;
                on = false;
                set_direct(file, false)?;
                file.write_all_at(chunk.data(), offset)?;
            }
            Err(e) => return Err(e),
        }
        let _ = give_back.try_send(chunk);
    }
    Ok(())
}

/// Reads a file once from start to end, with `O_DIRECT` where the file system allows it
/// (a spilled snapshot copy on a primary): like [`DirectWriter`], it keeps a file that is
/// read once out of the page cache. Reads are whole aligned chunks.
pub struct DirectReader {
    file: File,
    chunk: AlignedChunk,
    /// Bytes of `chunk` already returned.
    at: usize,
    /// File offset of the next chunk.
    next: u64,
    direct: bool,
}

impl DirectReader {
    /// Reads `file` from its start.
    pub fn new(file: File) -> DirectReader {
        let direct = set_direct(&file, true).is_ok();
        DirectReader { file, chunk: AlignedChunk::new(), at: 0, next: 0, direct }
    }
}

impl io::Read for DirectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.chunk.len {
            self.chunk.len = CHUNK_BYTES;
            let range = self.chunk.start..self.chunk.start + CHUNK_BYTES;
            let n = loop {
                match self.file.read_at(&mut self.chunk.raw[range.clone()], self.next) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // Refused for this file after all (alignment): read through the cache.
                    Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                        set_direct(&self.file, false)?;
                        self.direct = false;
                    }
                    Err(e) => return Err(e),
                }
            };
            self.chunk.len = n;
            self.at = 0;
            self.next += n as u64;
        }
        let n = buf.len().min(self.chunk.len - self.at);
        let from = self.chunk.start + self.at;
        buf[..n].copy_from_slice(&self.chunk.raw[from..from + n]);
        self.at += n;
        Ok(n)
    }
}

/// Turns `O_DIRECT` on or off for `file`'s open file description.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL read and set the status flags of a descriptor `file` owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let wanted = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if wanted != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, wanted) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn gathered_writes_land_where_they_were_asked_with_the_length_asked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let file = File::create(&path).expect("create");
        let mut writer = DirectWriter::new(file).expect("writer");
        // Odd-sized sequential pieces across several chunks, then a gap and a piece after it.
        let first = pattern(3 * CHUNK_BYTES + 12_345, 1);
        let mut at = 0;
        for piece in first.chunks(65_521) {
            writer.write_at(at as u64, piece).expect("write");
            at += piece.len();
        }
        let gap_at = first.len() as u64 + 8192;
        let second = pattern(5000, 7);
        writer.write_at(gap_at, &second).expect("write");
        let len = gap_at + second.len() as u64;
        writer.finish(len).expect("finish");
        let read = std::fs::read(&path).expect("read");
        assert_eq!(read.len() as u64, len);
        assert_eq!(&read[..first.len()], &first[..]);
        assert!(read[first.len()..gap_at as usize].iter().all(|&b| b == 0), "the gap reads as zeros");
        assert_eq!(&read[gap_at as usize..], &second[..]);
    }

    #[test]
    fn a_direct_reader_reads_back_what_was_written_whatever_its_length() {
        let dir = tempfile::tempdir().expect("temp dir");
        for len in [0, 1, 4095, CHUNK_BYTES, 2 * CHUNK_BYTES + 777] {
            let path = dir.path().join(format!("f{len}"));
            let bytes = pattern(len, 5);
            let mut writer = DirectWriter::new(File::create(&path).expect("create")).expect("writer");
            writer.write_at(0, &bytes).expect("write");
            writer.finish(len as u64).expect("finish");
            let mut read = Vec::new();
            io::Read::read_to_end(&mut DirectReader::new(File::open(&path).expect("open")), &mut read).expect("read");
            assert_eq!(read, bytes, "length {len}");
        }
    }

    #[test]
    fn a_write_after_a_failure_reports_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").expect("create");
        // Read-only: every write fails.
        let file = File::open(&path).expect("open");
        let mut writer = DirectWriter::new(file).expect("writer");
        let bytes = pattern(CHUNK_BYTES, 3);
        let mut failed = None;
        for i in 0..(CHUNKS_QUEUED + 3) {
            if let Err(e) = writer.write_at((i * CHUNK_BYTES) as u64, &bytes) {
                failed = Some(e);
                break;
            }
        }
        let error = match failed {
            Some(e) => e,
            None => writer.finish(0).expect_err("the writes failed"),
        };
        assert_eq!(error.raw_os_error(), Some(libc::EBADF), "{error}");
    }
}
