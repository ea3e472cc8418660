//! The engine keeps a bounded number of finished sequences' key/value
//! caches (for prompts that extend them), on the CPU as on a GPU: a long run
//! of distinct conversations does not grow the process's memory with each
//! one. (mistral.rs's eviction counted only caches on an accelerator, so on
//! the CPU every cache was kept; see vendor/mistralrs-core/LONGRUN-PATCH.md.)

use longrun_model_local::LocalModel;
use mistralrs::{RequestBuilder, TextMessageRole};

/// The process's resident memory, in MiB.
fn resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sequences_caches_are_evicted_on_the_cpu() {
    // SAFETY: this binary's only test sets it before mistral.rs starts any
    // thread that could read the environment.
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    let path = longrun_host::fetch::cached(longrun_host::fetch::DEFAULT_MODEL)
        .unwrap()
        .expect("the default model is cached: run `longrun model fetch`");
    let model = LocalModel::load("local:smollm2-135m", &path).await.unwrap();
    // ~350 tokens each: about 16 MB of key/value cache per sequence (30
    // layers, 3 key/value heads of 64, f32; more where the cache is
    // allocated in larger steps), so 18 more kept caches would add about
    // 290 MB or more between the two readings; the engine keeps 16, a number
    // reached before the first reading.
    let text: String = (0..85).map(|i| format!("item {i}, ")).collect();
    let mut after = Vec::new();
    for conversation in 0..36 {
        let request = RequestBuilder::new()
            .add_message(
                TextMessageRole::User,
                format!("Conversation {conversation}: {text}"),
            )
            .set_deterministic_sampler()
            .set_sampler_max_len(1);
        let response = model.engine().send_chat_request(request).await.unwrap();
        assert!(response.usage.prompt_tokens > 300, "{:?}", response.usage);
        if conversation == 17 || conversation == 35 {
            after.push(resident_mib());
        }
    }
    let growth = after[1].saturating_sub(after[0]);
    assert!(
        growth < 150,
        "resident memory grew by {growth} MiB over 18 more conversations ({} -> {} MiB)",
        after[0],
        after[1]
    );
}
