//! Content-based routing: parses each value as a JSON object, tags it and
//! picks the output topic from one of its fields. Exercised by
//! tests/tests/runtime.rs.
//!
//! A value that is not a JSON object (invalid JSON included) is a permanent
//! error quoting the parser's line and column, so it is dead-lettered rather
//! than retried. The key and headers are kept.
//!
//! The whole value is parsed and checked, but only the route field is
//! interpreted: every member keeps its place and the exact text of its value,
//! so numbers too large or too precise for a float pass through unchanged.
//! A name that repeats keeps its first place and its last value.
//!
//! Route config:
//! - `route_field`: the field to look at (default `priority`).
//! - `route_value`: the value that routes to `high_topic` (default `high`).
//!   A JSON string matches its contents; any other JSON value matches when
//!   `route_value` parses as that JSON, so `"true"` matches `true` and `"2"`
//!   matches `2`.
//! - `high_topic`: default `<input topic>.high`.
//! - `default_topic`: everything else, default `<input topic>.default`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use sluice_guest::{HandlerError, Message, Output};

/// Cheaper allocations than the standard allocator's (see
/// `sluice_guest::Allocator`).
#[global_allocator]
static ALLOCATOR: sluice_guest::Allocator = sluice_guest::Allocator::new();

/// The member this handler adds to every object.
const TAG: (&str, &str) = ("routed_by", r#""json-router""#);

struct JsonRouter;

/// The route's settings. The config never changes during an instance's
/// life, so they are read at its first message.
struct Route {
    field: String,
    value: String,
    high_topic: Option<String>,
    default_topic: Option<String>,
}

thread_local! {
    static ROUTE: Route = Route {
        field: sluice_guest::config_or("route_field", "priority"),
        value: sluice_guest::config_or("route_value", "high"),
        high_topic: sluice_guest::config("high_topic"),
        default_topic: sluice_guest::config("default_topic"),
    };
}

impl sluice_guest::Handler for JsonRouter {
    fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
        let value = msg
            .value
            .as_deref()
            .ok_or_else(|| HandlerError::permanent("message has no value"))?;
        // Checked as UTF-8 once here, the parser need not check each member.
        let text =
            std::str::from_utf8(value).map_err(|e| not_an_object(&invalid_utf8(value, &e)))?;
        let mut object: Members<'_> = serde_json::from_str(text).map_err(|e| not_an_object(&e))?;

        let topic = ROUTE.with(|route| {
            let high = object
                .get(&route.field)
                .is_some_and(|v| matches(v, &route.value));
            match (high, &route.high_topic, &route.default_topic) {
                (true, Some(topic), _) | (false, _, Some(topic)) => topic.clone(),
                (true, None, _) => format!("{}.high", msg.topic),
                (false, _, None) => format!("{}.default", msg.topic),
            }
        });

        object.set(TAG.0, raw(TAG.1));
        let out = Output::to(topic).value(object.to_json(value.len() + 32));
        Ok(vec![Output {
            key: msg.key,
            headers: msg.headers,
            ..out
        }])
    }
}

/// A JSON object's members in their order, each value as its own text:
/// checked by the parser, never turned into numbers, strings or maps.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// `members` with each repeated name kept at its first place, with its
    /// last value.
    fn unique(mut members: Vec<(Cow<'a, str>, &'a RawValue)>) -> Self {
        // Objects are usually small: comparing each name with those before
        // it is then cheapest. A large one is sorted, so that an object of
        // many members costs no more than a map would.
        if members.len() <= 16 {
            let mut i = 1;
            while i < members.len() {
                match members[..i].iter().position(|(n, _)| *n == members[i].0) {
                    Some(first) => members[first].1 = members.remove(i).1,
                    None => i += 1,
                }
            }
            return Members(members);
        }
        let mut order: Vec<usize> = (0..members.len()).collect();
        // Stable: members of one name stay in their order.
        order.sort_by(|&a, &b| members[a].0.cmp(&members[b].0));
        let mut repeated = vec![false; members.len()];
        // Runs of one name in `order`: the first member takes the last value.
        let mut start = 0;
        while start < order.len() {
            let name = &members[order[start]].0;
            let end = start + order[start..].partition_point(|&i| members[i].0 == *name);
            let (first, last) = (order[start], order[end - 1]);
            members[first].1 = members[last].1;
            order[start + 1..end]
                .iter()
                .for_each(|&i| repeated[i] = true);
            start = end;
        }
        let mut index = 0;
        members.retain(|_| {
            index += 1;
            !repeated[index - 1]
        });
        Members(members)
    }

    /// The value of member `name`.
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    /// Sets member `name` to `value`, in place when it is already there,
    /// otherwise at the end.
    fn set(&mut self, name: &'a str, value: &'a RawValue) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(member) => member.1 = value,
            None => self.0.push((Cow::Borrowed(name), value)),
        }
    }

    /// The object as compact JSON (values keep their own spacing).
    fn to_json(&self, capacity: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(capacity);
        out.push(b'{');
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match name {
                // Taken from the input as it was: it had no escapes, so it
                // needs none (JSON text holds no bare quotes, backslashes or
                // control characters inside a string).
                Cow::Borrowed(name) => {
                    out.push(b'"');
                    out.extend_from_slice(name.as_bytes());
                    out.push(b'"');
                }
                // Writing a string into a `Vec` cannot fail.
                Cow::Owned(name) => drop(serde_json::to_writer(&mut out, name)),
            }
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Name(name)) = map.next_key()? {
                    members.push((name, map.next_value()?));
                }
                Ok(Members::unique(members))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// A member's name, borrowed from the input unless it had escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;

        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }

            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }

            fn visit_string<E>(self, s: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s)))
            }
        }

        deserializer.deserialize_str(NameVisitor)
    }
}

fn not_an_object(reason: &dyn fmt::Display) -> HandlerError {
    HandlerError::permanent(format!("message value is not a JSON object: {reason}"))
}

/// Where `value` stops being UTF-8, as a JSON parser would say it.
fn invalid_utf8(value: &[u8], error: &std::str::Utf8Error) -> String {
    let before = &value[..error.valid_up_to()];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.len()
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    format!("invalid UTF-8 at line {line} column {column}")
}

/// `text`, which is valid JSON, as a raw value.
fn raw(text: &'static str) -> &'static RawValue {
    serde_json::from_str(text).unwrap_or_else(|e| unreachable!("{text} is JSON: {e}"))
}

/// Whether a field's value equals the configured (textual) route value.
fn matches(value: &RawValue, wanted: &str) -> bool {
    if value.get().starts_with('"') {
        serde_json::from_str::<Name<'_>>(value.get()).is_ok_and(|Name(s)| s == wanted)
    } else {
        let parse = serde_json::from_str::<Value>;
        parse(wanted).is_ok_and(|wanted| parse(value.get()).is_ok_and(|v| v == wanted))
    }
}

sluice_guest::export!(JsonRouter);
