//! The scripted model: plays its script by step, reports usage like a real
//! model, fails and dawdles on request, summarises for compaction, and
//! refuses a broken script with its line.

use longrun_host::model::{
    Message, Model, ModelError, ModelRequest, Purpose, Role, ScriptedModel, Usage,
};

const SCRIPT: &str = r#"
# a two-turn session
{"reasoning_content": "Look first.", "tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}]}
{"content": "It holds hello.txt.", "usage": {"input_tokens": 120, "output_tokens": 9}}
"#;

fn request(messages: Vec<Message>) -> ModelRequest {
    at_step(messages, 0)
}

fn at_step(messages: Vec<Message>, step: u64) -> ModelRequest {
    ModelRequest {
        messages,
        tools: vec![],
        max_output_tokens: 1000,
        step,
        purpose: Purpose::Step,
    }
}

#[tokio::test]
async fn the_scripted_model_answers_by_step_and_so_is_the_same_after_a_resume() {
    let model = ScriptedModel::parse(SCRIPT, "script.jsonl").unwrap();
    assert_eq!(model.len(), 2);
    let goal = Message::text(Role::User, "What is in the workspace?");
    let first = model.complete(&request(vec![goal.clone()])).await.unwrap();
    let call = &first.message.tool_calls[0];
    assert_eq!(
        (
            call.id.as_str(),
            call.name.as_str(),
            call.arguments.as_str()
        ),
        ("call_0_0", "fs_list", r#"{"path":"/workspace"}"#)
    );
    assert_eq!(
        first.message.reasoning_content.as_deref(),
        Some("Look first.")
    );

    // Asked the same conversation again (a resumed session), it answers the same.
    assert_eq!(
        model.complete(&request(vec![goal.clone()])).await.unwrap(),
        first
    );

    let conversation = vec![
        goal,
        first.message.clone(),
        Message::tool_result("call_0_0", r#"{"entries":[]}"#),
    ];
    let second = model.complete(&at_step(conversation, 1)).await.unwrap();
    assert_eq!(
        second.message.content.as_deref(),
        Some("It holds hello.txt.")
    );
    assert!(second.message.tool_calls.is_empty());
    assert_eq!(
        second.usage,
        Usage {
            input_tokens: 120,
            output_tokens: 9,
            cached_input_tokens: 0,
            reasoning_tokens: 0
        }
    );
}

#[tokio::test]
async fn usage_is_estimated_when_the_script_gives_none() {
    let model = ScriptedModel::parse(r#"{"content": "abcdefgh"}"#, "s").unwrap();
    let response = model
        .complete(&request(vec![Message::text(Role::User, "0123456789ab")]))
        .await
        .unwrap();
    // A quarter of the characters, plus 4 tokens of framing per message.
    assert_eq!(
        (response.usage.input_tokens, response.usage.output_tokens),
        (3 + 4, 2 + 4)
    );
}

#[tokio::test]
async fn a_response_can_fail_transiently_a_set_number_of_times() {
    let model = ScriptedModel::parse(r#"{"content": "ok", "fail_times": 2}"#, "s").unwrap();
    let req = request(vec![Message::text(Role::User, "hi")]);
    assert!(matches!(
        model.complete(&req).await,
        Err(ModelError::Transient { .. })
    ));
    assert!(matches!(
        model.complete(&req).await,
        Err(ModelError::Transient { .. })
    ));
    assert_eq!(
        model
            .complete(&req)
            .await
            .unwrap()
            .message
            .content
            .as_deref(),
        Some("ok")
    );
}

#[tokio::test]
async fn asking_past_the_end_of_the_script_is_a_fatal_error() {
    let model = ScriptedModel::parse(r#"{"content": "only"}"#, "s").unwrap();
    let messages = vec![Message::text(Role::User, "hi")];
    model.complete(&request(messages.clone())).await.unwrap();
    assert!(matches!(
        model.complete(&at_step(messages, 1)).await,
        Err(ModelError::Fatal(_))
    ));
}

#[tokio::test]
async fn a_repeated_line_answers_many_steps_with_the_step_number_in_its_arguments() {
    let model = ScriptedModel::parse(
        concat!(
            r#"{"tool_calls": [{"name": "echo", "arguments": {"text": "step {step}", "n": "{step}"}}], "repeat": 3}"#,
            "\n",
            r#"{"content": "done"}"#
        ),
        "s",
    )
    .unwrap();
    assert_eq!(model.len(), 4);
    let goal = vec![Message::text(Role::User, "hi")];
    for step in 0..3 {
        let response = model.complete(&at_step(goal.clone(), step)).await.unwrap();
        let call = &response.message.tool_calls[0];
        assert_eq!(call.id, format!("call_{step}_0"));
        // Compared as JSON: key order is serde_json's (insertion order where
        // another crate of the build enables `preserve_order`).
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&call.arguments).unwrap(),
            serde_json::json!({"n": step, "text": format!("step {step}")})
        );
    }
    let last = model.complete(&at_step(goal, 3)).await.unwrap();
    assert_eq!(last.message.content.as_deref(), Some("done"));
}

#[tokio::test]
async fn a_delayed_line_takes_its_time() {
    let model = ScriptedModel::parse(r#"{"content": "slow", "delay_ms": 150}"#, "s").unwrap();
    let started = std::time::Instant::now();
    model.complete(&request(vec![])).await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
}

#[tokio::test]
async fn a_compaction_request_gets_a_summary_unless_summaries_are_made_to_fail() {
    let summarize = ModelRequest {
        purpose: Purpose::Summarize,
        ..request(vec![
            Message::text(Role::System, "Summarise."),
            Message::text(Role::User, "[user] goal\n[assistant] called echo {}"),
        ])
    };
    let model = ScriptedModel::parse(r#"{"content": "step answer"}"#, "s").unwrap();
    let summary = model.complete(&summarize).await.unwrap();
    assert_eq!(
        summary.message.content.as_deref(),
        Some("Summary of 2 lines of earlier conversation.")
    );
    assert!(summary.usage.input_tokens > 0);
    // It did not use up the step's answer.
    assert_eq!(
        model
            .complete(&request(vec![]))
            .await
            .unwrap()
            .message
            .content
            .as_deref(),
        Some("step answer")
    );
    let failing = ScriptedModel::parse(r#"{"content": "x"}"#, "s")
        .unwrap()
        .failing_summaries();
    assert!(matches!(
        failing.complete(&summarize).await,
        Err(ModelError::Fatal(_))
    ));
}

#[test]
fn a_broken_script_is_refused_with_its_line() {
    let err = ScriptedModel::parse(
        "{\"content\": \"fine\"}\n\n{\"contnet\": \"typo\"}\n",
        "demo.jsonl",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.starts_with("demo.jsonl:3: unknown field `contnet`"),
        "{err}"
    );
    let err = ScriptedModel::parse("{}", "empty.jsonl")
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        "empty.jsonl:1: a response needs `content` or `tool_calls`"
    );
    let err = ScriptedModel::parse(r#"{"content": "x", "repeat": 0}"#, "zero.jsonl")
        .err()
        .unwrap()
        .to_string();
    assert_eq!(err, "zero.jsonl:1: `repeat` must be at least 1");
}

#[test]
fn a_model_spec_names_its_kind_and_what_follows() {
    use longrun_host::model::ModelSpec;
    assert_eq!(
        ModelSpec::parse("local:smollm2-135m"),
        Ok(ModelSpec::Local("smollm2-135m".into()))
    );
    assert_eq!(
        ModelSpec::parse("openai-compatible:kimi-k2.6"),
        Ok(ModelSpec::OpenAiCompatible("kimi-k2.6".into()))
    );
    assert_eq!(
        ModelSpec::parse("scripted:a/b.jsonl"),
        Ok(ModelSpec::Scripted("a/b.jsonl".into()))
    );
    assert!(
        ModelSpec::parse("kimi")
            .unwrap_err()
            .contains("write local:NAME")
    );
    assert!(
        ModelSpec::parse("local:")
            .unwrap_err()
            .contains("nothing after")
    );
}
