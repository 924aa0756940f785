// possync.json_object_present against the builtins it stands in for, json_strip_nulls(json_build_object(...))
// (included into `mod tests` in lib.rs).

/// Every JSON category json_build_object knows, with the values that write differently: NULL, NaN and the
/// infinities, -0, dates before Christ and infinite ones, strings that need escaping or read "null", JSON with
/// nulls nested in objects and arrays, arrays and rows holding NULLs, a domain, an enum, and an enum with a
/// cast to json (which writes an object holding a null).
const JSON_OBJECT_COLUMNS: &[(&str, &str, &[&str])] = &[
    ("b", "boolean", &["NULL", "true", "false"]),
    ("i2", "smallint", &["NULL", "0", "-32768", "32767"]),
    ("i4", "integer", &["NULL", "0", "-7", "2147483647"]),
    ("i8", "bigint", &["NULL", "0", "-9223372036854775808", "42"]),
    ("f4", "real", &["NULL", "'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "'1.5e-7'", "'3.25'"]),
    ("f8", "double precision", &["NULL", "'NaN'", "'-Infinity'", "'1e300'", "'-0'", "'0.1'"]),
    (
        "n",
        "numeric",
        &["NULL", "'NaN'", "'Infinity'", "'-Infinity'", "0", "-0.000", "1.50", "12345678901234567890.1234567890"],
    ),
    ("m", "tests.jo_amount", &["NULL", "0", "-3.10", "99999.99"]),
    ("d", "date", &["NULL", "'infinity'", "'-infinity'", "'0044-03-15 BC'", "'2026-11-28'", "'9999-12-31'"]),
    ("ts", "timestamp", &["NULL", "'infinity'", "'2026-11-28 13:45:01.123456'", "'0001-01-01 00:00:00 BC'"]),
    ("tz", "timestamptz", &["NULL", "'-infinity'", "'2026-11-28 13:45:01+05:30'", "'1970-01-01 00:00:00+00'"]),
    (
        "t",
        "text",
        &["NULL", "''", "'null'", "'annulled'", r#"'a "quoted" \ back\slash'"#, r"E'tab\there\nnew line\u0001'", "'ünïcødé ☃'",
          "chr(8) || chr(12) || chr(27) || chr(31) || chr(127) || '/'",
          // long enough to be compressed and stored out of line in the table: read detoasted
          r#"repeat('ab"\ ', 3000)"#],
    ),
    ("c", "char(3)", &["NULL", "'ab'", "'USD'"]),
    ("vc", "varchar(12)", &["NULL", "''", r#"'x "y"'"#]),
    ("nm", "name", &["NULL", "'pg_class'"]),
    ("u", "uuid", &["NULL", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"]),
    ("iv", "interval", &["NULL", "'1 day 02:00'", "'-3 months'"]),
    (
        "j",
        "json",
        &[
            "NULL",
            "'null'",
            "'{}'",
            r#"'{"a": null, "b": [1, null, {"c": null}], "d": {"e": null}}'"#,
            r#"'"text null"'"#,
            "'[null]'",
            r#"'  {"k" : 1}  '"#,
        ],
    ),
    ("jb", "jsonb", &["NULL", "'null'", r#"'{"a": null, "b": {"c": null, "d": 2}}'"#, "'[1, null]'", "'3.50'"]),
    ("ai", "integer[]", &["NULL", "'{}'", "'{1,NULL,3}'", "'{{1,2},{3,4}}'"]),
    ("at", "text[]", &["NULL", r#"'{"x",NULL,"null"}'"#]),
    ("r", "tests.jo_row", &["NULL", "ROW(1, NULL, 2.50)", "ROW(NULL, 'b', NULL)"]),
    ("e", "tests.jo_mood", &["NULL", "'sad'", "'happy'"]),
    ("ec", "tests.jo_tagged", &["NULL", "'red'", "'blue'"]),
];

fn json_object_fixture() {
    Spi::run(
        "CREATE DOMAIN tests.jo_amount AS numeric(12, 2);
         CREATE TYPE tests.jo_row AS (a integer, b text, c numeric);
         CREATE TYPE tests.jo_mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TYPE tests.jo_tagged AS ENUM ('red', 'blue');
         CREATE FUNCTION tests.jo_tagged_json(tests.jo_tagged) RETURNS json LANGUAGE sql IMMUTABLE
             AS $$ SELECT json_build_object('tag', $1::text, 'none', NULL, 'list', json_build_array(NULL, 1)) $$;
         CREATE CAST (tests.jo_tagged AS json) WITH FUNCTION tests.jo_tagged_json(tests.jo_tagged);",
    )
    .expect("types");
}

/// The pairs `'key', column` of `columns`, for both builders.
fn json_object_pairs(columns: &[&(&str, &str, &[&str])]) -> String {
    columns.iter().map(|(name, _, _)| format!("'{name}', {name}")).collect::<Vec<_>>().join(", ")
}

#[pg_test]
fn json_object_present_writes_what_json_strip_nulls_of_json_build_object_writes() {
    json_object_fixture();
    // rows of values picked at random (seeded) from each column's list, so that every category meets NULL and
    // every other category in the same call
    let seed = 0.1128;
    Spi::run(&format!("SELECT setseed({seed})")).expect("seed");
    let picks: Vec<String> = JSON_OBJECT_COLUMNS
        .iter()
        .map(|(name, ty, values)| {
            let cases: String = values
                .iter()
                .enumerate()
                .map(|(i, v)| format!(" WHEN {i} THEN ({v})::{ty}"))
                .collect();
            format!("CASE floor(random() * {})::int{cases} END AS {name}", values.len())
        })
        .collect();
    Spi::run(&format!(
        "CREATE TABLE tests.jo AS SELECT g, {} FROM generate_series(1, 600) AS g",
        picks.join(", ")
    ))
    .expect("values");
    let all: Vec<&(&str, &str, &[&str])> = JSON_OBJECT_COLUMNS.iter().collect();
    let pairs = json_object_pairs(&all);
    let differ = |filter: &str| -> (i64, String) {
        let sql = format!(
            "SELECT count(*), coalesce(min(g::text || ': ' || ours || ' <> ' || theirs), '')
               FROM (SELECT g, possync.json_object_present({pairs})::text AS ours,
                            json_strip_nulls(json_build_object({pairs}))::text AS theirs FROM tests.jo {filter}) x
              WHERE ours::jsonb IS DISTINCT FROM theirs::jsonb"
        );
        Spi::get_two::<i64, String>(&sql)
            .map(|(n, first)| (n.unwrap_or(-1), first.unwrap_or_default()))
            .expect("compare")
    };
    for time_zone in ["UTC", "Asia/Kolkata", "America/St_Johns"] {
        Spi::run(&format!("SET LOCAL TimeZone = '{time_zone}'")).expect("time zone");
        let (n, first) = differ("");
        assert_eq!(n, 0, "TimeZone {time_zone}, seed {seed}: first difference {first}");
    }
    // every column once on its own, NULL or not: a pair whose value is NULL or JSON null is left out
    for column in &all {
        let pairs = json_object_pairs(&[column]);
        let same = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM tests.jo
              WHERE possync.json_object_present({pairs})::jsonb = json_strip_nulls(json_build_object({pairs}))::jsonb"
        ))
        .expect("one column");
        assert_eq!(same, Some(600), "column {}", column.0);
    }
    // nested, and aggregated, as the bridge builds an event's lines
    let nested = Spi::get_one::<bool>(
        "SELECT possync.json_object_present('id', 'o1', 'totals', possync.json_object_present('tax', NULL::numeric),
                     'lines', (SELECT json_agg(possync.json_object_present('n', n, 'd', d, 'j', j) ORDER BY g) FROM tests.jo))::jsonb
              = json_strip_nulls(json_build_object('id', 'o1', 'totals', json_build_object('tax', NULL::numeric),
                     'lines', (SELECT json_agg(json_build_object('n', n, 'd', d, 'j', j) ORDER BY g) FROM tests.jo)))::jsonb",
    )
    .expect("nested");
    assert_eq!(nested, Some(true));
}

#[pg_test]
fn json_object_present_names_what_is_wrong_with_its_arguments() {
    assert_eq!(
        error_of("SELECT possync.json_object_present('a', 1, 'b')"),
        "22023: possync.json_object_present: the arguments must be keys and values in pairs; 3 were given"
    );
    assert_eq!(
        error_of("SELECT possync.json_object_present('a', 1, NULL::text, 2)"),
        "22023: possync.json_object_present: key (argument 3) must not be NULL"
    );
    assert_eq!(
        error_of("SELECT possync.json_object_present('{}'::json, 1)"),
        "22023: possync.json_object_present: key (argument 1) must be a scalar, not an array, a row or json"
    );
    assert_eq!(
        error_of("SELECT possync.json_object_present(VARIADIC ARRAY['a', 'b'])"),
        "22023: possync.json_object_present: give the keys and values as arguments, not as one VARIADIC array"
    );
    // a json value the builtins refuse (\u0000 cannot become text) is refused here too, by the same error
    let builtin = error_of(r#"SELECT json_strip_nulls(json_build_object('a'::text, '"\u0000x"'::json))"#);
    assert!(builtin.starts_with("22P05"), "{builtin}");
    assert_eq!(
        error_of(r#"SELECT possync.json_object_present('a'::text, '"\u0000x"'::json)"#),
        builtin
    );
    // from PL/pgSQL a key is a parameter whose value changes from call to call at the same call site
    Spi::run(
        "CREATE FUNCTION tests.jo_pair(k text, v integer) RETURNS json LANGUAGE plpgsql
             AS $$ BEGIN RETURN possync.json_object_present(k, v); END $$",
    )
    .expect("function");
    assert_eq!(
        Spi::get_one::<String>(
            "SELECT string_agg(tests.jo_pair(k, n)::text, ' ' ORDER BY n)
               FROM (VALUES ('a', 1), ('b', 2), ('a', 3), ('ab', 4)) AS x(k, n)"
        )
        .expect("keys"),
        Some(r#"{"a":1} {"b":2} {"a":3} {"ab":4}"#.into())
    );
    // a key of another scalar type is written as the builtin writes it, as a string
    assert_eq!(
        Spi::get_one::<bool>(
            "SELECT possync.json_object_present(1.50, 'x', true, 'y', DATE '2026-11-28', 'z')::jsonb
                  = json_build_object(1.50, 'x', true, 'y', DATE '2026-11-28', 'z')::jsonb"
        )
        .expect("keys"),
        Some(true)
    );
}
