//! DeepSeek V4's and V4.1's encoding.
//!
//! * Thinking is on unless turned off. In thinking mode the first message is preceded by the
//!   reasoning-effort preamble (V4: nothing for `low`, a paragraph for `high` and `max`; V4.1:
//!   `<｜System｜>Reasoning Effort: N (range 1-100, …)\n\n`). V4.1 also opens a conversation that
//!   starts with a system message with `<｜System｜>`, and marks later system messages with it.
//! * There is no tool role: tool results become `<tool_result>…</tool_result>` parts of a user
//!   message, joined to the user text around them with `"\n\n"` (consecutive user messages merge
//!   the same way) and sorted into the order of the calls by `tool_call_id`.
//! * A message opens the assistant turn (`<｜Assistant｜>` + `<think>` or `</think>`) only when an
//!   assistant (or `latest_reminder`) message, or the end, follows: after a user or developer
//!   message; V4: after a system message at the end or before an assistant message; V4.1: after
//!   a system message that is not the first, and after a final complete assistant message. V4.1
//!   writes nothing after the last message without `add_generation_prompt`.
//! * Reasoning is dropped (`drop_thinking`, on by default) only when no message carries tools:
//!   then earlier assistant turns lose it and developer messages before the last user turn are
//!   left out. In V4 a merged tool-result message counts as the last user turn; V4.1 skips
//!   those and counts system messages after the first.
//! * `task` on a message (V4's internal tasks) ends the prompt with that task's token instead of
//!   the assistant opening (`action`: `<｜Assistant｜>` + think tag + `<｜action｜>`); the next
//!   assistant turn then has no reasoning part.

use super::prompts::{
    effort_budget, ASSISTANT, BOS, EFFORT_HIGH, EFFORT_MAX, EOS, LATEST_REMINDER, SYSTEM, TASKS,
    THINK_CLOSE, THINK_OPEN, USER,
};
use super::{fail, last_index, py_text, sections, Block, Controls, Effort, Msg, Version};
use crate::dsml::{render_tool_calls, Arguments};
use crate::error::Result;
use crate::template::Role;

pub(super) fn render(version: Version, msgs: Vec<Msg>, controls: &Controls) -> Result<String> {
    let v41 = version == Version::V41;
    let mut controls = *controls;
    if v41 && controls.continue_final {
        if msgs.last().is_none_or(|m| m.role != Role::Assistant) {
            return Err(fail(
                "continue_final_message requires a final assistant message",
            ));
        }
        controls.add_generation_prompt = false;
    }
    let mut msgs = merge_tool_messages(msgs, v41);
    sort_tool_results(&mut msgs);
    controls.drop_thinking &= !msgs.iter().any(|m| !m.tools.is_empty());
    if controls.thinking && controls.drop_thinking {
        msgs = drop_thinking(msgs, v41);
    }
    let ctx = Context {
        version,
        controls,
        last_user: last_user_index(&msgs, v41),
    };
    let mut out = String::from(BOS);
    for i in 0..msgs.len() {
        ctx.render_message(i, &msgs, &mut out)?;
    }
    Ok(out)
}

/// Tool messages become `tool_result` parts of a user message (the one before them, if it is
/// a user message); a user message joins the user message before it unless that one has a
/// task. Every user message carries its parts afterwards.
fn merge_tool_messages(msgs: Vec<Msg>, v41: bool) -> Vec<Msg> {
    let mut merged: Vec<Msg> = Vec::with_capacity(msgs.len());
    for mut msg in msgs {
        let last_user = merged.last_mut().filter(|m| m.role == Role::User);
        match msg.role {
            Role::Tool => {
                let block = Block::ToolResult {
                    id: msg.tool_call_id,
                    content: msg.content,
                };
                match last_user {
                    Some(user) => user.blocks.push(block),
                    None => {
                        let mut user = Msg::bare(Role::User, None);
                        user.blocks.push(block);
                        merged.push(user);
                    }
                }
            }
            Role::User => {
                let block = Block::Text(msg.content);
                match last_user.filter(|m| m.task.is_none()) {
                    Some(user) => user.blocks.push(block),
                    None => {
                        if !v41 {
                            // V4 keeps only content, task and wo_eos of a user message.
                            let (task, wo_eos) = (msg.task.take(), msg.wo_eos);
                            msg = Msg::bare(Role::User, msg.content);
                            msg.task = task;
                            msg.wo_eos = wo_eos;
                        }
                        msg.blocks = vec![block];
                        merged.push(msg);
                    }
                }
            }
            _ => merged.push(msg),
        }
    }
    merged
}

/// Puts the tool results of each user message in the order of the calls of the latest
/// assistant message with calls (by id; an unknown id sorts as the first call).
fn sort_tool_results(msgs: &mut [Msg]) {
    let mut order: Vec<(&str, usize)> = Vec::new();
    for msg in msgs.iter_mut() {
        if msg.role == Role::Assistant && !msg.tool_calls.is_empty() {
            order.clear();
            for (i, call) in msg.tool_calls.iter().enumerate() {
                if call.id.is_empty() {
                    continue;
                }
                match order.iter_mut().find(|(id, _)| *id == call.id) {
                    Some(slot) => slot.1 = i,
                    None => order.push((call.id.as_str(), i)),
                }
            }
        } else if msg.role == Role::User && !order.is_empty() {
            let rank = |b: &Block| match b {
                Block::ToolResult { id, .. } => order
                    .iter()
                    .find(|(known, _)| known == id)
                    .map_or(0, |(_, i)| *i),
                Block::Text(_) => 0,
            };
            let is_result = |b: &Block| matches!(b, Block::ToolResult { .. });
            let mut results: Vec<Block> = msg
                .blocks
                .iter()
                .filter(|b| is_result(b))
                .cloned()
                .collect();
            if results.len() < 2 {
                continue;
            }
            results.sort_by_key(|b| rank(b));
            let mut sorted = results.into_iter();
            for block in msg.blocks.iter_mut().filter(|b| is_result(b)) {
                if let Some(next) = sorted.next() {
                    *block = next;
                }
            }
        }
    }
}

/// The last message that starts a user turn. V4.1 counts system messages after the first and
/// skips user messages made only of tool results.
fn last_user_index(msgs: &[Msg], v41: bool) -> isize {
    last_index(msgs, |i, m| match m.role {
        Role::User | Role::Developer if v41 => {
            m.blocks.is_empty() || m.blocks.iter().any(|b| matches!(b, Block::Text(_)))
        }
        Role::User | Role::Developer => true,
        Role::System => v41 && i > 0,
        _ => false,
    })
}

/// Drops the reasoning of assistant messages before the last user turn, and the developer
/// messages there.
fn drop_thinking(msgs: Vec<Msg>, v41: bool) -> Vec<Msg> {
    let last_user = last_user_index(&msgs, v41);
    msgs.into_iter()
        .enumerate()
        .filter_map(|(i, mut m)| match m.role {
            _ if i as isize >= last_user => Some(m),
            Role::User | Role::System | Role::Tool | Role::LatestReminder => Some(m),
            Role::Assistant => {
                m.reasoning = None;
                Some(m)
            }
            Role::Developer => None,
        })
        .collect()
}

struct Context {
    version: Version,
    controls: Controls,
    last_user: isize,
}

impl Context {
    fn render_message(&self, i: usize, msgs: &[Msg], out: &mut String) -> Result<()> {
        let v41 = self.version == Version::V41;
        let Controls {
            thinking,
            drop_thinking,
            ..
        } = self.controls;
        let msg = &msgs[i];
        let is_last = i + 1 == msgs.len();
        let continue_final = v41 && is_last && self.controls.continue_final;
        let wo_eos = msg.wo_eos || continue_final;

        let preamble = match self.controls.effort {
            _ if i > 0 || !thinking => String::new(),
            Effort::High => EFFORT_HIGH.to_string(),
            Effort::Max => EFFORT_MAX.to_string(),
            Effort::Budget(b) => effort_budget(b),
            Effort::Low => String::new(),
        };
        if v41 && i == 0 && (!preamble.is_empty() || msg.role == Role::System) {
            out.push_str(SYSTEM);
        }
        out.push_str(&preamble);

        match msg.role {
            Role::System => {
                if v41 && i > 0 {
                    out.push_str(SYSTEM);
                }
                out.push_str(msg.text());
                out.push_str(&sections(self.version, msg)?);
            }
            Role::Developer => {
                let content = msg.content.filter(|c| !c.is_empty()).ok_or_else(|| {
                    fail("Invalid message for role `developer`: it needs content")
                })?;
                out.push_str(USER);
                out.push_str(content);
                out.push_str(&sections(self.version, msg)?);
            }
            Role::User => {
                out.push_str(USER);
                if msg.blocks.is_empty() {
                    out.push_str(msg.text());
                }
                let mut parts = Vec::with_capacity(msg.blocks.len());
                for block in &msg.blocks {
                    parts.push(match block {
                        Block::Text(Some(text)) => text.to_string(),
                        Block::Text(None) => {
                            return Err(fail("a user message has null content"));
                        }
                        Block::ToolResult { content, .. } => {
                            format!("<tool_result>{}</tool_result>", py_text(*content))
                        }
                    });
                }
                out.push_str(&parts.join("\n\n"));
            }
            Role::LatestReminder => {
                out.push_str(LATEST_REMINDER);
                out.push_str(py_text(msg.content));
            }
            Role::Tool => return Err(fail("tool message left after merging")),
            Role::Assistant => {
                let mode = if v41 {
                    Arguments::Lenient
                } else {
                    Arguments::Object
                };
                let calls = render_tool_calls(self.version.dialect(), msg.tool_calls, mode)?;
                let reasoning = msg.reasoning.unwrap_or_default();
                let after_task = i > 0 && msgs[i - 1].task.is_some();
                let mut thinking_part = String::new();
                if thinking && !after_task && (!drop_thinking || i as isize > self.last_user) {
                    thinking_part = format!("{reasoning}{THINK_CLOSE}");
                    if continue_final
                        && !reasoning.is_empty()
                        && msg.text().is_empty()
                        && calls.is_empty()
                    {
                        thinking_part = reasoning.to_string();
                    }
                }
                out.push_str(&thinking_part);
                out.push_str(msg.text());
                out.push_str(&calls);
                if !wo_eos {
                    out.push_str(EOS);
                }
            }
        }

        if v41 && is_last && !self.controls.add_generation_prompt {
            return Ok(());
        }
        if let Some(next) = msgs.get(i + 1) {
            if !matches!(next.role, Role::Assistant | Role::LatestReminder) {
                return Ok(());
            }
        }
        let think = || {
            let open = thinking && (!drop_thinking || i as isize >= self.last_user);
            if open {
                THINK_OPEN
            } else {
                THINK_CLOSE
            }
        };
        if let Some(task) = &msg.task {
            let token = TASKS
                .iter()
                .find(|(name, _)| *name == task.as_ref())
                .map(|(_, token)| *token)
                .ok_or_else(|| fail(format!("Invalid task: {task:?}")))?;
            if task.as_ref() == "action" {
                out.push_str(ASSISTANT);
                out.push_str(if thinking { THINK_OPEN } else { THINK_CLOSE });
            }
            out.push_str(token);
            return Ok(());
        }
        let next_is_assistant = msgs.get(i + 1).is_some_and(|m| m.role == Role::Assistant);
        let opens = match msg.role {
            Role::User | Role::Developer => true,
            Role::System if v41 => i > 0,
            Role::System => is_last || next_is_assistant,
            Role::Assistant => v41 && is_last && !wo_eos,
            _ => false,
        };
        if opens {
            out.push_str(ASSISTANT);
            out.push_str(think());
        }
        Ok(())
    }
}
