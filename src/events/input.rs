//! Event arguments as possync reads them. A `jsonb` argument is taken as its text and parsed here, so that a
//! value the JSON reader refuses (nested past its recursion limit) becomes a rejected event kept with its reason,
//! not an internal error that fails the whole call. An array's elements are read one by one, so one such element
//! does not take the others with it.

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::Value;

/// A `jsonb` argument, as its text.
pub struct JsonbText(pub String);

impl FromDatum for JsonbText {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<JsonbText> {
        if is_null {
            return None;
        }
        // jsonb_out detoasts and renders the canonical text, as a palloc'd C string
        let cstr = unsafe {
            pgrx::direct_function_call::<&core::ffi::CStr>(pg_sys::jsonb_out, &[Some(datum)])
        }?;
        let text = cstr.to_string_lossy().into_owned();
        unsafe { pg_sys::pfree(cstr.as_ptr() as *mut core::ffi::c_void) };
        Some(JsonbText(text))
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for JsonbText {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe {
            arg.unbox_arg_using_from_datum()
                .unwrap_or_else(|| panic!("argument {index} must not be null"))
        }
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum().into() }
    }
}

pgrx::pgrx_sql_entity_graph::impl_sql_translatable!(JsonbText, arg_only = "jsonb");

/// One event as read: a JSON value, or text that could not be read with why.
#[derive(Debug, Clone)]
pub enum Read {
    Value(Value),
    Unreadable { text: String, reason: String },
}

/// Reads one value.
pub fn read_one(text: &str) -> Read {
    match serde_json::from_str(text) {
        Ok(v) => Read::Value(v),
        Err(e) => Read::Unreadable {
            text: text.to_string(),
            reason: unreadable_reason(&e),
        },
    }
}

fn unreadable_reason(e: &serde_json::Error) -> String {
    if e.to_string().contains("recursion limit") {
        format!(
            "the event nests objects and arrays more than {} levels deep",
            possync_events::domain::MAX_DEPTH
        )
    } else {
        format!("the event is not readable JSON: {e}")
    }
}

/// Reads an array's elements one by one; Err names the JSON type when the value is not an array.
pub fn read_array(text: &str) -> Result<Vec<Read>, &'static str> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => Ok(items.into_iter().map(Read::Value).collect()),
        Ok(other) => Err(possync_events::json_type_name(&other)),
        Err(_) => match split_array(text) {
            Some(parts) => Ok(parts.into_iter().map(read_one).collect()),
            None => Err("unreadable JSON"),
        },
    }
}

/// The top-level elements of a JSON array's text (as jsonb_out renders it), without parsing them.
fn split_array(text: &str) -> Option<Vec<&str>> {
    let b = text.as_bytes();
    let open = b.iter().position(|c| !c.is_ascii_whitespace())?;
    if b[open] != b'[' {
        return None;
    }
    let mut parts = Vec::new();
    let (mut depth, mut start, mut in_string, mut escaped) = (0usize, None, false, false);
    for (j, &c) in b.iter().enumerate().skip(open + 1) {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                start.get_or_insert(j);
            }
            b'[' | b'{' => {
                depth += 1;
                start.get_or_insert(j);
            }
            b']' | b'}' if depth == 0 => {
                parts.extend(start.take().map(|s| text[s..j].trim()));
                return Some(parts);
            }
            b']' | b'}' => depth -= 1,
            b',' if depth == 0 => parts.extend(start.take().map(|s| text[s..j].trim())),
            c if c.is_ascii_whitespace() => {}
            _ => {
                start.get_or_insert(j);
            }
        }
    }
    None
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn splits_top_level_elements_only() {
        let parts = split_array(r#" [ {"a": [1, {"b": "x,]}"}]}, "s\"t", 3 , [[]] ] "#);
        assert_eq!(
            parts,
            Some(vec![
                r#"{"a": [1, {"b": "x,]}"}]}"#,
                r#""s\"t""#,
                "3",
                "[[]]"
            ])
        );
        assert_eq!(split_array("[]"), Some(vec![]));
        assert_eq!(split_array("{}"), None);
    }

    #[test]
    fn a_too_deep_element_is_unreadable_and_the_others_are_read() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let text = format!(
            r#"[{{"event_id": "a"}}, {{"event_id": "b", "x": {deep}}}, {{"event_id": "c"}}]"#
        );
        let items = read_array(&text).expect("an array");
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[0], Read::Value(v) if v["event_id"] == "a"));
        assert!(
            matches!(&items[1], Read::Unreadable { reason, text } if reason.contains("levels deep") && text.starts_with(r#"{"event_id": "b""#))
        );
        assert!(matches!(&items[2], Read::Value(v) if v["event_id"] == "c"));
    }
}
