//! What a model response says it used, read as its bytes pass (no I/O): an SSE stream's
//! `message_start` usage updated by each `message_delta` usage (whose counts are
//! cumulative), or a JSON body's `usage`. And what that costs, from `model.prices`.
//!
//! The scanner keeps only the line being read, and only while it may be the data of one of
//! the two events that carry usage (by the `event:` line before it): every other line is
//! skipped as it arrives, so a long answer costs a scan for `\n`, never a copy or a parse.

use common::config::ModelPrice;

/// A JSON body longer than this is passed on without its usage being read.
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;
/// How much of a line is looked at to decide whether it carries usage.
const HEAD: usize = 64;

/// Tokens of one model request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
}

impl Tokens {
    /// Overrides the counts `usage` has.
    fn update(&mut self, usage: &Counts) {
        if let Some(v) = usage.input_tokens {
            self.input = v;
        }
        if let Some(v) = usage.output_tokens {
            self.output = v;
        }
        if let Some(v) = usage.cache_read_input_tokens {
            self.cache_read = v;
        }
        if let Some(v) = usage.cache_creation_input_tokens {
            self.cache_creation = v;
        }
    }
}

/// An API `usage` object: only the counts read (typed, so the rest of a response is
/// skipped by the parser rather than built into a tree: this runs on every response).
#[derive(Debug, Default, serde::Deserialize)]
struct Counts {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

/// A message (a JSON body, or `message_start`'s `message`), as far as it is read.
#[derive(Debug, Default, serde::Deserialize)]
struct Message {
    model: Option<String>,
    usage: Option<Counts>,
}

/// An SSE event's data, as far as it is read.
#[derive(Debug, serde::Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    message: Option<Message>,
    usage: Option<Counts>,
}

/// What a response reported, once it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The model that answered (the response's `model`).
    pub model: String,
    pub tokens: Tokens,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sse,
    Json,
}

/// Reads usage out of a response body fed chunk by chunk.
#[derive(Debug)]
pub struct Scanner {
    kind: Kind,
    /// SSE: the current line while it may carry usage; JSON: the body so far.
    buffer: Vec<u8>,
    /// SSE: the rest of the current line is skipped.
    skipping: bool,
    /// JSON: the body outgrew [`MAX_JSON_BODY`].
    overflow: bool,
    /// SSE: the current event's name (its `event:` line).
    event: Option<Vec<u8>>,
    model: Option<String>,
    tokens: Option<Tokens>,
}

impl Scanner {
    /// A scanner for a response with this `content-type`; `None` when it carries no usage
    /// we read (not SSE, not JSON).
    pub fn for_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let kind = match essence.as_str() {
            "text/event-stream" => Kind::Sse,
            "application/json" => Kind::Json,
            _ => return None,
        };
        Some(Self {
            kind,
            buffer: Vec::new(),
            skipping: false,
            overflow: false,
            event: None,
            model: None,
            tokens: None,
        })
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self.kind {
            Kind::Json => {
                if self.overflow {
                    return;
                }
                if self.buffer.len() + chunk.len() > MAX_JSON_BODY {
                    self.overflow = true;
                    self.buffer = Vec::new();
                } else {
                    self.buffer.extend_from_slice(chunk);
                }
            }
            Kind::Sse => self.feed_sse(chunk),
        }
    }

    fn feed_sse(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let (part, rest, ends) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            chunk = rest;
            if !self.skipping {
                self.buffer.extend_from_slice(part);
                if self.buffer.len() >= HEAD && !self.keep(&self.buffer[..HEAD]) {
                    self.skipping = true;
                    self.buffer.clear();
                }
            }
            if ends {
                if !self.skipping {
                    let line = std::mem::take(&mut self.buffer);
                    self.line(&line);
                }
                self.skipping = false;
                self.buffer.clear();
            }
        }
    }

    /// Whether a line starting with `head` is worth keeping whole.
    fn keep(&self, head: &[u8]) -> bool {
        if head.starts_with(b"event:") {
            return head.len() < 256;
        }
        if !head.starts_with(b"data:") {
            return false;
        }
        match &self.event {
            Some(name) => matches!(name.as_slice(), b"message_start" | b"message_delta"),
            // No `event:` line: the API writes `data: {"type":"message_…"` first.
            None => {
                let head = &head[..head.len().min(HEAD)];
                contains(head, b"message_start") || contains(head, b"message_delta")
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.event = None;
            return;
        }
        if let Some(name) = line.strip_prefix(b"event:") {
            self.event = Some(name.trim_ascii().to_vec());
            return;
        }
        if !self.keep(line) {
            return;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(event) = serde_json::from_slice::<Event>(data) else {
            return;
        };
        match event.kind.as_str() {
            "message_start" => {
                let message = event.message.unwrap_or_default();
                if let Some(model) = message.model {
                    self.model = Some(model);
                }
                if let Some(usage) = &message.usage {
                    self.tokens.get_or_insert_default().update(usage);
                }
            }
            "message_delta" => {
                if let Some(usage) = &event.usage {
                    self.tokens.get_or_insert_default().update(usage);
                }
            }
            _ => {}
        }
    }

    /// What the body reported; `None` without usage. Call once the body ended (or was cut:
    /// an SSE stream reports what it had so far).
    pub fn finish(mut self) -> Option<Usage> {
        if self.kind == Kind::Json && !self.overflow {
            let body: Message = serde_json::from_slice(&self.buffer).ok()?;
            if let Some(usage) = &body.usage {
                self.tokens.get_or_insert_default().update(usage);
            }
            self.model = body.model;
        } else if self.kind == Kind::Sse && !self.skipping && !self.buffer.is_empty() {
            // A last line without its newline.
            let line = std::mem::take(&mut self.buffer);
            self.line(&line);
        }
        Some(Usage {
            model: self.model.unwrap_or_default(),
            tokens: self.tokens?,
        })
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The prices of `model`: the longest matching prefix in `prices`.
pub fn price_of<'a>(prices: &'a [ModelPrice], model: &str) -> Option<&'a ModelPrice> {
    prices
        .iter()
        .filter(|p| model.starts_with(p.model.as_str()))
        .max_by_key(|p| p.model.len())
}

/// USD for `tokens` at `price` (per million tokens).
pub fn cost_usd(price: &ModelPrice, tokens: &Tokens) -> f64 {
    (tokens.input as f64 * price.input
        + tokens.output as f64 * price.output
        + tokens.cache_read as f64 * price.cache_read
        + tokens.cache_creation as f64 * price.cache_write)
        / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn sse(events: &[(&str, Value)]) -> Vec<u8> {
        let mut out = String::new();
        for (name, data) in events {
            out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
        }
        out.into_bytes()
    }

    fn stream() -> Vec<u8> {
        let long = "x".repeat(10_000);
        sse(&[
            (
                "message_start",
                serde_json::json!({"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
                "content": [], "usage": {"input_tokens": 1200, "cache_creation_input_tokens": 30,
                "cache_read_input_tokens": 400, "output_tokens": 1}}}),
            ),
            ("ping", serde_json::json!({"type": "ping"})),
            (
                "content_block_delta",
                serde_json::json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": long}}),
            ),
            (
                "content_block_delta",
                serde_json::json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "data: {\"type\":\"message_delta\" in text"}}),
            ),
            (
                "message_delta",
                serde_json::json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 321}}),
            ),
            ("message_stop", serde_json::json!({"type": "message_stop"})),
        ])
    }

    fn expected() -> Usage {
        Usage {
            model: "claude-sonnet-4-5-20250929".into(),
            tokens: Tokens {
                input: 1200,
                output: 321,
                cache_read: 400,
                cache_creation: 30,
            },
        }
    }

    #[test]
    fn a_stream_reports_start_usage_updated_by_the_delta() {
        let mut scanner = Scanner::for_content_type("text/event-stream; charset=utf-8").unwrap();
        scanner.feed(&stream());
        assert_eq!(scanner.finish(), Some(expected()));
    }

    #[test]
    fn a_json_body_reports_its_usage() {
        let body = serde_json::json!({"id": "msg_1", "type": "message", "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": "hi"}],
            "usage": {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 3,
                      "cache_creation_input_tokens": 4}});
        let mut scanner = Scanner::for_content_type("application/json").unwrap();
        let bytes = body.to_string().into_bytes();
        scanner.feed(&bytes[..7]);
        scanner.feed(&bytes[7..]);
        assert_eq!(
            scanner.finish(),
            Some(Usage {
                model: "claude-haiku-4-5".into(),
                tokens: Tokens {
                    input: 10,
                    output: 2,
                    cache_read: 3,
                    cache_creation: 4
                }
            })
        );
        let mut error = Scanner::for_content_type("application/json").unwrap();
        error.feed(br#"{"type":"error","error":{"type":"rate_limit_error"}}"#);
        assert_eq!(error.finish(), None);
        assert!(Scanner::for_content_type("text/plain").is_none());
    }

    #[test]
    fn prices_match_the_longest_prefix() {
        let p = |model: &str, input: f64| ModelPrice {
            model: model.into(),
            input,
            output: 0.0,
            cache_read: 0.0,
            cache_write: 0.0,
        };
        let prices = [
            p("", 15.0),
            p("claude-opus-4", 10.0),
            p("claude-opus-4-5", 5.0),
        ];
        assert_eq!(
            price_of(&prices, "claude-opus-4-5-2025").unwrap().input,
            5.0
        );
        assert_eq!(price_of(&prices, "claude-opus-4-1").unwrap().input, 10.0);
        assert_eq!(price_of(&prices, "other").unwrap().input, 15.0);
        assert!(price_of(&prices[1..], "other").is_none());
        let tokens = Tokens {
            input: 1_000_000,
            output: 0,
            cache_read: 0,
            cache_creation: 0,
        };
        assert_eq!(cost_usd(&prices[2], &tokens), 5.0);
    }

    proptest! {
        /// However the stream is cut into chunks, the same usage comes out.
        #[test]
        fn chunking_does_not_change_the_usage(cuts in proptest::collection::vec(0usize..12_000, 0..40)) {
            let bytes = stream();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % bytes.len()).collect();
            cuts.sort_unstable();
            let mut scanner = Scanner::for_content_type("text/event-stream").unwrap();
            let mut from = 0;
            for cut in cuts {
                scanner.feed(&bytes[from..cut]);
                from = cut;
            }
            scanner.feed(&bytes[from..]);
            prop_assert_eq!(scanner.finish(), Some(expected()));
        }

        /// Arbitrary bytes never panic and a body of other lines reports nothing.
        #[test]
        fn other_bytes_report_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..2_000)) {
            let mut scanner = Scanner::for_content_type("text/event-stream").unwrap();
            scanner.feed(&bytes);
            let _ = scanner.finish();
        }
    }
}
