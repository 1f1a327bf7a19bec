//! OpenAI-style tool calling on any model: the tools go into the prompt (through the chat
//! template when it takes `tools`, else as a system message), and the reply is held by a
//! grammar to one call `{"name": ..., "arguments": {...}}` whose arguments follow the
//! function's `parameters` schema (or, with `tool_choice: "auto"`, to either plain text or
//! such a call). The caller turns a reply that is a call into `tool_calls`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::chat::{render_chat, ChatMessage, ChatTemplate};
use crate::error::{Error, Result};
use crate::sample::Grammar;

/// A tool the model may call (OpenAI's `{type: "function", function: {...}}`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Function,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema for the arguments object; absent: any object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Arguments always follow `parameters` here, as with `strict: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// OpenAI's `tool_choice`: "none", "auto", "required", or `{type: "function", function: {name}}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named {
        #[serde(rename = "type")]
        kind: String,
        function: NamedFunction,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedFunction {
    pub name: String,
}

fn bad(option: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidOption { option, reason: reason.into() }
}

/// Checks the tools: functions, unique non-empty names, object parameter schemas.
pub fn validate(tools: &[Tool]) -> Result<()> {
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(bad("tools", format!("tool {i} has type '{}'; only \"function\" tools exist", t.kind)));
        }
        let name = &t.function.name;
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(bad("tools", format!("function name '{name}' must be 1-64 letters, digits, '_' or '-'")));
        }
        if tools[..i].iter().any(|o| &o.function.name == name) {
            return Err(bad("tools", format!("two functions are named '{name}'")));
        }
        if t.function.parameters.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(bad("tools", format!("function '{name}': parameters must be a JSON Schema object")));
        }
    }
    Ok(())
}

/// The schema of one call of `f`.
fn call_schema(f: &Function) -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "const": f.name },
            "arguments": f.parameters.clone().unwrap_or_else(|| json!({ "type": "object" })),
        },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// The grammar `choice` puts on the reply; None when the reply is free (no tools, or "none").
pub fn grammar(tools: &[Tool], choice: Option<&ToolChoice>) -> Result<Option<Grammar>> {
    validate(tools)?;
    if tools.is_empty() {
        return match choice {
            None => Ok(None),
            Some(ToolChoice::Mode(m)) if m == "none" => Ok(None),
            Some(_) => Err(bad("tool_choice", "there are no tools to choose from; give tools or drop tool_choice")),
        };
    }
    let any_call = || {
        let calls: Vec<Value> = tools.iter().map(|t| call_schema(&t.function)).collect();
        if calls.len() == 1 {
            calls.into_iter().next().expect("one call")
        } else {
            json!({ "anyOf": calls })
        }
    };
    match choice {
        Some(ToolChoice::Mode(m)) if m == "none" => Ok(None),
        Some(ToolChoice::Mode(m)) if m == "required" => Ok(Some(Grammar::JsonSchema(any_call()))),
        None => Ok(Some(auto(any_call()))),
        Some(ToolChoice::Mode(m)) if m == "auto" => Ok(Some(auto(any_call()))),
        Some(ToolChoice::Mode(m)) => Err(bad("tool_choice", format!("'{m}' is not one of \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"))),
        Some(ToolChoice::Named { kind, function }) => {
            if kind != "function" {
                return Err(bad("tool_choice", format!("type '{kind}' is not \"function\"")));
            }
            let f = tools.iter().find(|t| t.function.name == function.name).ok_or_else(|| bad("tool_choice", format!("no tool is named '{}'", function.name)))?;
            Ok(Some(Grammar::JsonSchema(call_schema(&f.function))))
        }
    }
}

/// "auto": a call (the reply starts with `{`), or any text that does not start with `{`.
fn auto(call: Value) -> Grammar {
    let mut call = call;
    call.as_object_mut().expect("a call schema is an object").insert("x-guidance".into(), json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " }));
    Grammar::Lark(format!("start: call | TEXT\ncall: %json {call}\nTEXT: /[^{{](.|\\n)*/\n"))
}

/// The chat as the model sees it with `tools`: through the template when it takes `tools`,
/// else with a system message that lists them and says how to call one.
pub fn render(template: Option<&ChatTemplate>, messages: &[ChatMessage], tools: &[Tool], max_bytes: usize) -> Result<String> {
    if tools.is_empty() {
        return render_chat(template, messages, None, true, max_bytes);
    }
    let listed = serde_json::to_value(tools).map_err(|e| bad("tools", e.to_string()))?;
    if template.is_some_and(ChatTemplate::takes_tools) {
        return render_chat(template, messages, Some(&listed), true, max_bytes);
    }
    let mut text = String::from("You can call these functions. To call one, reply with only a JSON object {\"name\": <function name>, \"arguments\": <object>}.\n");
    for t in tools {
        text.push_str(&serde_json::to_string(&t.function).map_err(|e| bad("tools", e.to_string()))?);
        text.push('\n');
    }
    let mut with_tools = messages.to_vec();
    match with_tools.first_mut() {
        Some(m) if m.role == "system" => m.content = format!("{}\n\n{text}", m.content),
        _ => with_tools.insert(0, ChatMessage { role: "system".into(), content: text }),
    }
    render_chat(template, &with_tools, None, true, max_bytes)
}

/// A call parsed from a reply.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text (OpenAI's format).
    pub arguments: String,
}

/// The call a reply makes, if it is one (`{"name": <a tool>, "arguments": {...}}`).
pub fn parse_call(reply: &str, tools: &[Tool]) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(reply.trim()).ok()?;
    let name = v.get("name")?.as_str()?;
    let args = v.get("arguments")?;
    (args.is_object() && tools.iter().any(|t| t.function.name == name)).then(|| ToolCall { name: name.into(), arguments: args.to_string() })
}
