//! Feeds arbitrary bytes to the metadata reader as a whole external metadata file: it
//! must refuse or accept, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_disk::meta::{Layout, MD_BLOCK, MetaError, decode_al_block, decode_superblock, read_meta};

fuzz_target!(|data: &[u8]| {
    let mut block = data.to_vec();
    block.resize(MD_BLOCK as usize, 0);
    let _ = decode_superblock(&block);
    let _ = decode_al_block(&block);
    let Ok(layout) = Layout::external(64 << 20) else {
        return;
    };
    let _ = read_meta(&layout, |off, len| {
        let start = (off as usize).min(data.len());
        let end = (start + len).min(data.len());
        let mut b = data[start..end].to_vec();
        b.resize(len, 0);
        Ok::<_, MetaError>(b)
    });
});
