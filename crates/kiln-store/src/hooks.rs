//! The store's webhook records: each project's hook (provider, secret) and the deliveries it
//! received, with the requests that change them. Plain data; the SQL is in
//! `backend/hooks_body.rs`.
//!
//! A hook's secret must be readable, because verifying an HMAC needs it: the database holds
//! it sealed ([`crate::secrets`]) and the store opens it only for [`HookTarget`] (for the hook
//! route) and the answer of the call that set it.

use kiln_core::ids::{ProjectId, RunId};
use kiln_proto::{DeliveryStatus, DeliveryView, HookProvider};

use crate::error::StoreError;

/// The bytes a generated secret has (written as 64 lowercase hex digits).
const SECRET_BYTES: usize = 32;

/// A new random webhook secret: 32 bytes from the operating system, in lowercase hex.
pub fn generate_secret() -> Result<String, StoreError> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Random {
        detail: e.to_string(),
    })?;
    Ok(hex::encode(bytes))
}

/// What the hook route needs to verify a delivery to `/hooks/{hook_id}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookTarget {
    pub project: ProjectId,
    pub project_name: String,
    pub provider: HookProvider,
    /// `None`: the project has no secret yet (made before hooks existed, or by `kiln run`);
    /// every delivery is refused until one is rotated in.
    pub secret: Option<String>,
    pub archived: bool,
}

/// What [`Store::set_hook`](crate::Store::set_hook) changes; `None`/`false` keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookChange {
    pub provider: Option<HookProvider>,
    /// Draw a new hook id (the old webhook URL stops working).
    pub new_hook_id: bool,
    /// The new secret (drawn by the caller, e.g. with [`generate_secret`]).
    pub secret: Option<String>,
}

/// A project's hook after [`Store::set_hook`](crate::Store::set_hook).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookSettings {
    pub project: ProjectId,
    pub project_name: String,
    pub hook_id: String,
    pub provider: HookProvider,
    pub secret: Option<String>,
}

/// A verified delivery to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    pub project: ProjectId,
    pub provider: HookProvider,
    /// The provider's delivery id.
    pub delivery: String,
    pub event: String,
    /// `Accepted` to process it, or already `Ignored`/`Failed` (a ping, malformed JSON).
    pub status: DeliveryStatus,
    pub reason: Option<String>,
    pub payload: Vec<u8>,
    /// Recorded as claimed by this processor (see `Store::claim_delivery`): the receiver
    /// hands the delivery, payload and all, straight to its own processor, which then need
    /// not claim it or read it back. `None`: left for whoever claims it.
    pub claim: Option<DeliveryClaim>,
}

/// Who claims a delivery as it is recorded, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryClaim {
    pub owner: String,
    pub until: jiff::Timestamp,
}

/// What [`Store::record_delivery`](crate::Store::record_delivery) did.
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    /// A new delivery, recorded.
    New(DeliveryView),
    /// The project already had a delivery with this provider delivery id: that one, as it
    /// stands (nothing was written).
    Duplicate(DeliveryView),
}

/// How processing a delivery ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryOutcome {
    pub status: DeliveryStatus,
    pub reason: Option<String>,
    pub runs: Vec<RunId>,
}

/// A delivery's payload as the store keeps it: LZ4-compressed when that makes it smaller
/// (a JSON payload shrinks about 4×), else as it came. The row's `size` holds the payload's
/// own length, so a stored payload shorter than `size` is compressed, one as long is not,
/// and an empty one (no row in `delivery_payloads`) has been dropped
/// (`Store::prune_delivery_payloads`). Smaller rows are what the acknowledgement's commit
/// writes: an 8 KB push no longer spills into overflow pages.
pub(crate) fn pack_payload(payload: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if payload.is_empty() {
        return payload.into();
    }
    let packed = lz4_flex::block::compress(payload);
    if packed.len() < payload.len() {
        packed.into()
    } else {
        payload.into()
    }
}

/// A delivery's body as the intake journal packed it ([`pack_payload`]), with its own
/// length: what the receiver hands its processor, so that a backlog of deliveries waiting to
/// be processed holds a third of their bodies, and each body is packed once.
#[derive(Clone, Debug)]
pub struct PackedBody {
    stored: bytes::Bytes,
    size: i64,
}

impl PackedBody {
    /// The journal's own bytes, shared (not copied).
    pub(crate) fn new(stored: bytes::Bytes, size: i64) -> Self {
        PackedBody { stored, size }
    }

    /// The body as it came.
    pub fn unpack(&self) -> Result<Vec<u8>, StoreError> {
        match packed_size(&self.stored, self.size) {
            Some(size) => decompress_payload(&self.stored, size),
            None => Ok(self.stored.to_vec()),
        }
    }

    /// The body as [`PackedJson`](crate::PackedJson) keeps JSON text, without packing it
    /// again; `None` when LZ4 did not shrink it (it is kept as it came).
    pub fn json(&self) -> Option<crate::PackedJson> {
        let size = packed_size(&self.stored, self.size)?;
        Some(crate::PackedJson::from_block(&self.stored, size))
    }
}

/// The payload [`pack_payload`] stored, from the stored bytes and the row's `size`.
pub(crate) fn unpack_payload(stored: Vec<u8>, size: i64) -> Result<Vec<u8>, StoreError> {
    match packed_size(&stored, size) {
        Some(size) => decompress_payload(&stored, size),
        None => Ok(stored),
    }
}

/// The payload's own length when `stored` is compressed ([`pack_payload`]): shorter than
/// `size` and not emptied. `None`: stored as it came (or dropped).
fn packed_size(stored: &[u8], size: i64) -> Option<usize> {
    let size = usize::try_from(size).ok()?;
    (!stored.is_empty() && stored.len() < size).then_some(size)
}

fn decompress_payload(stored: &[u8], size: usize) -> Result<Vec<u8>, StoreError> {
    lz4_flex::block::decompress(stored, size).map_err(|e| StoreError::Decode {
        column: "payload",
        table: "deliveries",
        detail: format!("a compressed payload of {size} bytes does not decompress: {e}"),
    })
}

/// The longest `reason` kept, in bytes (a workflow error can be long).
pub(crate) const MAX_REASON: usize = 4096;

/// `reason` cut to [`MAX_REASON`] bytes on a character boundary.
pub(crate) fn bounded_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hex_and_differ() {
        let a = generate_secret().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, generate_secret().unwrap());
    }

    #[test]
    fn payloads_are_stored_compressed_only_when_that_is_smaller() {
        let json = br#"{"ref":"refs/heads/main","commits":[{"id":"1"},{"id":"2"},{"id":"3"}],"repository":{"full_name":"octo/hello","name":"hello"}}"#.repeat(40);
        let packed = pack_payload(&json);
        assert!(
            packed.len() < json.len() / 3,
            "{} of {}",
            packed.len(),
            json.len()
        );
        let size = i64::try_from(json.len()).unwrap();
        assert_eq!(unpack_payload(packed.into_owned(), size).unwrap(), json);

        // Incompressible (and short) bodies are kept as they came, and read back as such.
        for raw in [b"{}".as_slice(), b"not json \xff\x00", b""] {
            let packed = pack_payload(raw);
            assert_eq!(packed.as_ref(), raw);
            let size = i64::try_from(raw.len()).unwrap();
            assert_eq!(unpack_payload(packed.into_owned(), size).unwrap(), raw);
        }
        // A dropped payload reads back empty, whatever its size was.
        assert!(unpack_payload(Vec::new(), 8000).unwrap().is_empty());
        // Bytes that cannot be a compressed payload of that size are an error, not garbage.
        assert!(matches!(
            unpack_payload(vec![0xff; 10], 8000),
            Err(StoreError::Decode {
                column: "payload",
                ..
            })
        ));
    }

    #[test]
    fn reasons_are_bounded_on_a_char_boundary() {
        let long = "é".repeat(MAX_REASON);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MAX_REASON);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(bounded_reason("short"), "short");
    }
}
