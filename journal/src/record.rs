//! The record format and the hash chain: how one record is laid out in
//! bytes, how its hash is computed, and how the chain starts.
//!
//! The format (version 1, little-endian), which verification reads without
//! parsing any payload:
//!
//! ```text
//! version u8 | kind u8 | seq u64 | unix_millis u64 | prev_hash [32]
//! | blob_count u16 | blob_hash [32] * blob_count | payload_len u32 | payload
//! | hash [32] = BLAKE3(session_id u64 | everything before the hash)
//! ```
//!
//! The first record of session `S` chains to `BLAKE3("longrun-journal-genesis"
//! | S as u64)`. A record's hash covers its session, so a record moved to
//! another session no longer matches. Journals written in this format by
//! earlier releases open and verify unchanged (a fixture in the tests holds
//! one); a new version number is needed for any change to these bytes.

use std::time::{SystemTime, UNIX_EPOCH};

/// The format version every record written now carries.
pub const FORMAT_VERSION: u8 = 1;
const HASH_LEN: usize = 32;
const FIXED_HEADER: usize = 1 + 1 + 8 + 8 + HASH_LEN + 2;

/// A session's identifier, unique within one journal.
pub type SessionId = u64;

/// A BLAKE3 hash.
pub type Hash = [u8; HASH_LEN];

/// What a record is about. The number is its byte in the format; the name
/// ([`RecordKind::as_str`]) is what exports and APIs show. Both are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RecordKind {
    SessionCreated = 1,
    ModelRequest = 2,
    ModelResponse = 3,
    ToolIntent = 4,
    ToolResult = 5,
    PolicyDecision = 6,
    BudgetEvent = 7,
    ApprovalAsked = 8,
    ApprovalGiven = 9,
    Compaction = 10,
    Error = 11,
    SessionEnded = 12,
    /// A person's message to the model, added while the session runs.
    UserMessage = 13,
    /// A person paused or resumed the session.
    Control = 14,
    /// A new session was forked from this one (`longrun replay fork`): the
    /// parent's side of the link (the child's first record holds the other).
    Forked = 15,
    /// The session went on under another policy than the one recorded
    /// before (a host resumed it with a changed policy file).
    PolicyChanged = 16,
    /// A call failed exactly as it had failed before (same tool, same
    /// arguments, same error), and the model was told so.
    RepeatedFailure = 17,
    /// A host took the session's lease in a shared store and writes it from
    /// here on.
    LeaseTaken = 18,
    /// The session started a child session (the parent's side of the link).
    ChildStarted = 19,
    /// A child session of this one ended, or stopped: what it spent.
    ChildEnded = 20,
    /// Heavy mode: which of the session's trajectories (child sessions on
    /// its goal) was chosen, and how, with the changes its workspace copy
    /// holds and whether they are to be applied: the intent, durable
    /// before any real file is touched.
    TrajectoryChosen = 21,
    /// Heavy mode: the chosen trajectory's changes were applied to the real
    /// mounts (each change, or the conflict that kept it out).
    ChangesApplied = 22,
}

impl RecordKind {
    pub const ALL: [RecordKind; 22] = [
        RecordKind::SessionCreated,
        RecordKind::ModelRequest,
        RecordKind::ModelResponse,
        RecordKind::ToolIntent,
        RecordKind::ToolResult,
        RecordKind::PolicyDecision,
        RecordKind::BudgetEvent,
        RecordKind::ApprovalAsked,
        RecordKind::ApprovalGiven,
        RecordKind::Compaction,
        RecordKind::Error,
        RecordKind::SessionEnded,
        RecordKind::UserMessage,
        RecordKind::Control,
        RecordKind::Forked,
        RecordKind::PolicyChanged,
        RecordKind::RepeatedFailure,
        RecordKind::LeaseTaken,
        RecordKind::ChildStarted,
        RecordKind::ChildEnded,
        RecordKind::TrajectoryChosen,
        RecordKind::ChangesApplied,
    ];

    /// The kind's name in exports and APIs (`snake_case`), stable.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::SessionCreated => "session_created",
            RecordKind::ModelRequest => "model_request",
            RecordKind::ModelResponse => "model_response",
            RecordKind::ToolIntent => "tool_intent",
            RecordKind::ToolResult => "tool_result",
            RecordKind::PolicyDecision => "policy_decision",
            RecordKind::BudgetEvent => "budget_event",
            RecordKind::ApprovalAsked => "approval_asked",
            RecordKind::ApprovalGiven => "approval_given",
            RecordKind::Compaction => "compaction",
            RecordKind::Error => "error",
            RecordKind::SessionEnded => "session_ended",
            RecordKind::UserMessage => "user_message",
            RecordKind::Control => "control",
            RecordKind::Forked => "forked",
            RecordKind::PolicyChanged => "policy_changed",
            RecordKind::RepeatedFailure => "repeated_failure",
            RecordKind::LeaseTaken => "lease_taken",
            RecordKind::ChildStarted => "child_started",
            RecordKind::ChildEnded => "child_ended",
            RecordKind::TrajectoryChosen => "trajectory_chosen",
            RecordKind::ChangesApplied => "changes_applied",
        }
    }

    /// The kind [`RecordKind::as_str`] names.
    pub fn from_name(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn from_u8(v: u8) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| *k as u8 == v)
    }
}

/// One record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub session: SessionId,
    pub seq: u64,
    pub unix_millis: u64,
    pub kind: RecordKind,
    pub prev_hash: Hash,
    pub blobs: Vec<Hash>,
    pub payload: Vec<u8>,
    pub hash: Hash,
}

impl Record {
    /// The bytes this record takes in the journal (before storage overhead).
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER + self.blobs.len() * HASH_LEN + 4 + self.payload.len() + HASH_LEN
    }
}

/// Where a new record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub hash: Hash,
}

/// Why a record could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("more than 65535 blobs in one record")]
    TooManyBlobs,
    #[error("payload over 4 GiB: store it as a blob")]
    PayloadTooLarge,
}

/// The hash session `session`'s first record chains to.
pub fn genesis(session: SessionId) -> Hash {
    *blake3::hash(
        &[
            b"longrun-journal-genesis".as_slice(),
            &session.to_le_bytes(),
        ]
        .concat(),
    )
    .as_bytes()
}

fn hash_record(session: SessionId, body: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&session.to_le_bytes());
    h.update(body);
    *h.finalize().as_bytes()
}

/// The bytes of a new record, and its hash.
pub fn encode(
    session: SessionId,
    seq: u64,
    kind: RecordKind,
    prev_hash: &Hash,
    blobs: &[Hash],
    payload: &[u8],
) -> Result<(Vec<u8>, Hash), EncodeError> {
    let unix_millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let blob_count = u16::try_from(blobs.len()).map_err(|_| EncodeError::TooManyBlobs)?;
    let payload_len = u32::try_from(payload.len()).map_err(|_| EncodeError::PayloadTooLarge)?;
    let mut bytes =
        Vec::with_capacity(FIXED_HEADER + blobs.len() * HASH_LEN + 4 + payload.len() + HASH_LEN);
    bytes.push(FORMAT_VERSION);
    bytes.push(kind as u8);
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&unix_millis.to_le_bytes());
    bytes.extend_from_slice(prev_hash);
    bytes.extend_from_slice(&blob_count.to_le_bytes());
    for blob in blobs {
        bytes.extend_from_slice(blob);
    }
    bytes.extend_from_slice(&payload_len.to_le_bytes());
    bytes.extend_from_slice(payload);
    let hash = hash_record(session, &bytes);
    bytes.extend_from_slice(&hash);
    Ok((bytes, hash))
}

/// Decode a record of `session` and check its own hash.
pub fn decode(session: SessionId, bytes: &[u8]) -> Result<Record, String> {
    let mut record = decode_unchecked(bytes)?;
    record.session = session;
    if !hash_matches(session, bytes) {
        return Err("its contents do not match its hash".into());
    }
    Ok(record)
}

/// Whether a record's stored hash is the hash of its bytes (as a record of
/// `session`). False for bytes too short to hold a hash.
pub fn hash_matches(session: SessionId, bytes: &[u8]) -> bool {
    match bytes.len().checked_sub(HASH_LEN) {
        Some(body) => hash_record(session, &bytes[..body]) == bytes[body..],
        None => false,
    }
}

/// Decode a record's fields without checking its hash (its session is left
/// 0: the store's key says which it is).
pub fn decode_unchecked(bytes: &[u8]) -> Result<Record, String> {
    let short = || format!("truncated ({} bytes)", bytes.len());
    if bytes.len() < FIXED_HEADER + 4 + HASH_LEN {
        return Err(short());
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(format!("unknown format version {}", bytes[0]));
    }
    let kind =
        RecordKind::from_u8(bytes[1]).ok_or_else(|| format!("unknown record kind {}", bytes[1]))?;
    let u64_at = |at: usize| -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let seq = u64_at(2);
    let unix_millis = u64_at(10);
    let mut prev_hash = [0u8; HASH_LEN];
    prev_hash.copy_from_slice(&bytes[18..18 + HASH_LEN]);
    let blob_count = u16::from_le_bytes([bytes[50], bytes[51]]) as usize;
    let mut at = FIXED_HEADER;
    let blobs_end = at + blob_count * HASH_LEN;
    if bytes.len() < blobs_end + 4 + HASH_LEN {
        return Err(short());
    }
    let blobs = bytes[at..blobs_end]
        .chunks_exact(HASH_LEN)
        .map(|c| {
            let mut h = [0u8; HASH_LEN];
            h.copy_from_slice(c);
            h
        })
        .collect();
    at = blobs_end;
    let payload_len =
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
    at += 4;
    if bytes.len() != at + payload_len + HASH_LEN {
        return Err(format!(
            "its length {} does not match its payload length {payload_len}",
            bytes.len()
        ));
    }
    let payload = bytes[at..at + payload_len].to_vec();
    let mut hash = [0u8; HASH_LEN];
    hash.copy_from_slice(&bytes[at + payload_len..]);
    Ok(Record {
        session: 0,
        seq,
        unix_millis,
        kind,
        prev_hash,
        blobs,
        payload,
        hash,
    })
}

/// A hash as lowercase hex, as records and exports write it.
pub fn hex(hash: &Hash) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}

/// The hash that [`hex`] wrote, if `text` is one.
pub fn parse_hex(text: &str) -> Option<Hash> {
    blake3::Hash::from_hex(text).ok().map(|h| *h.as_bytes())
}

/// The BLAKE3 hash of `bytes` (a blob's address).
pub fn hash_bytes(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_byte_and_its_name() {
        for kind in RecordKind::ALL {
            assert_eq!(RecordKind::from_u8(kind as u8), Some(kind));
            assert_eq!(RecordKind::from_name(kind.as_str()), Some(kind));
            let (bytes, hash) = encode(7, 3, kind, &genesis(7), &[[1; 32]], b"payload").unwrap();
            let record = decode(7, &bytes).unwrap();
            assert_eq!(
                (record.kind, record.seq, record.hash),
                (kind, 3, hash),
                "{kind:?}"
            );
            assert_eq!(record.payload, b"payload");
            assert_eq!(record.blobs, vec![[1; 32]]);
            assert_eq!(record.encoded_len(), bytes.len());
        }
    }

    #[test]
    fn a_record_read_as_another_sessions_does_not_match_its_hash() {
        let (bytes, _) = encode(1, 0, RecordKind::Error, &genesis(1), &[], b"x").unwrap();
        assert!(decode(1, &bytes).is_ok());
        assert!(decode(2, &bytes).is_err());
    }

    #[test]
    fn short_or_unknown_bytes_are_errors_not_panics() {
        for len in 0..100 {
            assert!(decode(1, &vec![1u8; len]).is_err());
        }
        let (mut bytes, _) = encode(1, 0, RecordKind::Error, &genesis(1), &[], b"x").unwrap();
        bytes[1] = 200;
        assert!(
            decode_unchecked(&bytes)
                .unwrap_err()
                .contains("unknown record kind")
        );
        bytes[0] = 9;
        assert!(decode_unchecked(&bytes).unwrap_err().contains("version"));
    }
}
