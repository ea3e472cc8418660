//! The JSON Lines export of a session's records (`show --jsonl`), a stable
//! format: one record per line, an object with these fields, in this order.
//!
//! | field | type | what it is |
//! | --- | --- | --- |
//! | `session` | integer | the session's id |
//! | `seq` | integer | the record's sequence number, from 0 |
//! | `unix_millis` | integer | when it was written |
//! | `kind` | string | `session_created`, `model_request`, `model_response`, `tool_intent`, `tool_result`, `policy_decision`, `budget_event`, `approval_asked`, `approval_given`, `compaction`, `error`, `session_ended`, `user_message`, `control`, `forked` |
//! | `prev_hash` | hex string | the hash of the record before it (for record 0, the session's genesis hash) |
//! | `hash` | hex string | BLAKE3 over the session id and the record's encoding |
//! | `blobs` | array of hex strings | the blobs it references |
//! | `payload` | JSON | the payload, when its bytes are exactly the compact JSON of this value |
//! | `payload_text` | string | otherwise the payload's exact text, when it is UTF-8 |
//! | `payload_hex` | hex string | otherwise the payload's bytes |
//! | `blob_contents` | array, only with `--blobs` | `{"hash", "text"}` or `{"hash", "hex"}` per blob |
//!
//! Exactly one of the three payload fields is present. Every field but
//! `blob_contents` comes straight from the record, so [`parse_line`] gives
//! back the very record, hash included; a reader can recompute each hash.

use longrun_host::journal::{Hash, Journal, Record, RecordKind, hex, parse_hex};
use serde::{Deserialize, Serialize};

use crate::ReplayError;

/// One line of the export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedRecord {
    pub session: u64,
    pub seq: u64,
    pub unix_millis: u64,
    pub kind: String,
    pub prev_hash: String,
    pub hash: String,
    pub blobs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_contents: Option<Vec<BlobContents>>,
}

/// A blob's bytes, as text when they are UTF-8.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobContents {
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
}

/// A record as an export line's object; with `journal`, its blobs' bytes
/// are included (each checked against its hash).
pub fn export(record: &Record, journal: Option<&Journal>) -> Result<ExportedRecord, ReplayError> {
    let mut exported = ExportedRecord {
        session: record.session,
        seq: record.seq,
        unix_millis: record.unix_millis,
        kind: record.kind.as_str().to_owned(),
        prev_hash: hex(&record.prev_hash),
        hash: hex(&record.hash),
        blobs: record.blobs.iter().map(hex).collect(),
        payload: None,
        payload_text: None,
        payload_hex: None,
        blob_contents: None,
    };
    // The JSON value only when it writes back to the same bytes, so that
    // the export never changes what the record holds.
    match serde_json::from_slice::<serde_json::Value>(&record.payload) {
        Ok(value) if serde_json::to_vec(&value).ok().as_ref() == Some(&record.payload) => {
            exported.payload = Some(value);
        }
        _ => match std::str::from_utf8(&record.payload) {
            Ok(text) => exported.payload_text = Some(text.to_owned()),
            Err(_) => exported.payload_hex = Some(to_hex(&record.payload)),
        },
    }
    if let Some(journal) = journal {
        let mut contents = Vec::new();
        for blob in &record.blobs {
            let bytes = journal.blob(blob)?;
            contents.push(match String::from_utf8(bytes) {
                Ok(text) => BlobContents {
                    hash: hex(blob),
                    text: Some(text),
                    hex: None,
                },
                Err(e) => BlobContents {
                    hash: hex(blob),
                    text: None,
                    hex: Some(to_hex(e.as_bytes())),
                },
            });
        }
        exported.blob_contents = Some(contents);
    }
    Ok(exported)
}

/// A record as one export line (without the newline).
pub fn to_line(record: &Record, journal: Option<&Journal>) -> Result<String, ReplayError> {
    let exported = export(record, journal)?;
    serde_json::to_string(&exported).map_err(|e| ReplayError::Record {
        session: record.session,
        seq: record.seq,
        why: e.to_string(),
    })
}

/// Why an export line cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("not an export line: {0}")]
pub struct ParseError(String);

/// The record an export line holds.
pub fn parse_line(line: &str) -> Result<Record, ParseError> {
    let exported: ExportedRecord =
        serde_json::from_str(line).map_err(|e| ParseError(e.to_string()))?;
    let hash = |field: &str, text: &str| -> Result<Hash, ParseError> {
        parse_hex(text).ok_or_else(|| ParseError(format!("{field} {text:?} is not a hash")))
    };
    let payload = match (
        exported.payload,
        exported.payload_text,
        exported.payload_hex,
    ) {
        (Some(value), None, None) => {
            serde_json::to_vec(&value).map_err(|e| ParseError(e.to_string()))?
        }
        (None, Some(text), None) => text.into_bytes(),
        (None, None, Some(hex)) => {
            from_hex(&hex).ok_or_else(|| ParseError("bad payload_hex".into()))?
        }
        _ => {
            return Err(ParseError(
                "exactly one of payload, payload_text and payload_hex is needed".into(),
            ));
        }
    };
    Ok(Record {
        session: exported.session,
        seq: exported.seq,
        unix_millis: exported.unix_millis,
        kind: RecordKind::from_name(&exported.kind)
            .ok_or_else(|| ParseError(format!("unknown kind {:?}", exported.kind)))?,
        prev_hash: hash("prev_hash", &exported.prev_hash)?,
        blobs: exported
            .blobs
            .iter()
            .map(|b| hash("blob", b))
            .collect::<Result<_, _>>()?,
        payload,
        hash: hash("hash", &exported.hash)?,
    })
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Record {
        Record {
            session: 7,
            seq: 3,
            unix_millis: 1_700_000_000_000,
            kind: RecordKind::ToolResult,
            prev_hash: [1; 32],
            blobs: vec![[2; 32]],
            payload: payload.to_vec(),
            hash: [3; 32],
        }
    }

    #[test]
    fn every_kind_of_payload_reads_back_byte_for_byte() {
        for payload in [
            br#"{"call_id":"c1","output":"hi","elapsed_ms":3}"#.as_slice(),
            // JSON, but not in compact form: kept as text.
            br#"{ "spaced" : 1 }"#.as_slice(),
            b"not json at all",
            &[0xff, 0x00, 0x10],
        ] {
            let original = record(payload);
            let line = to_line(&original, None).unwrap();
            assert_eq!(parse_line(&line).unwrap(), original, "{line}");
        }
    }

    #[test]
    fn a_line_with_two_payload_fields_is_refused() {
        let mut line: serde_json::Value =
            serde_json::from_str(&to_line(&record(b"{}"), None).unwrap()).unwrap();
        line["payload_text"] = "{}".into();
        assert!(parse_line(&line.to_string()).is_err());
    }
}
