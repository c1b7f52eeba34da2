//! Metadata changes made while a disk is down (no node runs it), in the manner of
//! drbdmeta: the daemon uses them to answer the peer's outdate request for a disk it
//! does not run.

use std::path::Path;

use crate::core::{MetaWrite, SuperblockUpdate};
use crate::meta::{MetaError, MetaLocation, MetaStore};

/// Marks the disk's copy outdated in its superblock (durably) unless it is inconsistent
/// or outdated already; returns whether it changed anything. The mark is cleared only by
/// the resync that makes the copy whole again.
pub fn outdate(backing: &Path, meta: &MetaLocation) -> Result<bool, MetaError> {
    let (mut store, state) = MetaStore::open(backing, meta)?;
    if !state.flags.consistent || state.flags.outdated {
        return Ok(false);
    }
    let mut flags = state.flags;
    flags.outdated = true;
    store.write(&MetaWrite::Superblock(SuperblockUpdate {
        generations: state.generations,
        flags,
    }))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::DiskState;

    #[test]
    fn a_down_disk_is_outdated_in_its_superblock_and_stays_so() {
        let dir = std::env::temp_dir().join(format!("tandem-offline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let backing = dir.join("d.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        MetaStore::create(&backing, &MetaLocation::Internal, 7, 1, false).unwrap();
        // A fresh disk is inconsistent: nothing to outdate.
        assert!(!outdate(&backing, &MetaLocation::Internal).unwrap());
        let (mut store, state) = MetaStore::open(&backing, &MetaLocation::Internal).unwrap();
        let mut flags = state.flags;
        flags.consistent = true;
        store
            .write(&MetaWrite::Superblock(SuperblockUpdate {
                generations: state.generations,
                flags,
            }))
            .unwrap();
        drop(store);
        assert!(outdate(&backing, &MetaLocation::Internal).unwrap());
        assert!(!outdate(&backing, &MetaLocation::Internal).unwrap());
        let (_, state) = MetaStore::open(&backing, &MetaLocation::Internal).unwrap();
        assert!(state.flags.outdated);
        let core = crate::core::Core::new(Default::default(), state, 1, tandem_testkit::at(0));
        assert_eq!(core.disk_state(), DiskState::Outdated);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
