//! `possync.json_object_present(VARIADIC "any")`: the JSON object of its key/value pairs, without the pairs
//! whose value is NULL. It makes the same JSON as `json_strip_nulls(json_build_object(...))`, in one pass.
//!
//! The bridge builds each event of a normalized POS in SQL (see the bridge's `document` module), an object per
//! event, per line and per tender. PostgreSQL 15's `json_build_object` works out how to write each argument
//! (its base type, whether it is an array, a row, a number, its output function) on every call, with several
//! catalog cache lookups per argument; `json_strip_nulls` then lexes the whole event again to drop the null
//! fields. A profile of the normalized drain found the two to be about a third of a document's evaluation.
//! This function works out each argument's category once per call site (cached in `fn_extra`) and leaves out
//! NULL values as it writes, so nothing is parsed again.
//!
//! The JSON is equal, as jsonb, to what the two builtins make (the test compares them over generated values of
//! every category; whitespace inside a json value may differ), and the same values are refused: numbers as their output when that is a JSON number (else a string, such as "NaN"), booleans,
//! dates and timestamps as `to_json` writes them, any other scalar as the string of its output. A value that is
//! itself JSON (json, jsonb, an array, a row, a type with a cast to json) is written as the builtins write it,
//! with the null fields of its objects left out as `json_strip_nulls` leaves them out; a pair whose value is
//! JSON `null` is left out too.

use std::ffi::CStr;

use pgrx::fcinfo::direct_function_call_as_datum;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// How an argument is written: PostgreSQL's own JSON categories (json.c), for the base type of a domain, with
/// the integers and the text types written here rather than through their output functions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Category {
    Bool,
    Int2,
    Int4,
    Int8,
    /// float and numeric: their output, as a number when it is a JSON number
    Number,
    DateTime,
    /// text, varchar, char(n): their characters, as a string
    Text,
    /// json: its text
    Json,
    /// jsonb: its output
    Jsonb,
    Array,
    Composite,
    /// a type of the database's own with a cast to json: the cast function
    Cast,
    /// any other scalar: the string of its output
    Other,
}

/// What the first call at a call site works out for one argument, kept in `fn_extra` for the following ones.
#[repr(C)]
struct Arg {
    category: Category,
    /// the base type
    typoid: pg_sys::Oid,
    /// the output function (Number, Jsonb, Other) or the cast function (Cast)
    func: pg_sys::FmgrInfo,
    /// a text key as the first call gave it (its characters, then the same written as JSON), in the call
    /// site's memory: a later call whose key has the same characters writes the JSON kept here (a key is
    /// compared, not assumed constant: from PL/pgSQL a variable is a parameter whose value changes between
    /// calls of one call site)
    key: *mut u8,
    key_raw_len: usize,
    key_len: usize,
}

/// PostgreSQL's `json_categorize_type` (PostgreSQL 15), with its function looked up once.
unsafe fn categorize(typoid: pg_sys::Oid, cxt: pg_sys::MemoryContext, arg: &mut Arg) {
    let base = pg_sys::getBaseType(typoid);
    arg.typoid = base;
    let mut func = pg_sys::InvalidOid;
    let mut varlena = false;
    let output = |func: &mut pg_sys::Oid, varlena: &mut bool| {
        pg_sys::getTypeOutputInfo(base, func, varlena);
    };
    arg.category = match base {
        pg_sys::BOOLOID => Category::Bool,
        pg_sys::INT2OID => Category::Int2,
        pg_sys::INT4OID => Category::Int4,
        pg_sys::INT8OID => Category::Int8,
        pg_sys::FLOAT4OID | pg_sys::FLOAT8OID | pg_sys::NUMERICOID => {
            output(&mut func, &mut varlena);
            Category::Number
        }
        pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => Category::DateTime,
        // their output functions give their characters as they are
        pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => Category::Text,
        pg_sys::JSONOID => Category::Json,
        pg_sys::JSONBOID => {
            output(&mut func, &mut varlena);
            Category::Jsonb
        }
        _ if pg_sys::get_element_type(base) != pg_sys::InvalidOid
            || base == pg_sys::ANYARRAYOID
            || base == pg_sys::ANYCOMPATIBLEARRAYOID
            || base == pg_sys::RECORDARRAYOID =>
        {
            Category::Array
        }
        _ if pg_sys::type_is_rowtype(base) => Category::Composite,
        _ => {
            let mut cast = pg_sys::InvalidOid;
            let path = if u32::from(base) >= pg_sys::FirstNormalObjectId {
                pg_sys::find_coercion_pathway(
                    pg_sys::JSONOID,
                    base,
                    pg_sys::CoercionContext::COERCION_EXPLICIT,
                    &mut cast,
                )
            } else {
                pg_sys::CoercionPathType::COERCION_PATH_NONE
            };
            if path == pg_sys::CoercionPathType::COERCION_PATH_FUNC && cast != pg_sys::InvalidOid {
                func = cast;
                Category::Cast
            } else {
                output(&mut func, &mut varlena);
                Category::Other
            }
        }
    };
    if func != pg_sys::InvalidOid {
        pg_sys::fmgr_info_cxt(func, &mut arg.func, cxt);
    }
}

/// Whether `s` is a JSON number, as PostgreSQL's `IsValidJsonNumber` judges the output of a number type:
/// an optional minus, an integer part without leading zeros, an optional fraction and exponent.
fn is_json_number(s: &[u8]) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && s[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if s.get(i) == Some(&b'-') {
        i += 1;
    }
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == s.len()
}

/// The characters of a text-like varlena datum (text, varchar, char(n), json), detoasted when they have to be.
/// Borrowed from the datum, or from its detoasted copy in the current memory context.
unsafe fn text_bytes<'a>(value: pg_sys::Datum) -> &'a [u8] {
    let mut ptr = value.cast_mut_ptr::<pg_sys::varlena>();
    if pgrx::varlena::varatt_is_1b_e(ptr) || pgrx::varlena::varatt_is_4b_c(ptr) {
        ptr = pg_sys::pg_detoast_datum_packed(ptr);
    }
    std::slice::from_raw_parts(
        pgrx::varlena::vardata_any(ptr).cast::<u8>(),
        pgrx::varlena::varsize_any_exhdr(ptr),
    )
}

/// Appends `s` as a JSON string, escaped as PostgreSQL's `escape_json` escapes it.
fn push_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &c in s {
        match c {
            0 => break,
            b'\x08' => out.extend_from_slice(b"\\b"),
            b'\x0c' => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            c if c < b' ' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 15)]);
            }
            c => out.push(c),
        }
    }
    out.push(b'"');
}

/// A JSON text with the null fields of its objects left out, as `json_strip_nulls` leaves them out: the text as
/// it is when it holds no `null` and no `\u` escape (the common case: nothing to parse), else through
/// `json_strip_nulls`.
/// `datum` is the same text as a json datum when the caller has one.
unsafe fn push_json(out: &mut Vec<u8>, text: &[u8], datum: Option<pg_sys::Datum>) -> bool {
    // a \u escape goes through json_strip_nulls too: it refuses those the builtins refuse (\u0000, a code point
    // the server encoding lacks) where they refuse them, in the value's own expression
    let stripped: &[u8] =
        if text.windows(4).any(|w| w == b"null") || text.windows(2).any(|w| w == b"\\u") {
            let json = datum.unwrap_or_else(|| {
                pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
                    text.as_ptr().cast(),
                    i32::try_from(text.len()).unwrap_or(i32::MAX),
                ))
            });
            match direct_function_call_as_datum(pg_sys::json_strip_nulls, &[Some(json)]) {
                Some(d) => text_bytes(d),
                None => return false,
            }
        } else {
            text
        };
    // a pair whose value is JSON null is left out, as json_strip_nulls leaves it out
    if stripped.trim_ascii() == b"null" {
        return false;
    }
    out.extend_from_slice(stripped);
    true
}

/// [`push_json`] of a json datum (None or a null pointer: SQL NULL, left out as JSON `null` is).
unsafe fn push_json_datum(out: &mut Vec<u8>, json: Option<pg_sys::Datum>) -> bool {
    match json {
        Some(d) if !d.is_null() => push_json(out, text_bytes(d), Some(d)),
        _ => false,
    }
}

/// Writes a value as PostgreSQL's `datum_to_json` writes it (as a key, `key`: always as a string). False when
/// it is JSON `null` and nothing was written.
unsafe fn push_value(out: &mut Vec<u8>, arg: &mut Arg, value: pg_sys::Datum, key: bool) -> bool {
    let int = |out: &mut Vec<u8>, text: &str| {
        if key {
            push_string(out, text.as_bytes());
        } else {
            out.extend_from_slice(text.as_bytes());
        }
    };
    match arg.category {
        Category::Bool => int(out, if value.value() != 0 { "true" } else { "false" }),
        // pass-by-value: the low bytes of the datum
        Category::Int2 => int(out, &(value.value() as i16).to_string()),
        Category::Int4 => int(out, &(value.value() as i32).to_string()),
        Category::Int8 => int(out, &(value.value() as i64).to_string()),
        Category::Number => {
            let text = CStr::from_ptr(pg_sys::OutputFunctionCall(&mut arg.func, value)).to_bytes();
            if !key && is_json_number(text) {
                out.extend_from_slice(text);
            } else {
                push_string(out, text);
            }
        }
        Category::DateTime => {
            let text = pg_sys::JsonEncodeDateTime(
                std::ptr::null_mut(),
                value,
                arg.typoid,
                std::ptr::null(),
            );
            out.push(b'"');
            out.extend_from_slice(CStr::from_ptr(text).to_bytes());
            out.push(b'"');
        }
        Category::Text => push_string(out, text_bytes(value)),
        Category::Other => push_string(
            out,
            CStr::from_ptr(pg_sys::OutputFunctionCall(&mut arg.func, value)).to_bytes(),
        ),
        Category::Json => return push_json_datum(out, Some(value)),
        Category::Jsonb => {
            let text = CStr::from_ptr(pg_sys::OutputFunctionCall(&mut arg.func, value)).to_bytes();
            return push_json(out, text, None);
        }
        Category::Array => {
            return push_json_datum(
                out,
                direct_function_call_as_datum(pg_sys::array_to_json, &[Some(value)]),
            )
        }
        Category::Composite => {
            return push_json_datum(
                out,
                direct_function_call_as_datum(pg_sys::row_to_json, &[Some(value)]),
            )
        }
        Category::Cast => {
            return push_json_datum(
                out,
                Some(pg_sys::FunctionCall1Coll(
                    &mut arg.func,
                    pg_sys::InvalidOid,
                    value,
                )),
            )
        }
    }
    true
}

fn invalid(message: String, hint: &str) -> ! {
    crate::errors::misuse(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        hint,
    )
}

/// The C entry point of `possync.json_object_present(VARIADIC "any") RETURNS json` (sql/finalize.sql).
///
/// # Safety
/// Called by PostgreSQL's function manager with a valid `fcinfo` for that declaration.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn possync_json_object_present(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    const FUNCTION: &str = "possync.json_object_present";
    let fc = &mut *fcinfo;
    let flinfo = &mut *fc.flinfo;
    let nargs = usize::try_from(fc.nargs).unwrap_or(0);
    if pg_sys::get_fn_expr_variadic(flinfo) {
        invalid(
            format!("{FUNCTION}: give the keys and values as arguments, not as one VARIADIC array"),
            "call possync.json_object_present('key', value, ...)",
        );
    }
    if nargs % 2 != 0 {
        invalid(
            format!(
                "{FUNCTION}: the arguments must be keys and values in pairs; {nargs} were given"
            ),
            "give a value after every key",
        );
    }
    if flinfo.fn_extra.is_null() {
        let args = pg_sys::MemoryContextAllocZero(
            flinfo.fn_mcxt,
            nargs.max(1) * std::mem::size_of::<Arg>(),
        )
        .cast::<Arg>();
        for i in 0..nargs {
            let typoid = pg_sys::get_fn_expr_argtype(flinfo, i32::try_from(i).unwrap_or(i32::MAX));
            if typoid == pg_sys::InvalidOid {
                invalid(
                    format!(
                        "{FUNCTION}: the type of argument {} cannot be determined",
                        i + 1
                    ),
                    "cast the argument to a type",
                );
            }
            categorize(typoid, flinfo.fn_mcxt, &mut *args.add(i));
            if i % 2 == 0
                && matches!(
                    (*args.add(i)).category,
                    Category::Json
                        | Category::Jsonb
                        | Category::Array
                        | Category::Composite
                        | Category::Cast
                )
            {
                invalid(
                    format!("{FUNCTION}: key (argument {}) must be a scalar, not an array, a row or json", i + 1),
                    "give each key as text",
                );
            }
        }
        // each text key as the first call gives it, and as JSON, kept in the call site's memory
        let first = fc.args.as_slice(nargs);
        for i in (0..nargs).step_by(2) {
            let arg = &mut *args.add(i);
            if !first[i].isnull && arg.category == Category::Text {
                let raw = text_bytes(first[i].value);
                let mut kept = raw.to_vec();
                push_string(&mut kept, raw);
                let mem =
                    pg_sys::MemoryContextAlloc(flinfo.fn_mcxt, kept.len().max(1)).cast::<u8>();
                std::ptr::copy_nonoverlapping(kept.as_ptr(), mem, kept.len());
                arg.key = mem;
                arg.key_raw_len = raw.len();
                arg.key_len = kept.len() - raw.len();
            }
        }
        flinfo.fn_extra = args.cast();
    }
    let args = std::slice::from_raw_parts_mut(flinfo.fn_extra.cast::<Arg>(), nargs);
    let values = fc.args.as_slice(nargs);
    let mut out: Vec<u8> = Vec::with_capacity(64 * nargs.max(1));
    out.push(b'{');
    let mut first = true;
    let mut value_out: Vec<u8> = Vec::new();
    for (p, (pair, arg)) in values
        .chunks_exact(2)
        .zip(args.chunks_exact_mut(2))
        .enumerate()
    {
        let [key, value] = pair else { continue };
        let [key_arg, value_arg] = arg else { continue };
        if key.isnull {
            invalid(
                format!("{FUNCTION}: key (argument {}) must not be NULL", 2 * p + 1),
                "give each key as text",
            );
        }
        if value.isnull {
            continue;
        }
        value_out.clear();
        if !push_value(&mut value_out, value_arg, value.value, false) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let kept = (!key_arg.key.is_null()).then(|| {
            std::slice::from_raw_parts(key_arg.key, key_arg.key_raw_len + key_arg.key_len)
                .split_at(key_arg.key_raw_len)
        });
        match kept {
            Some((raw, json)) if text_bytes(key.value) == raw => out.extend_from_slice(json),
            _ => {
                push_value(&mut out, key_arg, key.value, true);
            }
        }
        out.push(b':');
        out.extend_from_slice(&value_out);
    }
    out.push(b'}');
    pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
        out.as_ptr().cast(),
        i32::try_from(out.len()).unwrap_or(i32::MAX),
    ))
}

/// PG_FUNCTION_INFO_V1 for [`possync_json_object_present`].
#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_possync_json_object_present() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[cfg(test)]
mod tests {
    use super::is_json_number;

    #[test]
    fn json_numbers_are_told_from_other_number_output() {
        for ok in ["0", "-0", "12", "-12.50", "1e+20", "1.5E-7", "0.001"] {
            assert!(is_json_number(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "NaN",
            "Infinity",
            "-Infinity",
            "",
            "-",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
        ] {
            assert!(!is_json_number(bad.as_bytes()), "{bad}");
        }
    }
}
