//! How the backend talks to a small model that has no tool-call format of
//! its own: the system message (what to write, the tools, an example) and
//! the JSON-schema constraint every step's answer is decoded under.
//!
//! Two protocols exist. [`Protocol::Guided`] is the default: it is what the
//! `local_tasks` benchmark measured as working best on the default model
//! (SmolLM2-135M). [`Protocol::Plain`] is the first protocol, kept as that
//! benchmark's baseline so that every change here is measured against it.

use longrun_host::agent::TOOL_ERROR_PREFIX;
use longrun_host::model::{Message, Role, ToolDef};
use serde_json::{Map, Value, json};

/// What the system message says and what the constraint allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// For small models: the tools the goal names shown first, each as a
    /// one-line call with only its required arguments, a worked example,
    /// tool results named by their tool, and a constraint that offers only
    /// the required arguments, bounds the answer's length (so that an answer
    /// always closes within the output budget), right after a failed call
    /// offers only calls of the other tools (a small model otherwise
    /// "answers" with the error it just read, or repeats the call), and
    /// right after a successful one only the answer.
    #[default]
    Guided,
    /// The first protocol: an instruction and each tool's full JSON Schema;
    /// the constraint offers every argument and an unbounded answer.
    Plain,
}

/// Output tokens kept for the JSON around an answer (`{"answer": "` and
/// `"}`) and a margin, when the answer's length is bounded.
const ANSWER_OVERHEAD_TOKENS: u64 = 16;

/// The longest answer the guided protocol lets a model write, in characters.
const MAX_GUIDED_ANSWER: u64 = 1000;

/// What one step shows and offers the model.
#[derive(Debug)]
pub struct Offer<'a> {
    /// The tools the system message shows, in its order: every tool of the
    /// request, the same for the whole session.
    pub shown: Vec<&'a ToolDef>,
    /// The tools the step's constraint lets the model call.
    pub tools: Vec<&'a ToolDef>,
    /// Whether the constraint lets the model answer.
    pub answer: bool,
}

impl Protocol {
    /// The tools in the order the system message shows them. Guided: the
    /// tools whose action the goal names (`fs_read` for "read ...") first —
    /// a small model mostly calls the first tool it was shown. The order
    /// depends on the goal only, so the system message stays the same for
    /// the whole session (and the engine's prefix cache keeps matching).
    fn ordered<'a>(self, tools: &'a [ToolDef], messages: &[Message]) -> Vec<&'a ToolDef> {
        let mut ordered: Vec<&ToolDef> = tools.iter().collect();
        if self == Protocol::Guided {
            let goal = messages
                .iter()
                .find(|m| m.role == Role::User)
                .and_then(|m| m.content.as_deref())
                .unwrap_or_default()
                .to_lowercase();
            // A stable sort: named tools first, each group in its order.
            ordered.sort_by_key(|tool| !goal_names(&goal, &tool.name));
        }
        ordered
    }

    /// What the step after `messages` offers. Guided, right after a failed
    /// call: only calls, and not of the tool that just failed while another
    /// is offered (a small model otherwise "answers" with the error it just
    /// read, or repeats the call).
    pub fn offer<'a>(self, tools: &'a [ToolDef], messages: &[Message]) -> Offer<'a> {
        let shown = self.ordered(tools, messages);
        let mut offer = Offer {
            tools: shown.clone(),
            shown,
            answer: true,
        };
        if self != Protocol::Guided || offer.tools.is_empty() {
            return offer;
        }
        match last_result(messages) {
            Some(Outcome::Failed(failed)) => {
                offer.answer = false;
                if offer.tools.iter().any(|t| t.name != failed) {
                    offer.tools.retain(|t| t.name != failed);
                }
            }
            // A result in hand: answer with it. Measured on the default
            // model, a further call after a success was a repeat or a
            // detour, never a second fact the answer needed.
            Some(Outcome::Succeeded) => offer.tools.clear(),
            None => {}
        }
        offer
    }

    /// The system message of a step: the tools `offer` shows (none in a last
    /// step that must answer).
    pub fn system_message(self, offer: &Offer<'_>) -> Option<String> {
        let tools = offer.shown.as_slice();
        match self {
            Protocol::Plain if tools.is_empty() => None,
            Protocol::Plain => Some(plain_system_message(tools)),
            Protocol::Guided => Some(guided_system_message(tools)),
        }
    }

    /// The schema every answer of a step must match: a final answer (when
    /// the offer allows one), or one call of an offered tool with arguments
    /// valid against its schema. `max_output_tokens` is the step's output
    /// budget.
    pub fn answer_schema(self, offer: &Offer<'_>, max_output_tokens: u64) -> Value {
        let mut answer = json!({"type": "string"});
        if self == Protocol::Guided {
            // A decoded character costs at least one token only when the
            // tokenizer has nothing longer; in practice an answer of this
            // many characters takes far fewer tokens, so the string closes
            // before the budget ends instead of being cut mid-JSON.
            // Past MAX_GUIDED_ANSWER characters a small model's answer has
            // always been a loop repeating its last sentence.
            let bound = max_output_tokens
                .saturating_sub(ANSWER_OVERHEAD_TOKENS)
                .clamp(1, MAX_GUIDED_ANSWER);
            answer["maxLength"] = json!(bound);
        }
        let mut choices = Vec::new();
        if offer.answer {
            choices.push(json!({
                "type": "object",
                "properties": {"answer": answer},
                "required": ["answer"],
                "additionalProperties": false
            }));
        }
        for tool in &offer.tools {
            let arguments = match self {
                Protocol::Guided => required_only(&tool.parameters),
                Protocol::Plain => tool.parameters.clone(),
            };
            choices.push(json!({
                "type": "object",
                "properties": {
                    "tool": {"const": tool.name},
                    "arguments": arguments
                },
                "required": ["tool", "arguments"],
                "additionalProperties": false
            }));
        }
        json!({
            "anyOf": choices,
            // llguidance's options: no free whitespace between JSON tokens (a
            // small model otherwise fills its whole output budget with
            // newlines), and the separators the protocol's examples use.
            "x-guidance": {
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": "
            }
        })
    }

    /// How a tool's result is introduced in the user turn that carries it.
    pub fn result_heading(self, tool: Option<&str>, call_id: Option<&str>) -> String {
        match (self, tool) {
            (Protocol::Guided, Some(tool)) => format!("Result of {tool}:"),
            _ => format!("Result of {}:", call_id.unwrap_or("the call")),
        }
    }
}

/// Whether `goal` (lower case) names the action of `tool`: the last part of
/// its name (`read` of `fs_read`), as a word of the goal.
fn goal_names(goal: &str, tool: &str) -> bool {
    let action = tool.rsplit('_').next().unwrap_or(tool).to_lowercase();
    goal.split(|c: char| !c.is_alphanumeric())
        .any(|word| word == action)
}

/// The name of the tool that the call `id` (made earlier in `messages`)
/// called.
pub fn called_tool<'a>(messages: &'a [Message], id: Option<&str>) -> Option<&'a str> {
    let id = id?;
    messages
        .iter()
        .flat_map(|m| &m.tool_calls)
        .find(|call| call.id == id)
        .map(|call| call.name.as_str())
}

/// How the call whose result is the last message ended.
enum Outcome<'a> {
    /// It failed; the tool it called.
    Failed(&'a str),
    Succeeded,
}

/// How the last call ended, when the last message is its result.
fn last_result(messages: &[Message]) -> Option<Outcome<'_>> {
    let last = messages.last().filter(|m| m.role == Role::Tool)?;
    let failed = last
        .content
        .as_deref()
        .is_some_and(|text| text.starts_with(TOOL_ERROR_PREFIX));
    if !failed {
        return Some(Outcome::Succeeded);
    }
    called_tool(messages, last.tool_call_id.as_deref()).map(Outcome::Failed)
}

fn plain_system_message(tools: &[&ToolDef]) -> String {
    let mut text = String::from(
        "You are an agent that completes the user's goal step by step. \
         Answer with one JSON object and nothing else: either \
         {\"tool\": NAME, \"arguments\": {...}} to call one tool, or \
         {\"answer\": \"...\"} when the goal is done. Tools:\n",
    );
    for tool in tools {
        text.push_str(&format!(
            "- {}: {} Arguments schema: {}\n",
            tool.name, tool.description, tool.parameters
        ));
    }
    text
}

fn guided_system_message(tools: &[&ToolDef]) -> String {
    if tools.is_empty() {
        return "You are an agent. No more tools can be called. Write one JSON object, \
                {\"answer\": \"...\"}, that answers the user's goal with the facts the \
                tool results above showed; quote them."
            .to_owned();
    }
    let mut text = String::from(
        "You are an agent. You reach the user's goal in steps. In each step you write \
         exactly one JSON object and nothing else:\n\
         - {\"tool\": \"NAME\", \"arguments\": {...}} calls one tool; its result comes back to you.\n\
         - {\"answer\": \"...\"} ends the session with your answer to the goal.\n\
         Rules: use the paths the goal and the results give, do not invent names. \
         If a call fails, read the error and change the call; never repeat a failed call. \
         After a tool's result, answer the goal with it, quoting it.\n\nTools:\n",
    );
    for tool in tools {
        text.push_str(&format!(
            "- {}: {}\n",
            call_line(&tool.name, &tool.parameters),
            first_sentence(&tool.description)
        ));
    }
    text.push_str("\nExample:\n");
    text.push_str(&example(tools));
    text
}

/// `{"tool": "fs_read", "arguments": {"path": "<string>"}}`: a call with
/// each required argument and its type.
fn call_line(name: &str, parameters: &Value) -> String {
    let mut arguments = Map::new();
    for (key, schema) in required_properties(parameters) {
        let kind = schema
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("value");
        arguments.insert(key, Value::String(format!("<{kind}>")));
    }
    json!({"tool": name, "arguments": arguments})
        .to_string()
        .replace("\":", "\": ")
        .replace(",\"", ", \"")
}

/// The worked example: one call of `fs_read` and its answer when `fs_read`
/// is offered (the common case), else one call of the first tool with typed
/// placeholders. Measured on the default model (`local_tasks`): with no
/// example it called tools with the call lines' placeholders as arguments
/// and reached none of the suite's goals; with examples for a direct answer
/// and for `fs_list` as well, it reached one; with this one, three.
fn example(tools: &[&ToolDef]) -> String {
    if tools.iter().any(|t| t.name == "fs_read") {
        return "User: What does /data/budget.txt say?\n\
                You: {\"tool\": \"fs_read\", \"arguments\": {\"path\": \"/data/budget.txt\"}}\n\
                User: Result of fs_read: {\"content\": \"The budget is 400 euros.\\n\", \"size\": 26, \"truncated\": false}\n\
                You: {\"answer\": \"/data/budget.txt says: The budget is 400 euros.\"}\n"
            .to_owned();
    }
    let first = tools[0];
    format!(
        "User: (a goal that needs {name})\n\
         You: {call}\n\
         User: Result of {name}: (its result)\n\
         You: {{\"answer\": \"(the answer, quoting the result)\"}}\n",
        name = first.name,
        call = call_line(&first.name, &first.parameters),
    )
}

fn first_sentence(text: &str) -> &str {
    match text.find(". ") {
        Some(end) => &text[..=end],
        None => text.trim(),
    }
}

/// The required properties of an object schema, in the schema's order.
fn required_properties(parameters: &Value) -> Vec<(String, Value)> {
    let required: Vec<&str> = parameters
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = parameters.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .filter(|(key, _)| required.contains(&key.as_str()))
        .map(|(key, schema)| (key.clone(), schema.clone()))
        .collect()
}

/// `parameters` offering only its required properties (optional ones are
/// where a small model goes wrong: offsets, limits and flags it invents).
/// A schema that is not a plain object schema is kept whole.
fn required_only(parameters: &Value) -> Value {
    let Some(properties) = parameters.get("properties").and_then(Value::as_object) else {
        return parameters.clone();
    };
    let kept: Map<String, Value> = required_properties(parameters).into_iter().collect();
    if kept.len() == properties.len() {
        return parameters.clone();
    }
    let mut narrowed = parameters.clone();
    narrowed["properties"] = Value::Object(kept);
    narrowed["additionalProperties"] = Value::Bool(false);
    narrowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use longrun_host::model::ToolCall;

    fn tool(name: &str, description: &str) -> ToolDef {
        ToolDef {
            name: name.into(),
            description: description.into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "offset": {"type": "integer"}
                },
                "required": ["path"]
            }),
        }
    }

    fn tools() -> Vec<ToolDef> {
        vec![
            tool("fs_list", "List a directory."),
            tool("fs_read", "Read a file. Long files come in pieces."),
        ]
    }

    fn goal(text: &str) -> Vec<Message> {
        vec![Message::text(Role::User, text)]
    }

    /// `messages` after a call of `name` that ended with `result`.
    fn after_call(mut messages: Vec<Message>, name: &str, result: &str) -> Vec<Message> {
        messages.push(Message {
            tool_calls: vec![ToolCall {
                id: "call_1_0".into(),
                name: name.into(),
                arguments: "{}".into(),
            }],
            ..Message::text(Role::Assistant, "")
        });
        messages.push(Message {
            tool_call_id: Some("call_1_0".into()),
            ..Message::text(Role::Tool, result)
        });
        messages
    }

    fn offered(schema: &Value) -> Vec<String> {
        schema["anyOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| match c["properties"]["tool"]["const"].as_str() {
                Some(name) => name.to_owned(),
                None => "answer".to_owned(),
            })
            .collect()
    }

    #[test]
    fn both_protocols_offer_an_answer_and_each_tool() {
        let tools = tools();
        for protocol in [Protocol::Guided, Protocol::Plain] {
            let offer = protocol.offer(&tools, &goal("do it"));
            let schema = protocol.answer_schema(&offer, 128);
            assert_eq!(offered(&schema), ["answer", "fs_list", "fs_read"]);
        }
    }

    #[test]
    fn the_guided_protocol_shows_first_the_tools_whose_action_the_goal_names() {
        let tools = tools();
        let offer = Protocol::Guided.offer(&tools, &goal("Read /a/b.txt and say what it says"));
        let names: Vec<&str> = offer.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["fs_read", "fs_list"]);
        let plain = Protocol::Plain.offer(&tools, &goal("Read /a/b.txt"));
        assert_eq!(
            plain.tools[0].name, "fs_list",
            "the plain protocol keeps the order"
        );
    }

    #[test]
    fn the_guided_constraint_offers_required_arguments_and_a_bounded_answer() {
        let tools = tools();
        let offer = Protocol::Guided.offer(&tools, &goal("do it"));
        let schema = Protocol::Guided.answer_schema(&offer, 128);
        let arguments = &schema["anyOf"][1]["properties"]["arguments"];
        assert_eq!(
            arguments["properties"].as_object().unwrap().len(),
            1,
            "{arguments}"
        );
        assert_eq!(arguments["additionalProperties"], false);
        assert_eq!(
            schema["anyOf"][0]["properties"]["answer"]["maxLength"],
            128 - ANSWER_OVERHEAD_TOKENS
        );
    }

    #[test]
    fn the_guided_constraint_asks_for_another_call_after_a_failure_and_the_answer_after_a_success()
    {
        let tools = tools();
        let failed = after_call(goal("do it"), "fs_list", "error: /a: not a directory");
        let schema = Protocol::Guided.answer_schema(&Protocol::Guided.offer(&tools, &failed), 128);
        assert_eq!(offered(&schema), ["fs_read"]);
        // The only tool stays offered; with none, only an answer remains.
        let one = &tools[..1];
        let schema = Protocol::Guided.answer_schema(&Protocol::Guided.offer(one, &failed), 128);
        assert_eq!(offered(&schema), ["fs_list"]);
        let schema = Protocol::Guided.answer_schema(&Protocol::Guided.offer(&[], &failed), 128);
        assert_eq!(offered(&schema), ["answer"]);
        // After a call that worked, the answer; the plain protocol offers
        // everything whatever happened.
        let worked = after_call(goal("do it"), "fs_list", "{\"entries\": []}");
        let schema = Protocol::Guided.answer_schema(&Protocol::Guided.offer(&tools, &worked), 128);
        assert_eq!(offered(&schema), ["answer"]);
        let schema = Protocol::Plain.answer_schema(&Protocol::Plain.offer(&tools, &worked), 128);
        assert_eq!(offered(&schema), ["answer", "fs_list", "fs_read"]);
        let schema = Protocol::Plain.answer_schema(&Protocol::Plain.offer(&tools, &failed), 128);
        assert_eq!(offered(&schema), ["answer", "fs_list", "fs_read"]);
    }

    #[test]
    fn the_plain_constraint_is_the_tools_own_schema_and_an_unbounded_answer() {
        let tools = tools();
        let schema = Protocol::Plain.answer_schema(&Protocol::Plain.offer(&tools, &[]), 128);
        assert_eq!(
            schema["anyOf"][1]["properties"]["arguments"],
            tools[0].parameters
        );
        assert!(schema["anyOf"][0]["properties"]["answer"]["maxLength"].is_null());
    }

    #[test]
    fn the_guided_system_message_shows_calls_and_an_example() {
        let tools = tools();
        let offer = Protocol::Guided.offer(&tools, &goal("do it"));
        let text = Protocol::Guided.system_message(&offer).unwrap();
        assert!(
            text.contains(
                r#"{"tool": "fs_read", "arguments": {"path": "<string>"}}: Read a file."#
            ),
            "{text}"
        );
        assert!(!text.contains("offset"), "optional arguments are not shown");
        assert!(text.contains("Example:"));
        let none = Protocol::Guided.offer(&[], &goal("do it"));
        let last = Protocol::Guided.system_message(&none).unwrap();
        assert!(last.contains("No more tools"), "{last}");
        assert_eq!(Protocol::Plain.system_message(&none), None);
    }
}
