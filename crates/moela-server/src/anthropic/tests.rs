//! The mapping of Anthropic's message requests onto chat requests.

use super::*;
use crate::protocol::{Arguments, Content, Stop, ToolChoiceField};

fn chat(body: serde_json::Value) -> Result<crate::protocol::ChatRequest, ApiError> {
    parse_json::<MessagesRequest>(body.to_string().as_bytes())?.into_chat(false)
}

fn text(c: &Option<Content>) -> &str {
    match c {
        Some(Content::Text(t)) => t,
        other => panic!("not text: {other:?}"),
    }
}

#[test]
fn a_tool_conversation_maps_to_system_user_assistant_and_tool_messages() {
    let req = chat(serde_json::json!({
        "model": "m", "max_tokens": 50, "stop_sequences": ["END"], "top_k": 5,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
        "tools": [{"name": "get_weather", "description": "Weather",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Call it.", "signature": "x"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"zeta": 1, "city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                 "content": [{"type": "text", "text": "no such city"}]},
                {"type": "text", "text": "Thanks"}]}
        ]
    }))
    .unwrap();
    let roles: Vec<&str> = req.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "tool", "tool", "user"]
    );
    assert_eq!(text(&req.messages[0].content), "Be brief.\nUse tools.");
    let a = &req.messages[2];
    assert!(a.content.is_none());
    assert_eq!(a.reasoning_content.as_deref(), Some("Call it."));
    let calls = a.tool_calls.as_ref().unwrap();
    assert_eq!(calls[0].id.as_deref(), Some("toolu_1"));
    assert_eq!(calls[0].function.name, "get_weather");
    // The input keeps its key order when it is printed into the prompt.
    let Arguments::Value(v) = &calls[0].function.arguments else {
        panic!("arguments not a value")
    };
    assert_eq!(
        serde_json::to_string(v).unwrap(),
        r#"{"zeta":1,"city":"Paris"}"#
    );
    assert_eq!(req.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
    assert_eq!(text(&req.messages[3].content), "sunny");
    assert_eq!(text(&req.messages[4].content), "Error: no such city");
    assert_eq!(text(&req.messages[5].content), "Thanks");
    assert!(req.messages.iter().all(|m| m.prefix.is_none()));
    // Tools as OpenAI functions, `any` as `required`, the other fields as they are.
    let tools = serde_json::to_value(req.tools.as_ref().unwrap()).unwrap();
    assert_eq!(tools[0]["type"], "function");
    assert_eq!(tools[0]["function"]["name"], "get_weather");
    assert_eq!(tools[0]["function"]["parameters"]["type"], "object");
    assert!(matches!(&req.tool_choice, Some(ToolChoiceField::Mode(m)) if m == "required"));
    assert_eq!(req.parallel_tool_calls, Some(false));
    assert_eq!(req.max_tokens, Some(50));
    assert_eq!(req.top_k, Some(5));
    assert!(matches!(&req.stop, Some(Stop::Many(s)) if s == &["END".to_string()]));
}

#[test]
fn named_tool_choice_thinking_and_prefill() {
    let req = chat(serde_json::json!({
        "max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f"},
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "Sure,"}]
    }))
    .unwrap();
    assert!(
        matches!(&req.tool_choice, Some(ToolChoiceField::Named { function }) if function.name == "f")
    );
    assert_eq!(
        req.thinking.as_ref().map(|t| t.kind.as_str()),
        Some("enabled")
    );
    // A last assistant message is continued.
    let last = req.messages.last().unwrap();
    assert_eq!(last.prefix, Some(true));
    assert_eq!(text(&last.content), "Sure,");
    // count_tokens: no max_tokens needed, a forced choice renders as auto.
    let body = serde_json::json!({
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "hi"}]
    });
    let counted = parse_json::<MessagesRequest>(body.to_string().as_bytes())
        .unwrap()
        .into_chat(true)
        .unwrap();
    assert!(matches!(&counted.tool_choice, Some(ToolChoiceField::Mode(m)) if m == "auto"));
    // output_config: effort as the reasoning effort, a JSON schema format as response_format.
    let req = chat(serde_json::json!({
        "max_tokens": 20, "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high", "format": {"type": "json_schema",
                                                        "schema": {"type": "object"}}},
        "messages": [{"role": "user", "content": "hi"}]
    }))
    .unwrap();
    assert!(req.thinking.is_none());
    assert_eq!(req.reasoning_effort.as_deref(), Some("high"));
    assert!(matches!(
        &req.response_format,
        Some(crate::protocol::ResponseFormat::JsonSchema { json_schema })
            if json_schema.schema == Some(serde_json::json!({"type": "object"}))
    ));
}

#[test]
fn invalid_requests_name_the_field() {
    let param = |body: serde_json::Value| match chat(body) {
        Err(ApiError::BadRequest { param, .. }) => param.unwrap_or_default(),
        other => panic!("accepted: {other:?}"),
    };
    let user = serde_json::json!([{"role": "user", "content": "hi"}]);
    assert_eq!(param(serde_json::json!({"messages": user})), "max_tokens");
    assert_eq!(
        param(serde_json::json!({"max_tokens": 5, "temperature": 1.5, "messages": user})),
        "temperature"
    );
    assert_eq!(
        param(serde_json::json!({"max_tokens": 5, "messages": user,
            "thinking": {"type": "enabled", "budget_tokens": 5}})),
        "thinking.budget_tokens"
    );
    assert_eq!(
        param(serde_json::json!({"max_tokens": 5, "messages": user,
            "thinking": {"type": "sometimes"}})),
        "thinking.type"
    );
    assert_eq!(
        param(serde_json::json!({"max_tokens": 5, "messages": user,
            "output_config": {"format": {"type": "xml"}}})),
        "output_config.format.type"
    );
    assert_eq!(
        param(serde_json::json!({"max_tokens": 5, "messages": user,
            "tool_choice": {"type": "tool"}})),
        "tool_choice.name"
    );
    assert_eq!(
        param(serde_json::json!({"max_tokens": 5, "messages": user,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]})),
        "tools[0].type"
    );
    assert_eq!(
        param(serde_json::json!({"max_tokens": 5,
            "messages": [{"role": "system", "content": "x"}]})),
        "messages[0].role"
    );
    assert_eq!(
        param(serde_json::json!({"max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]})),
        "messages[0].content[0].type"
    );
    assert_eq!(
        param(serde_json::json!({"max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "text"}]}]})),
        "messages[0].content[0]"
    );
    assert_eq!(
        param(serde_json::json!({"max_tokens": 5,
            "messages": [{"role": "user", "content": [
                {"type": "tool_use", "id": "a", "name": "f", "input": {}}]}]})),
        "messages[0].content[0]"
    );
    assert_eq!(
        param(serde_json::json!({"max_tokens": 5, "messages": [], })),
        "messages"
    );
}
