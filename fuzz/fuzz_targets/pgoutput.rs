//! Fuzz the pgoutput decoder and the outbox mapping with arbitrary bytes.
//!
//! Run: `cargo +nightly fuzz run pgoutput` (from the repository root).
//! Any panic, overflow (debug assertions are on) or ASan report is a bug:
//! decoding must turn every input into a value or an error.

#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use outbox_relay::decode::{
    fixtures, parse, Message, OutboxMapping, RelationCache, ResolvedRelation,
};

/// OID of the fixed outbox relation inserts are recorded against.
const OUTBOX_OID: u32 = 16400;

fn default_outbox() -> &'static (OutboxMapping, ResolvedRelation) {
    static CELL: OnceLock<(OutboxMapping, ResolvedRelation)> = OnceLock::new();
    CELL.get_or_init(|| {
        let mapping = OutboxMapping::default();
        let relation = Arc::new(fixtures::outbox_relation(OUTBOX_OID));
        let resolved = mapping
            .resolve(&relation)
            .expect("fixture maps")
            .expect("fixture is the outbox table");
        (mapping, resolved)
    })
}

fuzz_target!(|data: &[u8]| {
    let (mapping, outbox) = default_outbox();
    let data = Bytes::copy_from_slice(data);
    match parse(&data) {
        Ok(Message::Relation(relation)) => {
            let mut cache = RelationCache::new();
            let relation = cache.insert(relation);
            if let Ok(Some(resolved)) = mapping.resolve(&relation) {
                assert!(Arc::ptr_eq(resolved.relation(), &relation));
            }
        }
        Ok(Message::Insert { tuple, .. }) => {
            if let Ok(record) = outbox.record(&tuple) {
                // Zero-copy: the payload is a slice of the input.
                assert!(
                    data.as_ptr_range().contains(&record.payload.as_ptr())
                        || record.payload.is_empty()
                );
            }
        }
        Ok(_) | Err(_) => {}
    }
});
