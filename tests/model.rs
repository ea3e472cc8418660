//! The scripted model: plays its script by conversation turn, reports
//! usage like a real model, fails on request, and refuses a broken script
//! with its line.

use longrun_host::model::{Message, Model, ModelError, ModelRequest, Role, ScriptedModel, Usage};

const SCRIPT: &str = r#"
# a two-turn session
{"reasoning_content": "Look first.", "tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}]}
{"content": "It holds hello.txt.", "usage": {"input_tokens": 120, "output_tokens": 9}}
"#;

fn request(messages: Vec<Message>) -> ModelRequest {
    ModelRequest {
        messages,
        tools: vec![],
        max_output_tokens: 1000,
    }
}

#[tokio::test]
async fn the_scripted_model_answers_by_turn_and_so_is_the_same_after_a_resume() {
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
    let second = model.complete(&request(conversation)).await.unwrap();
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
    assert_eq!(
        (response.usage.input_tokens, response.usage.output_tokens),
        (3, 2)
    );
}

#[tokio::test]
async fn a_response_can_fail_transiently_a_set_number_of_times() {
    let model = ScriptedModel::parse(r#"{"content": "ok", "fail_times": 2}"#, "s").unwrap();
    let req = request(vec![Message::text(Role::User, "hi")]);
    assert!(matches!(
        model.complete(&req).await,
        Err(ModelError::Transient(_))
    ));
    assert!(matches!(
        model.complete(&req).await,
        Err(ModelError::Transient(_))
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
    let mut messages = vec![Message::text(Role::User, "hi")];
    messages.push(
        model
            .complete(&request(messages.clone()))
            .await
            .unwrap()
            .message,
    );
    assert!(matches!(
        model.complete(&request(messages)).await,
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
}
