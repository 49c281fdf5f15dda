//! DeepSeek V3.2's encoding.
//!
//! * Thinking is off unless asked for (`thinking` / `enable_thinking`).
//! * Every user (and developer) turn is `<｜User｜>…<｜Assistant｜>` followed at once by
//!   `<think>` when it is the last user turn in thinking mode, `</think>` otherwise; there is
//!   no way to leave the assistant turn unopened.
//! * A developer turn is the user template around its sections and
//!   `"\n\n# The user's message is: "` + its content.
//! * Tool results follow the assistant turn that called (after its end-of-sentence):
//!   `"\n\n<function_results>"`, `"\n<result>…</result>"` per call, `"\n</function_results>"`,
//!   then `"\n\n<think>"` (thinking, after the last user turn) or `"\n\n</think>"`; the
//!   assistant continues in the same turn.
//! * In thinking mode an assistant turn after the last user turn must carry reasoning or tool
//!   calls. With `prefix` and no calls an assistant message is its bare content (to continue).
//! * Earlier reasoning is dropped when the conversation ends with a user message; then any
//!   developer message before the last user turn makes DeepSeek's encoder fail (it renders
//!   past the end of the shortened list), and so does this one.

use super::prompts::{ASSISTANT, BOS, EOS, THINK_CLOSE, THINK_OPEN, USER};
use super::{fail, last_index, py_text, sections, Controls, Msg, Version};
use crate::dsml::{render_tool_calls, Arguments, DsmlDialect};
use crate::error::Result;
use crate::template::Role;

pub(super) fn render(msgs: Vec<Msg>, controls: &Controls) -> Result<String> {
    let thinking = controls.thinking;
    let last = msgs.last().ok_or_else(|| fail("no messages to encode"))?;
    let drop_thinking = last.role == Role::User;
    if thinking && drop_thinking {
        let last_user = last_user_index(&msgs);
        let dropped = msgs.iter().enumerate().any(|(i, m)| {
            (i as isize) < last_user
                && !matches!(
                    m.role,
                    Role::User | Role::System | Role::Tool | Role::Assistant
                )
        });
        if dropped {
            return Err(fail(
                "a developer message before the last user message is dropped with the \
                 reasoning, and DeepSeek's V3.2 encoder then fails (index out of range)",
            ));
        }
    }
    let last_user = last_user_index(&msgs);
    let mut out = String::from(BOS);
    for i in 0..msgs.len() {
        out.push_str(&render_message(i, &msgs, thinking, last_user)?);
    }
    Ok(out)
}

fn last_user_index(msgs: &[Msg]) -> isize {
    last_index(msgs, |_, m| matches!(m.role, Role::User | Role::Developer))
}

fn render_message(i: usize, msgs: &[Msg], thinking: bool, last_user: isize) -> Result<String> {
    let msg = &msgs[i];
    let at = i as isize;
    let think = |opens: bool| {
        if opens && thinking {
            THINK_OPEN
        } else {
            THINK_CLOSE
        }
    };
    let mut out = String::new();
    match msg.role {
        Role::System => {
            out.push_str(msg.text());
            out.push_str(&sections(Version::V32, msg)?);
        }
        Role::Developer => {
            let content = msg
                .content
                .filter(|c| !c.is_empty())
                .ok_or_else(|| fail("Invalid message for role `developer`: it needs content"))?;
            let body = format!(
                "{}\n\n# The user's message is: {content}",
                sections(Version::V32, msg)?
            );
            out.push_str(&format!(
                "{USER}{body}{ASSISTANT}{}",
                think(at == last_user)
            ));
        }
        Role::User => {
            let content = py_text(msg.content);
            out.push_str(&format!(
                "{USER}{content}{ASSISTANT}{}",
                think(at == last_user)
            ));
        }
        Role::Tool => {
            // The calls answered: those of the assistant message before this run of tool
            // messages. (A tool message first in the conversation reads the last message, as
            // DeepSeek's encoder does with Python's index -1.)
            let (order, calls) = match (0..i).rev().find(|&j| msgs[j].role != Role::Tool) {
                Some(j) if msgs[j].role == Role::Assistant => (i - j, msgs[j].tool_calls.len()),
                Some(_) | None if i > 0 => {
                    return Err(fail(format!(
                        "Invalid messages at {i}: a tool message must follow an assistant message"
                    )))
                }
                _ => (1, msgs.last().map_or(0, |m| m.tool_calls.len())),
            };
            if calls < order {
                return Err(fail("No tool calls but found tool output"));
            }
            if order == 1 {
                out.push_str("\n\n<function_results>");
            }
            out.push_str(&format!("\n<result>{}</result>", py_text(msg.content)));
            if order == calls {
                out.push_str("\n</function_results>\n\n");
                out.push_str(think(at >= last_user));
            }
        }
        Role::Assistant => {
            let calls = render_tool_calls(DsmlDialect::V32, msg.tool_calls, Arguments::Object)?;
            let reasoning = msg.reasoning.unwrap_or_default();
            let mut thinking_part = String::new();
            if thinking && at > last_user {
                if reasoning.is_empty() && msg.tool_calls.is_empty() {
                    return Err(fail(format!(
                        "thinking mode: assistant message {i} after the last user message has \
                         neither reasoning nor tool calls"
                    )));
                }
                thinking_part = format!("{reasoning}{THINK_CLOSE}");
            }
            if msg.tool_calls.is_empty() && msg.prefix {
                out.push_str(msg.text());
            } else {
                out.push_str(&format!("{thinking_part}{}{calls}{EOS}", msg.text()));
            }
        }
        Role::LatestReminder => return Err(fail("Invalid role: latest_reminder")),
    }
    Ok(out)
}
