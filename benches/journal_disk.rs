//! `journal_disk`: the bytes a long session's journal takes on disk against
//! the bytes it journals. 100,000 agent steps (with `--bench`; 2,000 in a
//! test run), each as the agent writes it: the model request with the last
//! tool output in its new messages, the response, the call's intent, and
//! its result with a distinct 2 KB output in a blob; one durable commit a
//! step. Prints both sizes and their ratio (target: at most 1.5x).

use std::time::Instant;

use longrun_host::journal::payload::{
    Message, ModelResponse, NewMessages, Payload, Role, ToolCall, ToolIntent, ToolResult, Usage,
};
use longrun_host::journal::{Journal, hex};

fn output(step: u64) -> String {
    // Distinct text that does not compress to nothing: a step's digest, hex.
    let mut out = String::with_capacity(2048);
    let mut h = blake3::hash(&step.to_le_bytes());
    while out.len() < 2048 {
        out.push_str(&h.to_hex());
        h = blake3::hash(h.as_bytes());
    }
    out.truncate(2048);
    out
}

fn main() {
    let steps: u64 = if std::env::args().any(|a| a == "--bench") {
        100_000
    } else {
        2_000
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).expect("journal");
    let mut writer = journal.create_session().expect("session");
    let mut journaled = 0u64;
    let started = Instant::now();
    runtime.block_on(async {
        let mut last_output = String::new();
        for step in 0..steps {
            let call = ToolCall {
                id: format!("call_{step}_0"),
                name: "fs_read".into(),
                arguments: format!(r#"{{"path":"/workspace/file-{step}.txt"}}"#),
            };
            let out = output(step);
            let blob = journal.put_blob(out.as_bytes()).expect("blob");
            journaled += out.len() as u64;
            let records = [
                Payload::ModelRequest(NewMessages(vec![Message::tool_result(
                    format!("call_{}_0", step.saturating_sub(1)),
                    std::mem::take(&mut last_output),
                )])),
                Payload::ModelResponse(ModelResponse {
                    message: Message {
                        reasoning_content: Some("I read the next file.".into()),
                        tool_calls: vec![call.clone()],
                        ..Message::text(Role::Assistant, "")
                    },
                    usage: Usage {
                        input_tokens: 3000,
                        output_tokens: 40,
                        ..Usage::default()
                    },
                }),
                Payload::ToolIntent(ToolIntent {
                    call_id: call.id.clone(),
                    tool: call.name.clone(),
                    arguments: call.arguments.clone(),
                    idempotent: true,
                }),
            ];
            // A record's header, chain hashes and lengths: 88 bytes.
            for payload in &records {
                writer.append_payload(payload, &[]).expect("append");
                journaled += payload.encode().len() as u64 + 88;
            }
            let result = Payload::ToolResult(ToolResult {
                call_id: call.id,
                output: None,
                output_blob: Some(hex(&blob)),
                error: None,
                elapsed_ms: 1,
                view_bytes: None,
            });
            journaled += result.encode().len() as u64 + 88 + 32;
            writer
                .append_payload_durable(&result, &[blob])
                .await
                .expect("append");
            last_output = out;
        }
    });
    let elapsed = started.elapsed();
    drop(writer);
    let on_disk = journal.size_on_disk().expect("size");
    println!(
        "journal_disk: {steps} steps in {:.1} s: journaled {journaled} bytes (records and blobs), on disk {on_disk} bytes: ratio {:.2}x (target: at most 1.5x)",
        elapsed.as_secs_f64(),
        on_disk as f64 / journaled as f64
    );
}
