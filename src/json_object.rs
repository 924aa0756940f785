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
//! The JSON is the same as the two builtins make (the test compares them over generated values of every
//! category): numbers as their output when that is a JSON number (else a string, such as "NaN"), booleans,
//! dates and timestamps as `to_json` writes them, any other scalar as the string of its output. A value that is
//! itself JSON (json, jsonb, an array, a row, a type with a cast to json) is written as the builtins write it,
//! with the null fields of its objects left out as `json_strip_nulls` leaves them out; a pair whose value is
//! JSON `null` is left out too.

use std::ffi::{c_char, CStr};

use pgrx::fcinfo::direct_function_call_as_datum;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// How an argument is written: PostgreSQL's own JSON categories (json.c), for the base type of a domain.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Category {
    Bool,
    Number,
    DateTime,
    /// json and jsonb: their output is JSON
    Json,
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
    /// the output function (Number, Json, Other) or the cast function (Cast)
    func: pg_sys::FmgrInfo,
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
        pg_sys::INT2OID
        | pg_sys::INT4OID
        | pg_sys::INT8OID
        | pg_sys::FLOAT4OID
        | pg_sys::FLOAT8OID
        | pg_sys::NUMERICOID => {
            output(&mut func, &mut varlena);
            Category::Number
        }
        pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => Category::DateTime,
        pg_sys::JSONOID | pg_sys::JSONBOID => {
            output(&mut func, &mut varlena);
            Category::Json
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

/// A JSON text (a `json` datum's characters) with the null fields of its objects left out, as
/// `json_strip_nulls` leaves them out; the text as it is when it holds no `null` at all.
unsafe fn stripped(text: *mut pg_sys::text) -> *mut c_char {
    let chars = pg_sys::text_to_cstring(text);
    if !CStr::from_ptr(chars)
        .to_bytes()
        .windows(4)
        .any(|w| w == b"null")
    {
        return chars;
    }
    match direct_function_call_as_datum(
        pg_sys::json_strip_nulls,
        &[Some(pg_sys::Datum::from(text))],
    ) {
        Some(out) => pg_sys::text_to_cstring(out.cast_mut_ptr()),
        None => chars,
    }
}

/// A value of the Json, Array, Composite or Cast category as JSON text, nulls of its objects left out (None:
/// the function called gave SQL NULL, written as JSON `null` would be: left out).
unsafe fn json_value(arg: &mut Arg, value: pg_sys::Datum) -> Option<*mut c_char> {
    let json = match arg.category {
        Category::Json => {
            let out = pg_sys::OutputFunctionCall(&mut arg.func, value);
            pg_sys::cstring_to_text(out)
        }
        Category::Array => direct_function_call_as_datum(pg_sys::array_to_json, &[Some(value)])
            .map_or(std::ptr::null_mut(), |d| d.cast_mut_ptr()),
        Category::Composite => direct_function_call_as_datum(pg_sys::row_to_json, &[Some(value)])
            .map_or(std::ptr::null_mut(), |d| d.cast_mut_ptr()),
        _ => pg_sys::FunctionCall1Coll(&mut arg.func, pg_sys::InvalidOid, value).cast_mut_ptr(),
    };
    (!json.is_null()).then(|| stripped(json))
}

/// Writes a scalar (not a JSON category) as PostgreSQL's `datum_to_json` does; as a key, always a string.
unsafe fn write_scalar(buf: pg_sys::StringInfo, arg: &mut Arg, value: pg_sys::Datum, key: bool) {
    match arg.category {
        Category::Bool => {
            let text: &CStr = if value.value() != 0 {
                c"true"
            } else {
                c"false"
            };
            if key {
                pg_sys::escape_json(buf, text.as_ptr());
            } else {
                pg_sys::appendStringInfoString(buf, text.as_ptr());
            }
        }
        Category::DateTime => {
            let text = pg_sys::JsonEncodeDateTime(
                std::ptr::null_mut(),
                value,
                arg.typoid,
                std::ptr::null(),
            );
            pg_sys::appendStringInfoChar(buf, b'"' as c_char);
            pg_sys::appendStringInfoString(buf, text);
            pg_sys::appendStringInfoChar(buf, b'"' as c_char);
        }
        Category::Number => {
            let text = pg_sys::OutputFunctionCall(&mut arg.func, value);
            if !key && is_json_number(CStr::from_ptr(text).to_bytes()) {
                pg_sys::appendStringInfoString(buf, text);
            } else {
                pg_sys::escape_json(buf, text);
            }
        }
        _ => {
            let text = pg_sys::OutputFunctionCall(&mut arg.func, value);
            pg_sys::escape_json(buf, text);
        }
    }
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
                    Category::Json | Category::Array | Category::Composite | Category::Cast
                )
            {
                invalid(
                    format!("{FUNCTION}: key (argument {}) must be a scalar, not an array, a row or json", i + 1),
                    "give each key as text",
                );
            }
        }
        flinfo.fn_extra = args.cast();
    }
    let args = std::slice::from_raw_parts_mut(flinfo.fn_extra.cast::<Arg>(), nargs);
    let values = fc.args.as_slice(nargs);
    let buf = pg_sys::makeStringInfo();
    pg_sys::appendStringInfoChar(buf, b'{' as c_char);
    let mut first = true;
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
        let json = match value_arg.category {
            Category::Json | Category::Array | Category::Composite | Category::Cast => {
                match json_value(value_arg, value.value) {
                    Some(text) if CStr::from_ptr(text).to_bytes().trim_ascii() != b"null" => {
                        Some(text)
                    }
                    _ => continue,
                }
            }
            _ => None,
        };
        if !first {
            pg_sys::appendStringInfoChar(buf, b',' as c_char);
        }
        first = false;
        write_scalar(buf, key_arg, key.value, true);
        pg_sys::appendStringInfoChar(buf, b':' as c_char);
        match json {
            Some(text) => pg_sys::appendStringInfoString(buf, text),
            None => write_scalar(buf, value_arg, value.value, false),
        }
    }
    pg_sys::appendStringInfoChar(buf, b'}' as c_char);
    pg_sys::Datum::from(pg_sys::cstring_to_text_with_len((*buf).data, (*buf).len))
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
