//! On-disk metadata: superblock, dirty bitmap and activity log, every block checksummed.
//!
//! Layout (4 KiB blocks; integers little-endian):
//!
//! ```text
//! internal (end of the backing file)          external (own file)
//! +-------------------------+ 0               +---------------+ 0
//! | data (size_bytes)       |                 | superblock 0  |
//! +-------------------------+ md_offset       +---------------+ 4 KiB
//! | bitmap blocks           |                 | superblock 1  |
//! +-------------------------+                 +---------------+ 8 KiB
//! | AL ring (8 blocks)      |                 | AL ring (8)   |
//! +-------------------------+                 +---------------+ 40 KiB
//! | superblock 0            |                 | bitmap blocks |
//! +-------------------------+                 +---------------+
//! | superblock 1 (last 4K)  |
//! +-------------------------+ file end
//! ```
//!
//! The superblocks sit in the last 8 KiB of an internal layout so that they are found
//! from the file size alone. The superblock has two slots: each write carries the next
//! sequence number and goes to slot `seq % 2`, so it never overwrites the newest good
//! copy; a torn write leaves the previous superblock in the other slot, and reading takes
//! the valid slot with the highest number. Each block carries a crc32c; a superblock
//! with both slots bad, or a bad bitmap block, is refused ([`MetaError`]); a bad
//! activity-log block is skipped (a torn transaction write whose data writes never
//! started) and the newest valid transaction wins.
//!
//! The [`MetaStore::write`] call makes one block durable. The core's contract for
//! `PersistMeta` — data first, then the block — is the caller's: flush the data file
//! (`sync_data`) before calling it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::core::activity_log::{AlTransaction, MAX_AL_EXTENTS};
use crate::core::bitmap::{BLOCK_BYTES, Bitmap};
use crate::core::generation::Generations;
use crate::core::{BITMAP_WORDS_PER_BLOCK, MetaFlags, MetaState, MetaWrite};

/// Bytes per metadata block.
pub const MD_BLOCK: u64 = 4096;
/// Superblock magic: "TANDEMMD".
pub const SB_MAGIC: u64 = u64::from_le_bytes(*b"TANDEMMD");
/// Bitmap block magic: "TDBM".
pub const BM_MAGIC: u32 = u32::from_le_bytes(*b"TDBM");
/// Activity-log block magic: "TDAL".
pub const AL_MAGIC: u32 = u32::from_le_bytes(*b"TDAL");
/// Metadata format version. 2: two superblock slots with a sequence number (version 1
/// had one superblock and is refused, see [`MetaError::UnsupportedVersion`]).
pub const MD_VERSION: u32 = 2;
/// Activity-log transaction blocks (a ring).
pub const AL_BLOCKS: u64 = 8;
/// Superblock slots, written alternately.
pub const SB_SLOTS: u64 = 2;

/// Why metadata was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The operating system said no.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No tandem metadata there (another format, or never created).
    #[error("no tandem metadata found (magic {found:#018x}); run `tandem disk create-md`")]
    NotTandem {
        /// What was found instead of the magic.
        found: u64,
    },
    /// Metadata of a format version this build does not read. Version 1 (one
    /// superblock, one block less of metadata) cannot be converted in place: the data
    /// area would shrink by a block under a file system that uses it.
    #[error(
        "metadata version {0} is not supported (this build reads version {MD_VERSION}); \
         recreate it with `tandem disk create-md --force` and let the peer resync this node \
         (or copy the data off first if this is the only copy)"
    )]
    UnsupportedVersion(u32),
    /// A block's checksum does not match its contents.
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum {
        /// Which block.
        what: String,
        /// Stored checksum.
        stored: u32,
        /// Computed checksum.
        computed: u32,
    },
    /// A field holds a value that cannot be right.
    #[error("{what}: {why}")]
    Invalid {
        /// Which block or field.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// The backing store is too small for data plus metadata.
    #[error("backing store of {len_bytes} bytes is too small for metadata")]
    TooSmall {
        /// Its size.
        len_bytes: u64,
    },
    /// Valid metadata already exists and overwriting was not asked for.
    #[error("valid tandem metadata already exists; pass --force to overwrite it")]
    Exists,
    /// The backing store changed size since create-md.
    #[error("backing store holds {actual} data bytes, metadata says {recorded}")]
    SizeMismatch {
        /// Size in the superblock.
        recorded: u64,
        /// Size the backing store allows now.
        actual: u64,
    },
}

/// Where the metadata lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaLocation {
    /// At the end of the backing file or device.
    Internal,
    /// In a file of its own.
    External(PathBuf),
}

/// The decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Sequence number of this write: the highest valid one of the two slots is the
    /// superblock; it lives in slot `seq % 2`.
    pub seq: u64,
    /// Random identity.
    pub node_id: u64,
    /// Data bytes.
    pub size_bytes: u64,
    /// Generations.
    pub generations: Generations,
    /// Flags.
    pub flags: MetaFlags,
    /// Activity-log size.
    pub al_extents: u32,
    /// Bitmap blocks.
    pub bitmap_blocks: u32,
}

/// Bitmap blocks needed for `size_bytes` of data.
pub fn bitmap_blocks_for(size_bytes: u64) -> u64 {
    let bits = size_bytes.div_ceil(BLOCK_BYTES);
    bits.div_ceil(64 * BITMAP_WORDS_PER_BLOCK as u64).max(1)
}

/// Metadata bytes for `size_bytes` of data.
pub fn md_bytes_for(size_bytes: u64) -> u64 {
    MD_BLOCK * (SB_SLOTS + AL_BLOCKS + bitmap_blocks_for(size_bytes))
}

/// Where each part lives in the metadata file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Data bytes.
    pub size_bytes: u64,
    /// Offsets of the superblock slots.
    pub sb_offsets: [u64; SB_SLOTS as usize],
    /// First AL block.
    pub al_offset: u64,
    /// First bitmap block.
    pub bitmap_offset: u64,
    /// Bitmap blocks.
    pub bitmap_blocks: u64,
}

impl Layout {
    /// The internal layout for a backing store of `len_bytes`.
    pub fn internal(len_bytes: u64) -> Result<Layout, MetaError> {
        let total = len_bytes / MD_BLOCK * MD_BLOCK;
        // Largest data size whose metadata still fits behind it.
        let mut size = total.saturating_sub(md_bytes_for(total));
        while size > 0 && size + md_bytes_for(size) > total {
            size -= MD_BLOCK;
        }
        // Grow back while there is room (the estimate above is conservative).
        while size + MD_BLOCK + md_bytes_for(size + MD_BLOCK) <= total {
            size += MD_BLOCK;
        }
        if size < MD_BLOCK {
            return Err(MetaError::TooSmall { len_bytes });
        }
        let bm = bitmap_blocks_for(size);
        let sb_offset = total - SB_SLOTS * MD_BLOCK;
        let al_offset = sb_offset - AL_BLOCKS * MD_BLOCK;
        Ok(Layout {
            size_bytes: size,
            sb_offsets: [sb_offset, sb_offset + MD_BLOCK],
            al_offset,
            bitmap_offset: al_offset - bm * MD_BLOCK,
            bitmap_blocks: bm,
        })
    }

    /// The external layout for a backing store of `len_bytes`.
    pub fn external(len_bytes: u64) -> Result<Layout, MetaError> {
        let size = len_bytes / MD_BLOCK * MD_BLOCK;
        if size < MD_BLOCK {
            return Err(MetaError::TooSmall { len_bytes });
        }
        Ok(Layout {
            size_bytes: size,
            sb_offsets: [0, MD_BLOCK],
            al_offset: MD_BLOCK * SB_SLOTS,
            bitmap_offset: MD_BLOCK * (SB_SLOTS + AL_BLOCKS),
            bitmap_blocks: bitmap_blocks_for(size),
        })
    }
}

/// Encodes a superblock into one block.
pub fn encode_superblock(sb: &Superblock) -> Vec<u8> {
    let mut b = vec![0u8; MD_BLOCK as usize];
    b[0..8].copy_from_slice(&SB_MAGIC.to_le_bytes());
    b[8..12].copy_from_slice(&MD_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&sb.node_id.to_le_bytes());
    b[24..32].copy_from_slice(&sb.size_bytes.to_le_bytes());
    for (i, g) in sb.generations.to_array().iter().enumerate() {
        b[32 + 8 * i..40 + 8 * i].copy_from_slice(&g.to_le_bytes());
    }
    b[64..68].copy_from_slice(&sb.flags.to_bits().to_le_bytes());
    b[68..72].copy_from_slice(&sb.al_extents.to_le_bytes());
    b[72..76].copy_from_slice(&sb.bitmap_blocks.to_le_bytes());
    b[76..80].copy_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
    b[80..84].copy_from_slice(&(AL_BLOCKS as u32).to_le_bytes());
    b[84..92].copy_from_slice(&sb.seq.to_le_bytes());
    let crc = crc32c::crc32c(&b[..4092]);
    b[4092..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes and checks a superblock block.
pub fn decode_superblock(b: &[u8]) -> Result<Superblock, MetaError> {
    let what = || "superblock".to_string();
    if b.len() != MD_BLOCK as usize {
        return Err(MetaError::Invalid {
            what: what(),
            why: format!("{} bytes, expected {MD_BLOCK}", b.len()),
        });
    }
    let magic = le_u64(&b[0..8]);
    if magic != SB_MAGIC {
        return Err(MetaError::NotTandem { found: magic });
    }
    let stored = le_u32(&b[4092..]);
    let computed = crc32c::crc32c(&b[..4092]);
    if stored != computed {
        return Err(MetaError::BadChecksum {
            what: what(),
            stored,
            computed,
        });
    }
    let version = le_u32(&b[8..12]);
    if version != MD_VERSION {
        return Err(MetaError::UnsupportedVersion(version));
    }
    let invalid = |why: &str| MetaError::Invalid {
        what: what(),
        why: why.to_string(),
    };
    let size_bytes = le_u64(&b[24..32]);
    if size_bytes == 0 || size_bytes % BLOCK_BYTES != 0 {
        return Err(invalid("data size is not a positive multiple of 4 KiB"));
    }
    let mut g = [0u64; 4];
    for (i, x) in g.iter_mut().enumerate() {
        *x = le_u64(&b[32 + 8 * i..40 + 8 * i]);
    }
    let flags = MetaFlags::from_bits(le_u32(&b[64..68])).ok_or_else(|| invalid("unknown flags"))?;
    let al_extents = le_u32(&b[68..72]);
    if al_extents == 0 || al_extents > MAX_AL_EXTENTS {
        return Err(invalid("al-extents out of range"));
    }
    let bitmap_blocks = le_u32(&b[72..76]);
    if u64::from(bitmap_blocks) != bitmap_blocks_for(size_bytes) {
        return Err(invalid("bitmap block count does not match the data size"));
    }
    if le_u32(&b[76..80]) != BLOCK_BYTES as u32 || le_u32(&b[80..84]) != AL_BLOCKS as u32 {
        return Err(invalid(
            "unsupported bitmap granularity or activity-log size",
        ));
    }
    if b[12..16].iter().chain(&b[92..4092]).any(|x| *x != 0) {
        return Err(invalid("reserved bytes are not zero"));
    }
    Ok(Superblock {
        seq: le_u64(&b[84..92]),
        node_id: le_u64(&b[16..24]),
        size_bytes,
        generations: Generations::from_array(g),
        flags,
        al_extents,
        bitmap_blocks,
    })
}

/// Encodes bitmap block `index` holding up to 510 words.
pub fn encode_bitmap_block(index: u32, words: &[u64]) -> Vec<u8> {
    let mut b = vec![0u8; MD_BLOCK as usize];
    b[0..4].copy_from_slice(&BM_MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&index.to_le_bytes());
    for (i, w) in words.iter().take(BITMAP_WORDS_PER_BLOCK).enumerate() {
        b[16 + 8 * i..24 + 8 * i].copy_from_slice(&w.to_le_bytes());
    }
    let crc = bitmap_crc(&b);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

fn bitmap_crc(b: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[..12]), &b[16..])
}

/// Decodes bitmap block `index`; returns its 510 words.
pub fn decode_bitmap_block(b: &[u8], index: u32) -> Result<Vec<u64>, MetaError> {
    let what = || format!("bitmap block {index}");
    if b.len() != MD_BLOCK as usize {
        return Err(MetaError::Invalid {
            what: what(),
            why: "wrong block size".into(),
        });
    }
    let magic = le_u32(&b[0..4]);
    if magic != BM_MAGIC {
        return Err(MetaError::Invalid {
            what: what(),
            why: format!("bad magic {magic:#010x}"),
        });
    }
    let stored = le_u32(&b[12..16]);
    let computed = bitmap_crc(b);
    if stored != computed {
        return Err(MetaError::BadChecksum {
            what: what(),
            stored,
            computed,
        });
    }
    if le_u32(&b[4..8]) != index || le_u32(&b[8..12]) != 0 {
        return Err(MetaError::Invalid {
            what: what(),
            why: "block index does not match its position".into(),
        });
    }
    Ok(b[16..].chunks_exact(8).map(le_u64).collect())
}

/// Encodes an activity-log transaction block.
pub fn encode_al_block(t: &AlTransaction) -> Vec<u8> {
    let mut b = vec![0u8; MD_BLOCK as usize];
    let n = t.extents.len().min(MAX_AL_EXTENTS as usize);
    b[0..4].copy_from_slice(&AL_MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&(n as u32).to_le_bytes());
    b[8..16].copy_from_slice(&t.number.to_le_bytes());
    for (i, e) in t.extents.iter().take(n).enumerate() {
        b[16 + 4 * i..20 + 4 * i].copy_from_slice(&e.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b[..4092]);
    b[4092..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes an activity-log block: `Ok(None)` for a never-written (all-zero) block.
pub fn decode_al_block(b: &[u8]) -> Result<Option<AlTransaction>, MetaError> {
    let what = || "activity-log block".to_string();
    if b.len() != MD_BLOCK as usize {
        return Err(MetaError::Invalid {
            what: what(),
            why: "wrong block size".into(),
        });
    }
    if b.iter().all(|x| *x == 0) {
        return Ok(None);
    }
    let magic = le_u32(&b[0..4]);
    if magic != AL_MAGIC {
        return Err(MetaError::Invalid {
            what: what(),
            why: format!("bad magic {magic:#010x}"),
        });
    }
    let stored = le_u32(&b[4092..]);
    let computed = crc32c::crc32c(&b[..4092]);
    if stored != computed {
        return Err(MetaError::BadChecksum {
            what: what(),
            stored,
            computed,
        });
    }
    let n = le_u32(&b[4..8]);
    if n > MAX_AL_EXTENTS {
        return Err(MetaError::Invalid {
            what: what(),
            why: "too many extents".into(),
        });
    }
    let extents = (0..n as usize)
        .map(|i| le_u32(&b[16 + 4 * i..20 + 4 * i]))
        .collect();
    Ok(Some(AlTransaction {
        number: le_u64(&b[8..16]),
        extents,
    }))
}

/// Reads both superblock slots and returns the valid one with the highest sequence
/// number. With no valid slot, the error says the most about why: an unsupported
/// version, then a checksum mismatch, then any other; "not tandem metadata" only when
/// neither slot is.
pub fn read_superblock(
    layout: &Layout,
    mut read_at: impl FnMut(u64, usize) -> Result<Vec<u8>, MetaError>,
) -> Result<Superblock, MetaError> {
    let mut best: Option<Superblock> = None;
    let mut errors: Vec<MetaError> = Vec::new();
    for (slot, &offset) in layout.sb_offsets.iter().enumerate() {
        match decode_superblock(&read_at(offset, MD_BLOCK as usize)?) {
            // A copy of the other slot's block (or a misplaced write) is not this slot's.
            Ok(sb) if sb.seq % SB_SLOTS != slot as u64 => errors.push(MetaError::Invalid {
                what: format!("superblock slot {slot}"),
                why: format!("holds sequence number {}, of the other slot", sb.seq),
            }),
            Ok(sb) => {
                if best.as_ref().is_none_or(|b| sb.seq > b.seq) {
                    best = Some(sb);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if let Some(sb) = best {
        return Ok(sb);
    }
    let rank = |e: &MetaError| match e {
        MetaError::UnsupportedVersion(_) => 0,
        MetaError::BadChecksum { .. } => 1,
        MetaError::NotTandem { .. } => 3,
        _ => 2,
    };
    // Every slot gave a superblock or an error, so there is one to report.
    Err(errors
        .into_iter()
        .min_by_key(rank)
        .unwrap_or(MetaError::NotTandem { found: 0 }))
}

/// Reads everything from raw metadata bytes laid out as `layout` says (`read_at(offset,
/// len)` returns those bytes). Pure, for tests and fuzzing; [`MetaStore::open`] uses it.
pub fn read_meta(
    layout: &Layout,
    read_at: impl FnMut(u64, usize) -> Result<Vec<u8>, MetaError>,
) -> Result<MetaState, MetaError> {
    read_meta_and_superblock(layout, read_at).map(|(state, _)| state)
}

fn read_meta_and_superblock(
    layout: &Layout,
    mut read_at: impl FnMut(u64, usize) -> Result<Vec<u8>, MetaError>,
) -> Result<(MetaState, Superblock), MetaError> {
    let sb = read_superblock(layout, &mut read_at)?;
    if sb.size_bytes != layout.size_bytes {
        return Err(MetaError::SizeMismatch {
            recorded: sb.size_bytes,
            actual: layout.size_bytes,
        });
    }
    let mut words = Vec::with_capacity(sb.bitmap_blocks as usize * BITMAP_WORDS_PER_BLOCK);
    for i in 0..sb.bitmap_blocks {
        let raw = read_at(
            layout.bitmap_offset + u64::from(i) * MD_BLOCK,
            MD_BLOCK as usize,
        )?;
        words.extend(decode_bitmap_block(&raw, i)?);
    }
    let mut al: Option<AlTransaction> = None;
    for i in 0..AL_BLOCKS {
        let raw = read_at(layout.al_offset + i * MD_BLOCK, MD_BLOCK as usize)?;
        // A damaged block is a torn transaction write: its data writes never started.
        if let Ok(Some(t)) = decode_al_block(&raw)
            && al.as_ref().is_none_or(|a| t.number > a.number)
        {
            al = Some(t);
        }
    }
    let state = MetaState {
        node_id: sb.node_id,
        size_bytes: sb.size_bytes,
        generations: sb.generations,
        flags: sb.flags,
        al_extents: sb.al_extents,
        bitmap: Bitmap::from_words(sb.size_bytes, &words),
        al,
    };
    Ok((state, sb))
}

/// Open metadata: the file and its layout.
#[derive(Debug)]
pub struct MetaStore {
    file: File,
    path: PathBuf,
    layout: Layout,
    node_id: u64,
    al_extents: u32,
    bitmap_blocks: u32,
    /// Sequence number of the newest superblock on disk; the next write gets one more
    /// (and so goes to the other slot).
    sb_seq: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MetaError + '_ {
    move |source| MetaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn device_len(f: &File, path: &Path) -> Result<u64, MetaError> {
    use std::io::{Seek, SeekFrom};
    // Works for regular files and block devices alike.
    let mut f = f;
    f.seek(SeekFrom::End(0)).map_err(io_err(path))
}

fn open_files(backing: &Path, loc: &MetaLocation) -> Result<(File, PathBuf, Layout), MetaError> {
    let data = OpenOptions::new()
        .read(true)
        .write(true)
        .open(backing)
        .map_err(io_err(backing))?;
    let len = device_len(&data, backing)?;
    match loc {
        MetaLocation::Internal => Ok((data, backing.to_path_buf(), Layout::internal(len)?)),
        MetaLocation::External(p) => {
            let md = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(io_err(p))?;
            Ok((md, p.clone(), Layout::external(len)?))
        }
    }
}

impl MetaStore {
    /// `tandem disk create-md`: writes fresh metadata (generations "just created",
    /// inconsistent, empty bitmap and activity log). Refuses to overwrite valid metadata
    /// unless `force`.
    pub fn create(
        backing: &Path,
        loc: &MetaLocation,
        al_extents: u32,
        node_id: u64,
        force: bool,
    ) -> Result<Layout, MetaError> {
        if al_extents == 0 || al_extents > MAX_AL_EXTENTS {
            return Err(MetaError::Invalid {
                what: "al-extents".into(),
                why: format!("must be 1..={MAX_AL_EXTENTS}"),
            });
        }
        let (file, path, layout) = open_files(backing, loc)?;
        let read_at = |off: u64, len: usize| {
            let mut b = vec![0u8; len];
            file.read_exact_at(&mut b, off).map_err(io_err(&path))?;
            Ok(b)
        };
        if !force && read_superblock(&layout, read_at).is_ok() {
            return Err(MetaError::Exists);
        }
        let mut sb = Superblock {
            seq: 0,
            node_id,
            size_bytes: layout.size_bytes,
            generations: Generations::just_created(),
            flags: MetaFlags::default(),
            al_extents,
            bitmap_blocks: layout.bitmap_blocks as u32,
        };
        let zero = vec![0u8; MD_BLOCK as usize];
        for i in 0..AL_BLOCKS {
            file.write_all_at(&zero, layout.al_offset + i * MD_BLOCK)
                .map_err(io_err(&path))?;
        }
        for i in 0..layout.bitmap_blocks {
            file.write_all_at(
                &encode_bitmap_block(i as u32, &[]),
                layout.bitmap_offset + i * MD_BLOCK,
            )
            .map_err(io_err(&path))?;
        }
        file.sync_data().map_err(io_err(&path))?;
        // The superblock last: metadata is valid only once everything else is there.
        // Both slots, so that no older superblock (with a higher number) survives.
        for (seq, &offset) in layout.sb_offsets.iter().enumerate() {
            sb.seq = seq as u64;
            file.write_all_at(&encode_superblock(&sb), offset)
                .map_err(io_err(&path))?;
        }
        file.sync_data().map_err(io_err(&path))?;
        Ok(layout)
    }

    /// Opens and checks existing metadata.
    pub fn open(backing: &Path, loc: &MetaLocation) -> Result<(MetaStore, MetaState), MetaError> {
        let (file, path, layout) = open_files(backing, loc)?;
        let (state, sb) = read_meta_and_superblock(&layout, |off, len| {
            let mut b = vec![0u8; len];
            file.read_exact_at(&mut b, off).map_err(io_err(&path))?;
            Ok(b)
        })?;
        Ok((
            MetaStore {
                file,
                path,
                layout,
                node_id: state.node_id,
                al_extents: state.al_extents,
                bitmap_blocks: bitmap_blocks_for(state.size_bytes) as u32,
                sb_seq: sb.seq,
            },
            state,
        ))
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Makes one metadata block durable (write + `sync_data`). A superblock goes to the
    /// slot that does not hold the newest one; only once it is durable is it the newest
    /// (a failed or torn write is retried into the same slot).
    pub fn write(&mut self, w: &MetaWrite) -> Result<(), MetaError> {
        let seq = self.sb_seq + 1;
        let (offset, bytes) = match w {
            MetaWrite::Superblock(u) => (
                self.layout.sb_offsets[(seq % SB_SLOTS) as usize],
                encode_superblock(&Superblock {
                    seq,
                    node_id: self.node_id,
                    size_bytes: self.layout.size_bytes,
                    generations: u.generations,
                    flags: u.flags,
                    al_extents: self.al_extents,
                    bitmap_blocks: self.bitmap_blocks,
                }),
            ),
            MetaWrite::BitmapBlock { index, words } => {
                if u64::from(*index) >= self.layout.bitmap_blocks {
                    return Err(MetaError::Invalid {
                        what: format!("bitmap block {index}"),
                        why: "past the end of the bitmap".into(),
                    });
                }
                (
                    self.layout.bitmap_offset + u64::from(*index) * MD_BLOCK,
                    encode_bitmap_block(*index, words),
                )
            }
            MetaWrite::ActivityLog(t) => (
                self.layout.al_offset + (t.number % AL_BLOCKS) * MD_BLOCK,
                encode_al_block(t),
            ),
        };
        self.file
            .write_all_at(&bytes, offset)
            .map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        if matches!(w, MetaWrite::Superblock(_)) {
            self.sb_seq = seq;
        }
        Ok(())
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::SuperblockUpdate;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tandem-meta-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    #[test]
    fn internal_layout_fits() {
        for len in [64 << 20, (1 << 30) + 12345, 200 << 10] {
            let l = Layout::internal(len).unwrap();
            assert!(l.size_bytes + md_bytes_for(l.size_bytes) <= len);
            assert!(l.bitmap_offset >= l.size_bytes);
            assert_eq!(l.sb_offsets[1] + MD_BLOCK, len / MD_BLOCK * MD_BLOCK);
            assert_eq!(l.sb_offsets[0] + MD_BLOCK, l.sb_offsets[1]);
            assert_eq!(l.al_offset + AL_BLOCKS * MD_BLOCK, l.sb_offsets[0]);
        }
        assert!(matches!(
            Layout::internal(8192),
            Err(MetaError::TooSmall { .. })
        ));
    }

    #[test]
    fn create_open_write_round_trip_internal_and_external() {
        let data = tmp("data");
        let ext = tmp("ext");
        let _c = Cleanup(vec![data.clone(), ext.clone()]);
        std::fs::write(&data, vec![0u8; 40 << 20]).unwrap();
        for loc in [MetaLocation::Internal, MetaLocation::External(ext.clone())] {
            let layout = MetaStore::create(&data, &loc, 257, 77, true).unwrap();
            assert!(matches!(
                MetaStore::create(&data, &loc, 257, 78, false),
                Err(MetaError::Exists)
            ));
            let (mut store, st) = MetaStore::open(&data, &loc).unwrap();
            assert_eq!(st.node_id, 77);
            assert_eq!(st.size_bytes, layout.size_bytes);
            assert_eq!(st.generations, Generations::just_created());
            assert_eq!(st.bitmap.count(), 0);
            assert!(st.al.is_none());
            let g = Generations {
                current: 99,
                bitmap: 98,
                history: [97, 96],
            };
            let flags = MetaFlags {
                consistent: true,
                was_primary: true,
                ..Default::default()
            };
            store
                .write(&MetaWrite::Superblock(SuperblockUpdate {
                    generations: g,
                    flags,
                }))
                .unwrap();
            let mut bm = Bitmap::new(layout.size_bytes);
            bm.set_range(5, 70);
            store
                .write(&MetaWrite::BitmapBlock {
                    index: 0,
                    words: bm.words()[..BITMAP_WORDS_PER_BLOCK.min(bm.words().len())].to_vec(),
                })
                .unwrap();
            for n in 1..=11 {
                store
                    .write(&MetaWrite::ActivityLog(AlTransaction {
                        number: n,
                        extents: vec![n as u32, 3],
                    }))
                    .unwrap();
            }
            let (_, st) = MetaStore::open(&data, &loc).unwrap();
            assert_eq!(st.generations, g);
            assert_eq!(st.flags, flags);
            assert_eq!(st.bitmap.count(), 70);
            assert_eq!(st.al.unwrap().number, 11);
        }
    }

    #[test]
    fn corrupted_or_foreign_metadata_is_refused() {
        let data = tmp("corrupt");
        let _c = Cleanup(vec![data.clone()]);
        std::fs::write(&data, vec![0u8; 8 << 20]).unwrap();
        // Never created: all zeros.
        assert!(matches!(
            MetaStore::open(&data, &MetaLocation::Internal),
            Err(MetaError::NotTandem { .. })
        ));
        let layout = MetaStore::create(&data, &MetaLocation::Internal, 61, 1, false).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data)
            .unwrap();
        // A flipped bit in both superblock slots.
        let mut b = [0u8; 1];
        for at in layout.sb_offsets {
            f.read_exact_at(&mut b, at + 40).unwrap();
            f.write_all_at(&[b[0] ^ 4], at + 40).unwrap();
        }
        let e = MetaStore::open(&data, &MetaLocation::Internal).unwrap_err();
        assert!(matches!(e, MetaError::BadChecksum { .. }), "{e}");
        assert!(e.to_string().contains("superblock"));
        for at in layout.sb_offsets {
            f.write_all_at(&b, at + 40).unwrap();
        }
        MetaStore::open(&data, &MetaLocation::Internal).unwrap();
        // A flipped bit in a bitmap block.
        f.write_all_at(&[1], layout.bitmap_offset + 100).unwrap();
        let e = MetaStore::open(&data, &MetaLocation::Internal).unwrap_err();
        assert!(e.to_string().contains("bitmap block 0"), "{e}");
        f.write_all_at(&[0], layout.bitmap_offset + 100).unwrap();
        // A torn activity-log block is skipped, not fatal.
        f.write_all_at(&[7u8; 100], layout.al_offset).unwrap();
        MetaStore::open(&data, &MetaLocation::Internal).unwrap();
        // Another program's data where the superblocks should be.
        for at in layout.sb_offsets {
            f.write_all_at(b"XFSB and more", at).unwrap();
        }
        assert!(matches!(
            MetaStore::open(&data, &MetaLocation::Internal),
            Err(MetaError::NotTandem { .. })
        ));
        // The backing store grew: the size no longer matches.
        MetaStore::create(&data, &MetaLocation::Internal, 61, 1, true).unwrap();
        f.set_len(16 << 20).unwrap();
        assert!(MetaStore::open(&data, &MetaLocation::Internal).is_err());
    }

    fn sb_update(current: u64) -> MetaWrite {
        MetaWrite::Superblock(SuperblockUpdate {
            generations: Generations {
                current,
                bitmap: 0,
                history: [0, 0],
            },
            flags: MetaFlags {
                consistent: true,
                ..Default::default()
            },
        })
    }

    fn slot(f: &File, layout: &Layout, i: usize) -> Result<Superblock, MetaError> {
        let mut b = vec![0u8; MD_BLOCK as usize];
        f.read_exact_at(&mut b, layout.sb_offsets[i]).unwrap();
        decode_superblock(&b)
    }

    /// Superblock writes alternate between the two slots, each with the next sequence
    /// number, so a write never lands on the newest good copy.
    #[test]
    fn superblock_writes_alternate_slots() {
        let data = tmp("alternate");
        let _c = Cleanup(vec![data.clone()]);
        std::fs::write(&data, vec![0u8; 8 << 20]).unwrap();
        let layout = MetaStore::create(&data, &MetaLocation::Internal, 61, 1, false).unwrap();
        let f = File::open(&data).unwrap();
        // create-md writes both: numbers 0 and 1.
        assert_eq!(slot(&f, &layout, 0).unwrap().seq, 0);
        assert_eq!(slot(&f, &layout, 1).unwrap().seq, 1);
        let (mut store, _) = MetaStore::open(&data, &MetaLocation::Internal).unwrap();
        for n in 2..8u64 {
            store.write(&sb_update(100 + n)).unwrap();
            let written = slot(&f, &layout, (n % 2) as usize).unwrap();
            assert_eq!((written.seq, written.generations.current), (n, 100 + n));
            // The other slot still holds the previous superblock.
            let other = slot(&f, &layout, ((n + 1) % 2) as usize).unwrap();
            assert_eq!(other.seq, n - 1);
        }
    }

    /// A torn superblock write (damaged bytes in the slot written last) falls back to
    /// the other slot: attach succeeds with the previous content, and the next write
    /// goes to the damaged slot again, not over the good one. Both slots damaged is
    /// refused with the checksum error.
    #[test]
    fn a_torn_superblock_falls_back_to_the_other_slot() {
        let data = tmp("torn");
        let ext = tmp("torn-ext");
        let _c = Cleanup(vec![data.clone(), ext.clone()]);
        std::fs::write(&data, vec![0u8; 8 << 20]).unwrap();
        for loc in [MetaLocation::Internal, MetaLocation::External(ext.clone())] {
            let layout = MetaStore::create(&data, &loc, 61, 1, true).unwrap();
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(if loc == MetaLocation::Internal {
                    &data
                } else {
                    &ext
                })
                .unwrap();
            let (mut store, _) = MetaStore::open(&data, &loc).unwrap();
            store.write(&sb_update(500)).unwrap(); // seq 2, slot 0
            store.write(&sb_update(600)).unwrap(); // seq 3, slot 1: the newest
            // Tear slot 1: its second half never made it.
            f.write_all_at(&[0u8; 2048], layout.sb_offsets[1] + 2048)
                .unwrap();
            let (mut store, st) = MetaStore::open(&data, &loc).unwrap();
            assert_eq!(st.generations.current, 500, "{loc:?}: the older content");
            // The next write repairs slot 1 and leaves slot 0 alone.
            store.write(&sb_update(700)).unwrap();
            assert_eq!(slot(&f, &layout, 0).unwrap().generations.current, 500);
            assert_eq!(slot(&f, &layout, 1).unwrap().seq, 3);
            let (_, st) = MetaStore::open(&data, &loc).unwrap();
            assert_eq!(st.generations.current, 700);
            // Both slots damaged: refused, with the checksum error.
            for at in layout.sb_offsets {
                f.write_all_at(&[0xff; 16], at + 32).unwrap();
            }
            let e = MetaStore::open(&data, &loc).unwrap_err();
            assert!(matches!(e, MetaError::BadChecksum { .. }), "{loc:?}: {e}");
            assert!(e.to_string().contains("superblock"), "{e}");
        }
    }

    /// Version 1 metadata (one superblock, at the end) is refused with a message that
    /// says what to do, not read as garbage.
    #[test]
    fn a_version_1_superblock_is_refused_with_a_clear_message() {
        let data = tmp("v1");
        let _c = Cleanup(vec![data.clone()]);
        std::fs::write(&data, vec![0u8; 8 << 20]).unwrap();
        let layout = MetaStore::create(&data, &MetaLocation::Internal, 61, 1, false).unwrap();
        let f = OpenOptions::new().write(true).open(&data).unwrap();
        // What version 1 left: its superblock in the last block, its activity log before.
        let mut v1 = encode_superblock(&Superblock {
            seq: 0,
            node_id: 1,
            size_bytes: layout.size_bytes,
            generations: Generations::just_created(),
            flags: MetaFlags::default(),
            al_extents: 61,
            bitmap_blocks: layout.bitmap_blocks as u32,
        });
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&v1[..4092]);
        v1[4092..].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&v1, layout.sb_offsets[1]).unwrap();
        f.write_all_at(&[0u8; MD_BLOCK as usize], layout.sb_offsets[0])
            .unwrap();
        let e = MetaStore::open(&data, &MetaLocation::Internal).unwrap_err();
        assert!(matches!(e, MetaError::UnsupportedVersion(1)), "{e}");
        assert!(e.to_string().contains("create-md --force"), "{e}");
    }

    #[test]
    fn random_bytes_never_panic_the_reader() {
        let mut s: u64 = 0x1234_5678;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let sb = encode_superblock(&Superblock {
            seq: 0,
            node_id: 1,
            size_bytes: 1 << 20,
            generations: Generations::just_created(),
            flags: MetaFlags::default(),
            al_extents: 7,
            bitmap_blocks: 1,
        });
        let al = encode_al_block(&AlTransaction {
            number: 3,
            extents: vec![1, 2, 3],
        });
        let bm = encode_bitmap_block(0, &[1, 2, 3]);
        for round in 0..3000 {
            let mut blocks: Vec<Vec<u8>> = [&sb, &al, &bm]
                .iter()
                .map(|b| {
                    let mut b = (*b).clone();
                    if round % 2 == 0 {
                        for x in b.iter_mut() {
                            *x = next() as u8;
                        }
                    } else {
                        for _ in 0..(1 + next() % 8) {
                            let i = (next() % MD_BLOCK) as usize;
                            b[i] = next() as u8;
                        }
                    }
                    b
                })
                .collect();
            // Sometimes fix the checksums so the field checks run.
            if round % 3 == 0 {
                let c = crc32c::crc32c(&blocks[0][..4092]);
                blocks[0][4092..].copy_from_slice(&c.to_le_bytes());
                let c = crc32c::crc32c(&blocks[1][..4092]);
                blocks[1][4092..].copy_from_slice(&c.to_le_bytes());
            }
            let _ = decode_superblock(&blocks[0]);
            let _ = decode_al_block(&blocks[1]);
            let _ = decode_bitmap_block(&blocks[2], 0);
            let layout = Layout::external(1 << 20).unwrap();
            let _ = read_meta(&layout, |off, len| {
                let i = ((off / MD_BLOCK) as usize).min(2);
                Ok(blocks[i][..len.min(blocks[i].len())].to_vec())
            });
        }
    }
}
