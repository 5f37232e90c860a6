//! Keeps docs/protocol.md honest: every ```json block must carry a `<!-- type: X -->` comment
//! naming the model type it documents, parse as that type, and survive a serialize → parse
//! round trip unchanged.

use std::fmt::Debug;

use riptide::ript::model::{
    Advertisement, CallDescription, CallRequest, CallTake, Event, Handler, ProblemBody,
    TgDescription, TgList,
};
use serde::{de::DeserializeOwned, Serialize};

struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    type_name: Option<String>,
    body: String,
}

fn json_blocks(doc: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    // The type comment applies only if nothing but blank lines separates it from the fence.
    let mut last_type: Option<String> = None;
    let mut lines = doc.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("<!-- type:") {
            let name = rest.trim_end_matches("-->").trim().to_string();
            last_type = Some(name);
            continue;
        }
        if t.starts_with("```") {
            let is_json = t == "```json";
            let mut body = String::new();
            for (_, l) in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            if is_json {
                blocks.push(Block {
                    line: i + 1,
                    type_name: last_type.take(),
                    body,
                });
            }
            last_type = None;
            continue;
        }
        if !t.is_empty() {
            last_type = None;
        }
    }
    blocks
}

fn check<T: DeserializeOwned + Serialize + PartialEq + Debug>(b: &Block) -> Result<(), String> {
    let v: T = serde_json::from_str(&b.body).map_err(|e| format!("does not parse: {e}"))?;
    let again = serde_json::to_string(&v).map_err(|e| format!("does not serialize: {e}"))?;
    let back: T = serde_json::from_str(&again)
        .map_err(|e| format!("re-serialized form {again} does not parse: {e}"))?;
    if back != v {
        return Err(format!(
            "round trip changed the value:\n{v:?}\nvs\n{back:?}"
        ));
    }
    Ok(())
}

fn dispatch(b: &Block, type_name: &str) -> Result<(), String> {
    match type_name {
        "TgList" => check::<TgList>(b),
        "TgDescription" => check::<TgDescription>(b),
        "Handler" => check::<Handler>(b),
        "CallRequest" => check::<CallRequest>(b),
        "CallDescription" => check::<CallDescription>(b),
        "CallTake" => check::<CallTake>(b),
        "Event" => check::<Event>(b),
        "Vec<Event>" => check::<Vec<Event>>(b),
        "ProblemBody" => check::<ProblemBody>(b),
        "Advertisement" => check::<Advertisement>(b),
        other => Err(format!("unknown type name {other:?} in the type comment")),
    }
}

fn protocol_doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

#[test]
fn every_json_example_parses_as_its_documented_type() {
    let doc = protocol_doc();
    let blocks = json_blocks(&doc);
    assert!(
        blocks.len() >= 10,
        "expected the doc's JSON examples, found {}",
        blocks.len()
    );
    let mut failures = Vec::new();
    for b in &blocks {
        let result = match &b.type_name {
            Some(t) => dispatch(b, t),
            None => Err("no `<!-- type: X -->` comment right before the block".to_string()),
        };
        if let Err(e) = result {
            failures.push(format!("docs/protocol.md:{}: {e}", b.line));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_event_name_is_documented_with_an_example() {
    let doc = protocol_doc();
    for name in [
        "proceeding",
        "alerting",
        "answered",
        "declined",
        "failed",
        "noanswer",
        "end",
        "ping",
        "pong",
        "migrate",
        "media-panic",
        "hold",
        "incoming",
    ] {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "event {name} missing from the event table"
        );
    }
    let examples: Vec<Event> = json_blocks(&doc)
        .iter()
        .filter_map(|b| match b.type_name.as_deref() {
            Some("Event") => serde_json::from_str::<Event>(&b.body).ok().map(|e| vec![e]),
            Some("Vec<Event>") => serde_json::from_str(&b.body).ok(),
            _ => None,
        })
        .flatten()
        .collect();
    for name in [
        "alerting", "answered", "failed", "end", "migrate", "hold", "ping", "pong", "incoming",
    ] {
        assert!(
            examples.iter().any(|e| e.name.as_str() == name),
            "no JSON example of event {name}"
        );
    }
}

#[test]
fn extractor_flags_untyped_and_mistyped_blocks() {
    let doc = "<!-- type: Event -->\n```json\n{\"name\":\"ping\"}\n```\n\
               text\n\n```json\n{}\n```\n\
               <!-- type: Event -->\nsome prose in between\n```json\n{\"name\":\"pong\"}\n```\n\
               <!-- type: TgList -->\n```json\n{\"tgs\": 5}\n```\n";
    let blocks = json_blocks(doc);
    assert_eq!(blocks.len(), 4);
    assert_eq!(blocks[0].type_name.as_deref(), Some("Event"));
    assert!(dispatch(&blocks[0], "Event").is_ok());
    assert_eq!(blocks[1].type_name, None);
    assert_eq!(
        blocks[2].type_name, None,
        "a comment separated by prose does not count"
    );
    assert!(dispatch(&blocks[3], "TgList").is_err());
    assert!(dispatch(&blocks[0], "Nonsense").is_err());
}
