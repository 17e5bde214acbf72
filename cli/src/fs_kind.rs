//! Which file system a directory is on, and whether it journals its metadata.
//!
//! Two things depend on it. A new LTX file is made durable with one fsync of the file
//! (decision 0008), which relies on the file system committing the file's name with it, as
//! journaling file systems do. And ext4 *without* a journal makes creating files slow after
//! many deletions (its inode allocator skips inodes deleted in the last seconds to minutes,
//! reading the inode table for each), which benchmark readers need to know about: the
//! daemon warns at start, and `replite bench` names the file system in its report.

use std::fmt;
use std::io;
use std::path::Path;

/// The file system holding a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsKind {
    /// Its type as the kernel names it (`ext4`, `xfs`, `tmpfs`, …).
    pub fs_type: String,
    /// What is mounted (a device, or a name such as `tmpfs`).
    pub source: String,
    /// For ext4, its data journaling mode (`ordered`, `writeback`, `journal`), or `None` when
    /// it has no journal. `None` for other types, and when it could not be read.
    pub ext4_journal: Option<Option<String>>,
}

impl FsKind {
    /// Whether this is ext4 running without a journal.
    #[must_use]
    pub fn is_unjournaled_ext4(&self) -> bool {
        matches!(self.ext4_journal, Some(None))
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.fs_type, self.source)?;
        match &self.ext4_journal {
            Some(Some(mode)) => write!(f, ", data={mode}"),
            Some(None) => write!(f, ", no journal"),
            None => Ok(()),
        }
    }
}

/// The file system holding `dir` (which must exist).
///
/// # Errors
/// When `dir` cannot be resolved or `/proc/self/mountinfo` cannot be read or names no mount
/// holding it.
pub fn of(dir: &Path) -> io::Result<FsKind> {
    let dir = dir.canonicalize()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount =
        holding_mount(&mountinfo, &dir).ok_or_else(|| io::Error::other(format!("no mount holds {}", dir.display())))?;
    let ext4_journal = if mount.fs_type == "ext4" { ext4_journal_mode(&mount.device).ok() } else { None };
    Ok(FsKind { fs_type: mount.fs_type, source: mount.source, ext4_journal })
}

/// One line of `/proc/self/mountinfo`, the parts used here.
#[derive(Debug, PartialEq, Eq)]
struct MountLine {
    device: String,
    mount_point: String,
    fs_type: String,
    source: String,
}

/// The mount whose mount point is the longest prefix of `dir`; of equal ones the last listed
/// (mounted over the others).
fn holding_mount(mountinfo: &str, dir: &Path) -> Option<MountLine> {
    let mut best: Option<MountLine> = None;
    for line in mountinfo.lines() {
        let Some(mount) = parse_line(line) else { continue };
        if !dir.starts_with(&mount.mount_point) {
            continue;
        }
        if best.as_ref().is_none_or(|b| mount.mount_point.len() >= b.mount_point.len()) {
            best = Some(mount);
        }
    }
    best
}

/// Fields (proc(5)): id, parent id, major:minor, root, mount point, options, optional fields
/// up to a lone `-`, then type, source, super options.
fn parse_line(line: &str) -> Option<MountLine> {
    let mut fields = line.split(' ');
    let device = fields.nth(2)?.to_owned();
    let mount_point = unescape(fields.nth(1)?);
    let mut rest = fields.skip_while(|&f| f != "-").skip(1);
    let fs_type = rest.next()?.to_owned();
    let source = unescape(rest.next()?);
    Some(MountLine { device, mount_point, fs_type, source })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(digits) = octal {
            out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An ext4 file system's data journaling mode from `/proc/fs/ext4/<dev>/options`, which lists
/// `data=<mode>` only when it has a journal (`None`).
fn ext4_journal_mode(device: &str) -> io::Result<Option<String>> {
    let link = std::fs::read_link(format!("/sys/dev/block/{device}"))?;
    let name = link.file_name().and_then(|n| n.to_str()).ok_or_else(|| io::Error::other("unnamed block device"))?;
    let options = std::fs::read_to_string(format!("/proc/fs/ext4/{name}/options"))?;
    Ok(journal_mode_in(&options))
}

fn journal_mode_in(options: &str) -> Option<String> {
    options.lines().find_map(|line| line.strip_prefix("data=")).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 22 0:26 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw
31 22 7:0 / /mnt/my\\040disk rw,relatime shared:9 - ext4 /dev/loop0 rw
40 22 0:50 / /mnt/my\\040disk rw master:3 - tmpfs over rw
";

    #[test]
    fn the_longest_and_latest_mount_point_holding_a_directory_wins() {
        let at = |dir: &str| holding_mount(MOUNTINFO, Path::new(dir)).map(|m| (m.fs_type, m.source));
        assert_eq!(at("/work/main"), Some(("ext4".into(), "/dev/vda".into())));
        assert_eq!(at("/dev/shm/x"), Some(("tmpfs".into(), "tmpfs".into())));
        // `/dev/shmem` is not under `/dev/shm`: whole components only.
        assert_eq!(at("/dev/shmem"), Some(("ext4".into(), "/dev/vda".into())));
        assert_eq!(at("/mnt/my disk/db"), Some(("tmpfs".into(), "over".into())), "mounted over");
    }

    #[test]
    fn a_line_is_read_past_its_optional_fields_and_escapes() {
        let line = "31 22 7:0 / /mnt/my\\040disk rw,relatime shared:9 master:2 - ext4 /dev/loop0 rw";
        let parsed = parse_line(line).expect("parsed");
        assert_eq!(parsed.device, "7:0");
        assert_eq!(parsed.mount_point, "/mnt/my disk");
        assert_eq!((parsed.fs_type.as_str(), parsed.source.as_str()), ("ext4", "/dev/loop0"));
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn the_journal_mode_is_the_data_option_and_its_absence_means_none() {
        assert_eq!(journal_mode_in("rw\njournal_checksum\ndata=ordered\ndelalloc\n").as_deref(), Some("ordered"));
        assert_eq!(journal_mode_in("rw\nnojournal_checksum\ndelalloc\n"), None);
        let no_journal = FsKind { fs_type: "ext4".into(), source: "/dev/vda".into(), ext4_journal: Some(None) };
        assert!(no_journal.is_unjournaled_ext4());
        assert_eq!(no_journal.to_string(), "ext4 on /dev/vda, no journal");
        let tmpfs = FsKind { fs_type: "tmpfs".into(), source: "tmpfs".into(), ext4_journal: None };
        assert!(!tmpfs.is_unjournaled_ext4());
        assert_eq!(tmpfs.to_string(), "tmpfs on tmpfs");
    }

    #[test]
    fn the_directory_this_test_runs_in_is_on_some_file_system() {
        let kind = of(Path::new(".")).expect("a mount holds the working directory");
        assert!(!kind.fs_type.is_empty());
    }
}
