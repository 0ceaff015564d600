//! Tests for the configuration parser. Many cases are the inputs of nats-server's own
//! `conf/lex_test.go` and `conf/parse_test.go`, checked against the values it produces.

use super::parser::{go_clean, go_dir, go_join};
use super::*;
use serde_json::json;
use std::time::Duration;

fn parse_with(text: &str, host: &MemHost) -> Result<Map, Error> {
    parse_str(text, "test.conf", host)
}

fn parse(text: &str) -> Result<Map, Error> {
    parse_with(text, &MemHost::new())
}

#[track_caller]
fn json_of(text: &str) -> serde_json::Value {
    match parse(text) {
        Ok(m) => m.to_json(),
        Err(e) => panic!("parse of {text:?} failed: {e}"),
    }
}

#[track_caller]
fn err_of(text: &str) -> Error {
    match parse(text) {
        Ok(m) => panic!("parse of {text:?} succeeded: {}", m.to_json()),
        Err(e) => e,
    }
}

/// Message and (line, col) of a syntax error.
#[track_caller]
fn syntax_err(text: &str) -> (String, u32, u32) {
    match err_of(text) {
        Error::Syntax { pos, message } | Error::Lex { pos, message } => {
            (message, pos.line, pos.col)
        }
        e => panic!("expected a syntax error for {text:?}, got {e:?}"),
    }
}

#[track_caller]
fn value_of(text: &str, key: &str) -> Value {
    let m = parse(text).unwrap_or_else(|e| panic!("parse of {text:?} failed: {e}"));
    m.get(key)
        .cloned()
        .unwrap_or_else(|| panic!("no key {key} in {}", m.to_json()))
}

// ---- key/value syntax ---------------------------------------------------------------

#[test]
fn key_separators() {
    for text in [
        "foo: 123",
        "foo:123",
        "foo = 123",
        "foo=123",
        "foo 123",
        "foo\t123",
        "foo\t\t123\r\n",
        "foo:  123\r\n",
        "'foo' : 123",
        "\"foo\" : 123",
        "foo=123;",
    ] {
        assert_eq!(json_of(text), json!({"foo": 123}), "{text:?}");
    }
    assert_eq!(json_of("' foo' : 123"), json!({" foo": 123}));
    assert_eq!(json_of("\" foo\" : 123"), json!({" foo": 123}));
    // A new line between a key and its value is allowed when there is no separator.
    assert_eq!(json_of("foo\n\n  bar"), json!({"foo": "bar"}));
}

#[test]
fn simple_top_level_and_semicolons() {
    assert_eq!(
        json_of("foo='1'; bar=2.2; baz=true; boo=22"),
        json!({"foo": "1", "bar": 2.2, "baz": true, "boo": 22})
    );
    let semicolons = "\nfoo = 123;\nbar = 'baz';\nbaz = 'boo'\nmap {\n id = 1;\n}\n";
    assert_eq!(
        json_of(semicolons),
        json!({"foo": 123, "bar": "baz", "baz": "boo", "map": {"id": 1}})
    );
    // A top-level value may also end with ',' (JSON style).
    assert_eq!(json_of("a = 1, b = 2"), json!({"a": 1, "b": 2}));
}

#[test]
fn key_order_is_kept_and_redefinition_overwrites() {
    let m = parse("z = 1\na = 2\nm = 3\na = 4").unwrap();
    let keys: Vec<&str> = m.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["z", "a", "m"]);
    let a = m.entry("a").unwrap();
    assert_eq!(a.value.as_i64(), Some(4));
    assert_eq!((a.key_pos.line, a.key_pos.col), (4, 1));
}

#[test]
fn non_quoted_strings() {
    let noquotes = "\nfoo = 123\nbar = baz\nbaz=boo\nmap {\n id:one\n id2 : onetwo\n}\nt true\nf false\ntstr \"true\"\ntkey = two\nfkey = five # This should be a string\n";
    assert_eq!(
        json_of(noquotes),
        json!({
            "foo": 123, "bar": "baz", "baz": "boo",
            "map": {"id": "one", "id2": "onetwo"},
            "t": true, "f": false, "tstr": "true", "tkey": "two", "fkey": "five"
        })
    );
    // '#' only starts a comment where a value may end, not inside an unquoted string.
    assert_eq!(json_of("a = b#c"), json!({"a": "b#c"}));
    // Paths, URLs and host:port are plain unquoted strings.
    assert_eq!(
        json_of("p = /var/lib/nats\nu = nats://u:p@h:4222\nh = localhost"),
        json!({"p": "/var/lib/nats", "u": "nats://u:p@h:4222", "h": "localhost"})
    );
    // A quote ends an unquoted string and is dropped, as in nats-server.
    assert_eq!(json_of("foo = bar' "), json!({"foo": "bar"}));
}

#[test]
fn strings_starting_with_numbers() {
    assert_eq!(json_of("foo = 3xyz"), json!({"foo": "3xyz"}));
    assert_eq!(json_of("foo = 3xyz,"), json!({"foo": "3xyz"}));
    assert_eq!(json_of("foo = 3xyz;"), json!({"foo": "3xyz"}));
    assert_eq!(
        json_of(
            "\n        map {\n          foo = 3xyz,\n          bar = 4wqs\n        }\n        "
        ),
        json!({"map": {"foo": "3xyz", "bar": "4wqs"}})
    );
    assert_eq!(
        json_of("map {\n foo = 3xyz}"),
        json!({"map": {"foo": "3xyz"}})
    );
}

#[test]
fn booleans() {
    for (text, b) in [
        ("true", true),
        ("TRUE", true),
        ("True", true),
        ("yes", true),
        ("Yes", true),
        ("on", true),
        ("ON", true),
        ("false", false),
        ("False", false),
        ("no", false),
        ("NO", false),
        ("off", false),
        ("oFF", false),
    ] {
        assert_eq!(
            value_of(&format!("foo={text}"), "foo").as_bool(),
            Some(b),
            "{text}"
        );
    }
    // Quoted booleans are strings.
    assert_eq!(
        json_of("a = \"true\"\nb = 'no'"),
        json!({"a": "true", "b": "no"})
    );
    assert_eq!(json_of("a = yesno"), json!({"a": "yesno"}));
}

#[test]
fn integers_and_size_suffixes() {
    let easynum = "k = 8k\nkb = 4kb\nki = 3ki\nkib = 4ki\nm = 1m\nmb = 2MB\nmi = 2Mi\nmib = 64MiB\ng = 2g\ngb = 22GB\ngi = 22Gi\ngib = 22GiB\nt = 3t\ntb = 22TB\nti = 22Ti\ntib = 22TiB\np = 2p\npb = 22PB\npi = 22Pi\npib = 22PiB\ne = 2e\neb = 2EB\nei = 3Ei\n";
    let k: i64 = 1024;
    assert_eq!(
        json_of(easynum),
        json!({
            "k": 8000, "kb": 4 * k, "ki": 3 * k, "kib": 4 * k,
            "m": 1_000_000, "mb": 2 * k * k, "mi": 2 * k * k, "mib": 64 * k * k,
            "g": 2_000_000_000i64, "gb": 22 * k.pow(3), "gi": 22 * k.pow(3), "gib": 22 * k.pow(3),
            "t": 3_000_000_000_000i64, "tb": 22 * k.pow(4), "ti": 22 * k.pow(4), "tib": 22 * k.pow(4),
            "p": 2_000_000_000_000_000i64, "pb": 22 * k.pow(5), "pi": 22 * k.pow(5), "pib": 22 * k.pow(5),
            "e": 2_000_000_000_000_000_000i64, "eb": 2 * k.pow(6), "ei": 3 * k.pow(6),
        })
    );
    for (text, want) in [
        ("123", json!(123)),
        ("-123", json!(-123)),
        ("1k", json!(1000)),
        ("1K", json!(1000)),
        ("1M", json!(1_000_000)),
        ("1G", json!(1_000_000_000)),
        ("1MB", json!(1 << 20)),
        ("1Gb", json!(1 << 30)),
        ("-1m", json!(-1_000_000)),
        ("-1GB ", json!(-(1i64 << 30))),
        ("128KB", json!(128 * 1024)),
        ("0", json!(0)),
        // Not numbers: strings starting with digits.
        ("1Ghz", json!("1Ghz")),
        ("2Pie", json!("2Pie")),
        ("3Mbs,", json!("3Mbs")),
        ("300ms", json!("300ms")),
        ("10s", json!("10s")),
        ("1h30m", json!("1h30m")),
    ] {
        assert_eq!(json_of(&format!("foo = {text}"))["foo"], want, "{text}");
    }
    assert_eq!(
        json_of("foo = 4Gb, bar = 5Gø"),
        json!({"foo": 4i64 << 30, "bar": "5Gø"})
    );
    assert_eq!(
        json_of("a = 9223372036854775807\nb = -9223372036854775808"),
        json!({"a": i64::MAX, "b": i64::MIN})
    );
    let (msg, ..) = syntax_err("a = 9223372036854775808");
    assert_eq!(msg, "integer '9223372036854775808' is out of the range");
    let (msg, ..) = syntax_err("a = 9223372036854775807k");
    assert_eq!(msg, "integer '9223372036854775807k' is out of the range");
    let (msg, ..) = syntax_err("a = 1kbb");
    assert_eq!(msg, "invalid size suffix in integer '1kbb'");
    // A digit right after a suffix ends the number, then is an error.
    let (msg, ..) = syntax_err("a = 1k2");
    assert!(
        msg.starts_with("Expected a top-level value to end"),
        "{msg}"
    );
}

#[test]
fn floats() {
    for (text, f) in [("22.2", 22.2), ("-1.5", -1.5), ("0.5", 0.5), ("1.0", 1.0)] {
        assert_eq!(
            value_of(&format!("foo={text}\r\n"), "foo").kind,
            Kind::Float(f)
        );
    }
    let (msg, line, col) = syntax_err("foo = .2");
    assert_eq!(
        (msg.as_str(), line, col),
        ("Floats must start with a digit", 1, 7)
    );
    let (msg, ..) = syntax_err("foo = -.2");
    assert_eq!(msg, "Floats must start with a digit, not '.'.");
    let (msg, ..) = syntax_err("foo = 1.x");
    assert_eq!(
        msg,
        "Floats must have a digit after the '.', but got 'x' instead."
    );
    let (msg, ..) = syntax_err("foo = -x");
    assert_eq!(msg, "Expected a digit but got 'x'.");
}

#[test]
fn ip_addresses_and_host_ports() {
    for (text, want) in [
        ("listen: 127.0.0.1:4222", json!("127.0.0.1:4222")),
        ("listen: 127.0.0.1", json!("127.0.0.1")),
        ("listen: 0.0.0.0:4222", json!("0.0.0.0:4222")),
        ("listen: apcera.me:80", json!("apcera.me:80")),
        ("listen: nats.io:-1", json!("nats.io:-1")),
        ("listen: -1", json!(-1)),
        ("listen: :-1", json!(":-1")),
        ("listen = :80", json!(":80")),
        ("listen = localhost:4222", json!("localhost:4222")),
        (
            "listen = [localhost:4222, localhost:4333]",
            json!(["localhost:4222", "localhost:4333"]),
        ),
    ] {
        assert_eq!(json_of(text)["listen"], want, "{text}");
    }
}

#[test]
fn double_quoted_string_escapes() {
    let esc = "\nfoo = \"\\t\"\nbar = \"\\r\"\nbaz = \"\\n\"\nq = \"\\\"\"\nbs = \"\\\\\"\n";
    assert_eq!(
        json_of(esc),
        json!({"foo": "\t", "bar": "\r", "baz": "\n", "q": "\"", "bs": "\\"})
    );
    assert_eq!(json_of(r#"foo = "\\end""#)["foo"], json!("\\end"));
    assert_eq!(json_of(r#"foo = "start\\""#)["foo"], json!("start\\"));
    assert_eq!(json_of(r#"foo = "\x41\x42""#)["foo"], json!("AB"));
    // \x escapes are bytes: two of them can form one UTF-8 character.
    assert_eq!(json_of(r#"foo = "caf\xc3\xa9""#)["foo"], json!("café"));
    // A lone invalid byte is replaced rather than producing invalid UTF-8.
    assert_eq!(json_of(r#"foo = "\xe9""#)["foo"], json!("\u{fffd}"));
    assert_eq!(json_of("foo = \"\"")["foo"], json!(""));
    assert_eq!(json_of("foo = ''")["foo"], json!(""));
    // Quoted strings may span lines.
    assert_eq!(json_of("foo = \"a\nb\"")["foo"], json!("a\nb"));

    let (msg, line, col) = syntax_err(r#"foo = "[\x]""#);
    assert_eq!(
        msg,
        "Expected two hexadecimal digits after '\\x', but got ']\"'"
    );
    assert_eq!((line, col), (1, 9));
    let (msg, ..) = syntax_err(r#"foo = "[\xe]""#);
    assert_eq!(
        msg,
        "Expected two hexadecimal digits after '\\x', but got 'e]'"
    );
    let (msg, ..) = syntax_err("foo = xyz\\x\n");
    assert_eq!(
        msg,
        "Expected two hexadecimal digits after '\\x', but hit end of line"
    );
    let (msg, ..) = syntax_err("foo = xyz\\xF\n");
    assert_eq!(
        msg,
        "Expected two hexadecimal digits after '\\x', but hit end of line"
    );
    let (msg, line, col) = syntax_err(r"foo = \y");
    assert_eq!(
        msg,
        "Invalid escape character 'y'. Only the following escape characters are allowed: \\xXX, \\t, \\n, \\r, \\\", \\\\."
    );
    assert_eq!((line, col), (1, 7));
    // nats-server has no \u escape.
    let (msg, ..) = syntax_err(r#"foo = "\u0041""#);
    assert!(msg.starts_with("Invalid escape character 'u'"), "{msg}");
}

#[test]
fn unquoted_string_escapes() {
    for (text, want) in [
        (r"foo = \x65", "e"),
        (r"foo = \x45\x71", "Eq"),
        (r"foo = start\x45\x71", "startEq"),
        (r"foo = start\x7Cend", "start|end"),
        (r"foo = \x3c\x3eend", "<>end"),
        (r"foo = \x3cmiddle\x3E", "<middle>"),
        // Escaped text is never a boolean or a variable.
        (r"foo = \\true", "\\true"),
        (r"foo = \\$var", "\\$var"),
    ] {
        assert_eq!(json_of(text)["foo"], json!(want), "{text}");
    }
}

#[test]
fn single_quoted_strings_are_raw() {
    assert_eq!(
        json_of(r"foo = 'bar\r\n  \t'")["foo"],
        json!("bar\\r\\n  \\t")
    );
    let sample3 =
        "\nfoo  {\n  expr = '(true == \"false\")'\n  text = 'This is a multi-line\ntext block.'\n}\n";
    assert_eq!(
        json_of(sample3),
        json!({"foo": {"expr": "(true == \"false\")", "text": "This is a multi-line\ntext block."}})
    );
}

#[test]
fn dangling_quotes() {
    let (msg, line, col) = syntax_err("\nlisten: \"localhost:4242\n\nhttp: localhost:8222\n");
    assert_eq!((msg.as_str(), line, col), ("Unexpected EOF.", 5, 1));
    let (msg, line, _) = syntax_err("\nlisten: 'localhost:4242\n\nhttp: localhost:8222\n");
    assert_eq!((msg.as_str(), line), ("Unexpected EOF.", 5));
    // The quote after `foo = ` closes at the next quote, then `http` is a new key and
    // the final quote is left open.
    let (msg, line, _) = syntax_err("\nfoo = \"\nlisten: \"\n\nhttp: localhost:8222\n\n\"\n");
    assert_eq!((msg.as_str(), line), ("Unexpected EOF.", 8));
}

#[test]
fn comments() {
    assert_eq!(json_of("# This is a comment"), json!({}));
    assert_eq!(json_of("# This is a comment\r\n"), json!({}));
    assert_eq!(json_of("// This is a comment\r\n"), json!({}));
    assert_eq!(
        json_of("foo = 123 // This is a comment"),
        json!({"foo": 123})
    );
    assert_eq!(
        json_of("foo=123    # This is a comment"),
        json!({"foo": 123})
    );
    assert_eq!(
        json_of("foo=bar#not_a_comment"),
        json!({"foo": "bar#not_a_comment"})
    );
    let (msg, ..) = syntax_err("/ a = 1");
    assert_eq!(msg, "Unexpected EOF.");
}

#[test]
fn arrays() {
    let want = json!({"foo": [1, 2, 3, "bar"]});
    assert_eq!(json_of("foo = [1, 2, 3, 'bar']"), want);
    assert_eq!(json_of("foo = [1,2,3,'bar']"), want);
    assert_eq!(json_of("foo = [1, 2,3,'bar']"), want);
    let ml = "\n# top level comment\nfoo = [\n 1, # One\n 2, // Two\n 3 # Three\n 'bar'     ,\n \"bar\"\n]\n";
    assert_eq!(json_of(ml), json!({"foo": [1, 2, 3, "bar", "bar"]}));
    let nosep = "\n# top level comment\nfoo = [\n 1 // foo\n 2\n 3\n 'bar'\n \"bar\"\n]\n";
    assert_eq!(json_of(nosep), json!({"foo": [1, 2, 3, "bar", "bar"]}));
    assert_eq!(json_of("a = []"), json!({"a": []}));
    assert_eq!(json_of("a = [1, 2,]"), json!({"a": [1, 2]}));
    assert_eq!(
        json_of("a = [[1, 2], [3], []]"),
        json!({"a": [[1, 2], [3], []]})
    );
    assert_eq!(
        json_of("a = [true, 1.5, -2, 1k, 2s]"),
        json!({"a": [true, 1.5, -2, 1000, "2s"]})
    );
    // DEVIATION (documented in the lexer): an integer directly before ']' ends there.
    assert_eq!(json_of("a = [1]"), json!({"a": [1]}));
    assert_eq!(json_of("a = [1, 2k]"), json!({"a": [1, 2000]}));
    // Outside arrays `1]` stays a string as in nats-server.
    assert_eq!(json_of("a = 1]"), json!({"a": "1]"}));

    let (msg, line, col) = syntax_err("a = [,]");
    assert_eq!(
        (msg.as_str(), line, col),
        ("Unexpected array value terminator ','.", 1, 6)
    );
    let (msg, ..) = syntax_err("a = [1,,2]");
    assert_eq!(msg, "Unexpected array value terminator ','.");
    let (msg, ..) = syntax_err("a = [1 2]");
    assert_eq!(
        msg,
        "Expected an array value terminator ',' or an array terminator ']', but got '2' instead."
    );
    let (msg, ..) = syntax_err("a = [1, 2");
    assert_eq!(
        msg,
        "Expected an array value terminator ',' or an array terminator ']', but got 'EOF' instead."
    );
}

#[test]
fn array_of_maps() {
    let text = "\nauthorization {\n    users = [\n      {user: alice, password: foo}\n      {user: bob,   password: bar}\n    ]\n    timeout: 0.5\n}\n";
    assert_eq!(
        json_of(text),
        json!({"authorization": {
            "users": [{"user": "alice", "password": "foo"}, {"user": "bob", "password": "bar"}],
            "timeout": 0.5
        }})
    );
    let sample4 = "\n  array [\n    { abc: 123 }\n    { xyz: \"word\" }\n  ]\n";
    assert_eq!(
        json_of(sample4),
        json!({"array": [{"abc": 123}, {"xyz": "word"}]})
    );
}

#[test]
fn maps() {
    assert_eq!(
        json_of("foo = {ip='127.0.0.1', port = 4242}"),
        json!({"foo": {"ip": "127.0.0.1", "port": 4242}})
    );
    let ml = "\nfoo = {\n  ip = '127.0.0.1' # the IP\n  port= 4242 // the port\n}\n";
    assert_eq!(
        json_of(ml),
        json!({"foo": {"ip": "127.0.0.1", "port": 4242}})
    );
    let nested = "\nfoo  {\n  host {\n    ip   = '127.0.0.1'\n    port = 4242\n  }\n  servers = [ \"a.com\", \"b.com\", \"c.com\"]\n}\n";
    assert_eq!(
        json_of(nested),
        json!({"foo": {"host": {"ip": "127.0.0.1", "port": 4242}, "servers": ["a.com", "b.com", "c.com"]}})
    );
    assert_eq!(
        json_of("foo = {'bar' = 4242}"),
        json!({"foo": {"bar": 4242}})
    );
    assert_eq!(
        json_of("foo = {\"bar\" = 4242}"),
        json!({"foo": {"bar": 4242}})
    );
    assert_eq!(
        json_of("foo = {'bar-1.2.3' = { port:4242 }}"),
        json!({"foo": {"bar-1.2.3": {"port": 4242}}})
    );
    let mlnested =
        "\nsystems {\n  allinone {\n    description: \"This is a description.\"\n  }\n}\n";
    assert_eq!(
        json_of(mlnested),
        json!({"systems": {"allinone": {"description": "This is a description."}}})
    );
    assert_eq!(
        json_of("a {}\nb: {}\nc = { }"),
        json!({"a": {}, "b": {}, "c": {}})
    );
    assert_eq!(
        json_of("a { b = 1; c = 2, d = 3 }"),
        json!({"a": {"b": 1, "c": 2, "d": 3}})
    );

    let (msg, line, col) = syntax_err("\nlisten = 4222\n\ncluster = {\n\n  foo = bar\n\n");
    assert_eq!(
        (msg.as_str(), line, col),
        ("Unexpected EOF processing map.", 8, 1)
    );
    let (msg, ..) = syntax_err("a { b = 1 c = 2 }");
    assert_eq!(
        msg,
        "Expected a map value terminator ',' or a map terminator '}', but got 'c' instead."
    );
    let (msg, ..) = syntax_err("a { = 1 }");
    assert_eq!(msg, "Unexpected key separator '='.");
    let (msg, ..) = syntax_err("a { ] }");
    assert_eq!(msg, "Unexpected array end ']' processing map.");
    let (msg, ..) = syntax_err("a { b: , }");
    assert_eq!(msg, "Unexpected map value terminator ','.");
    let (msg, ..) = syntax_err("a { b");
    assert_eq!(msg, "Unexpected EOF processing map key.");
    let (msg, ..) = syntax_err("a { 'b");
    assert_eq!(msg, "Unexpected EOF processing quoted map key.");
    let (msg, ..) = syntax_err("a { \"b");
    assert_eq!(msg, "Unexpected EOF processing double quoted map key.");
    // DEVIATION: a key without a value before '}' is an error (nats-server mis-assigns).
    let (msg, line, col) = syntax_err("m {\n  a }");
    assert_eq!((msg.as_str(), line, col), ("key 'a' has no value", 2, 3));
}

#[test]
fn top_level_errors_and_positions() {
    let (msg, line, col) = syntax_err(" :foo = 22");
    assert_eq!(
        (msg.as_str(), line, col),
        ("Unexpected key separator ':'", 1, 2)
    );
    let (msg, line, col) = syntax_err("a = 1 b");
    assert_eq!(
        msg,
        "Expected a top-level value to end with a new line, comment or EOF, but got 'b' instead."
    );
    assert_eq!((line, col), (1, 7));
    let (msg, ..) = syntax_err("a =\n1");
    assert_eq!(msg, "Expected value but found new line");
    // A lexer error reads as nats-server's, with the position after it.
    let e = err_of("ok = 1\n  bad = 2 x");
    assert_eq!(
        e.to_string(),
        "Parse error on line 2: 'Expected a top-level value to end with a new line, comment or EOF, but got 'x' instead.' (test.conf:2:11)"
    );
    assert_eq!(e.pos().map(|p| (p.line, p.col)), Some((2, 11)));
}

#[test]
fn keys_without_values_are_invalid() {
    for (text, line, col) in [
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 1, 42),
        ("              aaaaaaaaaaaaaaaaaaaaaaaaaaa", 1, 42),
        ("     aaaaaaaaaaaaaaaaaaaaaaaaaaa         ", 1, 42),
        (
            "\n  # with comments\n  # is also invalid.\n  aaaaaaaaaa\n  ",
            5,
            3,
        ),
        // Commas do not end an unquoted key.
        ("\n  a,a,a,a,a,a,a\n  ", 3, 3),
    ] {
        let (msg, l, c) = syntax_err(text);
        assert_eq!(
            (msg.as_str(), l, c),
            ("config is invalid", line, col),
            "{text:?}"
        );
    }
    for text in [
        "",
        "\n   \n",
        "\n # just comments\n # no values\n",
        "{}",
        "{\n# c\n}\n",
    ] {
        assert_eq!(json_of(text), json!({}), "{text:?}");
    }
    // A stray final '}' is allowed (it lexes as a key without a value).
    assert_eq!(
        json_of("\naccounts { users = [{}]}\n}\n"),
        json!({"accounts": {"users": [{}]}})
    );
    assert_eq!(
        json_of("{\n  accounts { users = [{}]}\n}\n"),
        json!({"accounts": {"users": [{}]}})
    );
}

#[test]
fn json_compatible_configs() {
    let pretty = r#"
        {
          "http_port": 8227,
          "port": 4227,
          "write_deadline": "1h",
          "cluster": {
            "port": 6222,
            "routes": [
              "nats://127.0.0.1:4222",
              "nats://127.0.0.1:4223",
              "nats://127.0.0.1:4224"
            ]
          }
        }
        "#;
    let want = json!({
        "http_port": 8227, "port": 4227, "write_deadline": "1h",
        "cluster": {"port": 6222, "routes": [
            "nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]}
    });
    assert_eq!(json_of(pretty), want);
    let ugly = r#"{"http_port": 8227,"port": 4227,"write_deadline": "1h","cluster": {"port": 6222,"routes": ["nats://127.0.0.1:4222","nats://127.0.0.1:4223","nats://127.0.0.1:4224"]}}"#;
    assert_eq!(json_of(ugly), want);
    let blocks = "{\n  \"jetstream\": {\n    \"store_dir\": \"/tmp/nats\"\n    \"max_mem\": 1000000,\n  },\n  \"port\": 4222,\n  \"server_name\": \"nats1\"\n}\n";
    assert_eq!(
        json_of(blocks),
        json!({"jetstream": {"store_dir": "/tmp/nats", "max_mem": 1000000}, "port": 4222, "server_name": "nats1"})
    );
    assert_eq!(
        json_of("{\"http_port\": 8224,\"port\": 4224}\n"),
        json!({"http_port": 8224, "port": 4224})
    );
    assert_eq!(
        json_of("{\"http_port\": 8225,\"port\": 4225\n}\n"),
        json!({"http_port": 8225, "port": 4225})
    );
    assert_eq!(json_of("\n{\n}\n"), json!({}));
}

#[test]
fn top_level_blocks() {
    let want = json!({"listen": "0.0.0.0:4222"});
    assert_eq!(json_of("{ listen: 0.0.0.0:4222 }"), want);
    assert_eq!(json_of("{\n\t\t\t\tlisten: 0.0.0.0:4222\n\t\t\t }"), want);
    assert_eq!(json_of("\n{\n  listen: 0.0.0.0:4222\n}\n# wibble\n"), want);
    assert_eq!(
        json_of("\n{\n  {\n    listen: 0.0.0.0:4222 // random comment\n  }\n  # wibble1\n}\n# wibble2\n"),
        want
    );
    assert_eq!(
        json_of("\n{\n  \"debug\":              False\n  \"prof_port\":          8221\n  \"server_name\":        \"aws-useast2-natscj1-1\"\n}\n"),
        json!({"debug": false, "prof_port": 8221, "server_name": "aws-useast2-natscj1-1"})
    );
    assert_eq!(
        json_of("\n{\n  \"debug\": False\n  \"server_name\": \"gcp\"\n  # Profile port specification.\n  \"prof_port\": 8221\n}\n"),
        json!({"debug": false, "prof_port": 8221, "server_name": "gcp"})
    );
    let (msg, ..) = syntax_err("{ a: 1 b }");
    assert!(
        msg.starts_with("Expected a block-level value to end"),
        "{msg}"
    );
}

#[test]
fn block_strings() {
    assert_eq!(
        json_of("\nnumbers (\n1234567890\n)\n")["numbers"],
        json!("\n1234567890\n")
    );
    // At the very end of input (DEVIATION: nats-server keeps the ')' there) and before
    // a NUL byte (which ends the input for nats-server).
    assert_eq!(
        json_of("\nnumbers (\n1234567890\n)")["numbers"],
        json!("\n1234567890\n")
    );
    assert_eq!(
        json_of("\nnumbers (\n1234567890\n)\0junk")["numbers"],
        json!("\n1234567890\n")
    );
    assert_eq!(
        json_of("\nnumbers (\n  12(34)56\n  (\n    7890\n  )\n)\n")["numbers"],
        json!("\n  12(34)56\n  (\n    7890\n  )\n")
    );
    assert_eq!(
        json_of("a = (\nline one\n)\nb = 2"),
        json!({"a": "\nline one\n", "b": 2})
    );
    let (msg, line, col) = syntax_err("\nlisten = 4222\n\nquote = (\n\n  foo = bar\n\n");
    assert_eq!(
        (msg.as_str(), line, col),
        ("Unexpected EOF processing block.", 8, 1)
    );
}

#[test]
fn datetimes() {
    let m = parse("\n  now = 2016-05-04T18:53:41Z\n  gmt = false\n\n").unwrap();
    let dt = m.get("now").and_then(Value::as_datetime).unwrap();
    assert_eq!(dt.to_string(), "2016-05-04T18:53:41Z");
    assert_eq!(dt.unix_timestamp(), 1_462_388_021);
    assert_eq!(m.get("gmt").and_then(Value::as_bool), Some(false));
    let leap = value_of("d = 2000-02-29T00:00:00Z", "d")
        .as_datetime()
        .unwrap();
    assert_eq!(leap.unix_timestamp(), 951_782_400);
    for bad in [
        "2001-02-29T00:00:00Z",
        "2016-13-04T18:53:41Z",
        "2016-05-04T24:00:00Z",
    ] {
        let (msg, ..) = syntax_err(&format!("d = {bad}"));
        assert_eq!(
            msg,
            format!("expected Zulu formatted DateTime, but got '{bad}'")
        );
    }
    let (msg, ..) = syntax_err("d = 12-34");
    assert_eq!(msg, "All ISO8601 dates must be in full Zulu form.");
    let (msg, ..) = syntax_err("d = 2016-05-04 18:53:41Z");
    assert_eq!(
        msg,
        "Expected 'T' in ISO8601 datetime, but found ' ' instead."
    );
    let (msg, ..) = syntax_err("d = 2016-05-0x");
    assert_eq!(
        msg,
        "Expected digit in ISO8601 datetime, but found 'x' instead."
    );
}

// ---- positions ------------------------------------------------------------------------

#[test]
fn positions_of_keys_and_values() {
    let text = "port: 4222

authorization {
  user: derek
  'quoted key' = \"v\"
  list [
    a, 2
  ]
}
";
    let m = parse(text).unwrap();
    let port = m.entry("port").unwrap();
    assert_eq!(port.key_pos.to_string(), "test.conf:1:1");
    assert_eq!(port.value.pos.to_string(), "test.conf:1:7");
    let auth = m.entry("authorization").unwrap();
    assert_eq!((auth.key_pos.line, auth.key_pos.col), (3, 1));
    assert_eq!((auth.value.pos.line, auth.value.pos.col), (3, 15));
    let inner = auth.value.as_map().unwrap();
    let user = inner.entry("user").unwrap();
    assert_eq!((user.key_pos.line, user.key_pos.col), (4, 3));
    assert_eq!((user.value.pos.line, user.value.pos.col), (4, 9));
    let q = inner.entry("quoted key").unwrap();
    assert_eq!((q.key_pos.line, q.key_pos.col), (5, 3));
    assert_eq!((q.value.pos.line, q.value.pos.col), (5, 18));
    let list = inner.get("list").unwrap().as_array().unwrap();
    assert_eq!((list[0].pos.line, list[0].pos.col), (7, 5));
    assert_eq!((list[1].pos.line, list[1].pos.col), (7, 8));
    // Columns count characters, not bytes.
    let m = parse("ü = 'é'  x\n").unwrap_err();
    assert_eq!(m.pos().map(|p| (p.line, p.col)), Some((1, 10)));
}

// ---- variables -------------------------------------------------------------------------

#[test]
fn variables_with_block_scoping() {
    assert_eq!(
        json_of(
            "
  index = 22
  foo = $index
"
        ),
        json!({"index": 22, "foo": 22})
    );
    let nested = "
  index = 22
  nest {
    index = 11
    foo = $index
  }
  bar = $index
";
    assert_eq!(
        json_of(nested),
        json!({"index": 22, "nest": {"index": 11, "foo": 11}, "bar": 22})
    );
    // Enclosing maps are searched, arrays are skipped, maps inside arrays count.
    let text = "a = 1
m { n { x = $a } }
l = [$a, {b = 2, c = $b}, [$a]]";
    assert_eq!(
        json_of(text),
        json!({"a": 1, "m": {"n": {"x": 1}}, "l": [1, {"b": 2, "c": 2}, [1]]})
    );
    // Values of any type, including maps and arrays, are copied.
    let text = "BAR_USERS = { users = [ {user = \"bar\"} ]}
accounts {
  QUUX = [ { user: quux }]
  bar = $BAR_USERS
  quux = { users = $QUUX }
}
very { nested { env { VAR = 'NESTED', quux = $VAR }}}";
    assert_eq!(
        json_of(text),
        json!({
            "BAR_USERS": {"users": [{"user": "bar"}]},
            "accounts": {"QUUX": [{"user": "quux"}], "bar": {"users": [{"user": "bar"}]},
                         "quux": {"users": [{"user": "quux"}]}},
            "very": {"nested": {"env": {"VAR": "NESTED", "quux": "NESTED"}}}
        })
    );
    // Only keys defined earlier are visible; variables are case-sensitive.
    let e = err_of(
        "a = $b
b = 1",
    );
    assert_eq!(
        e.to_string(),
        "test.conf:1:5: variable reference for 'b' on line 1 can not be found"
    );
    assert!(matches!(&e, Error::Variable { name, .. } if name == "b"));
    let e = err_of("A = 1\nfoo = $a");
    assert!(
        e.to_string()
            .ends_with("variable reference for 'a' on line 2 can not be found"),
        "{e}"
    );
    // A sibling map's keys are not in scope.
    assert!(parse("m { x = 1 }\nn { y = $x }").is_err());
    let e = err_of("foo = $");
    assert!(
        e.to_string()
            .contains("variable reference for '' on line 1"),
        "{e}"
    );
}

#[test]
fn variable_value_positions_and_usage() {
    let m = parse("TLS_TIMEOUT = 2\ntls {\n  timeout: $TLS_TIMEOUT\n}").unwrap();
    let def = m.entry("TLS_TIMEOUT").unwrap();
    assert!(def.used_as_variable);
    let tls = m.get("tls").unwrap().as_map().unwrap();
    let t = tls.entry("timeout").unwrap();
    assert!(!t.used_as_variable);
    // The substituted value carries the reference's position.
    assert_eq!((t.value.pos.line, t.value.pos.col), (3, 12));
    assert_eq!(t.value.as_i64(), Some(2));
    let unknown: Vec<&str> = m.unknown_keys(&["TLS"]).map(|e| e.key.as_str()).collect();
    assert!(unknown.is_empty(), "{unknown:?}");
    let unknown: Vec<&str> = m.unknown_keys(&[]).map(|e| e.key.as_str()).collect();
    assert_eq!(unknown, ["tls"]);
    // Redefining a key clears the flag, as nats-server's new token does.
    let m = parse("a = 1\nb = $a\na = 2").unwrap();
    assert!(!m.entry("a").unwrap().used_as_variable);
    assert_eq!(m.get_ignore_case("A").map(|e| &e.key[..]), Some("a"));
}

#[test]
fn bcrypt_passwords_are_not_variables() {
    assert_eq!(
        json_of("password: $2a$11$ooo")["password"],
        json!("$2a$11$ooo")
    );
    assert_eq!(
        json_of("users = [{user: a, password: $2a$10$UHR6GhotWhpLsKtVP0/i6.Nh9.fuY73cWjLoJjb2sKT8KISBcUW5q}]")
            ["users"][0]["password"],
        json!("$2a$10$UHR6GhotWhpLsKtVP0/i6.Nh9.fuY73cWjLoJjb2sKT8KISBcUW5q")
    );
    // nats-server only special-cases $2a$; other prefixes must be quoted.
    assert!(matches!(
        err_of("password: $2b$11$ooo"),
        Error::Variable { .. }
    ));
    assert_eq!(
        json_of("password: '$2b$11$ooo'")["password"],
        json!("$2b$11$ooo")
    );
}

#[test]
fn environment_variables() {
    let host = MemHost::new()
        .with_env("PORT", "22")
        .with_env("STR", "xyz")
        .with_env("NUMSTR", "3xyz")
        .with_env("SIZED", "3Gyz")
        .with_env("QUOTED", "'3xyz'")
        .with_env("MAP", "{ a: 1, b: [x, y] }")
        .with_env("CHAIN", "$PORT")
        .with_env("EMPTY", "")
        .with_env("BOOL", "on")
        .with_env("CYCLE_A", "$CYCLE_B")
        .with_env("CYCLE_B", "$CYCLE_A")
        .with_env("SELF", "$SELF")
        .with_env("SHADOWED", "env");
    let json = |text: &str| parse_with(text, &host).map(|m| m.to_json());
    assert_eq!(json("foo = $PORT").unwrap(), json!({"foo": 22}));
    assert_eq!(json("foo = $STR").unwrap(), json!({"foo": "xyz"}));
    assert_eq!(json("foo = $SIZED").unwrap(), json!({"foo": "3Gyz"}));
    assert_eq!(json("foo = $QUOTED").unwrap(), json!({"foo": "3xyz"}));
    assert_eq!(
        json("foo = $MAP").unwrap(),
        json!({"foo": {"a": 1, "b": ["x", "y"]}})
    );
    assert_eq!(json("foo = $CHAIN").unwrap(), json!({"foo": 22}));
    assert_eq!(json("foo = $EMPTY").unwrap(), json!({"foo": ""}));
    assert_eq!(json("foo = $BOOL").unwrap(), json!({"foo": true}));
    assert_eq!(
        json("l = [$PORT, $STR]").unwrap(),
        json!({"l": [22, "xyz"]})
    );
    // Keys in the file win over the environment.
    assert_eq!(
        json("SHADOWED = file\nx = $SHADOWED").unwrap()["x"],
        json!("file")
    );
    // A number-led unquoted string is a string (nats-server's own test of this case
    // references a variable literally named `%s`, so it only proves the error path).
    assert_eq!(json("foo = $NUMSTR").unwrap(), json!({"foo": "3xyz"}));

    let e = parse_with("foo = $CYCLE_A", &host).unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with(
            "test.conf:1:7: variable reference for 'CYCLE_A' on line 1 could not be parsed:"
        ),
        "{s}"
    );
    assert!(s.contains("variable reference cycle for 'CYCLE_A'"), "{s}");
    let e = parse_with("x = $SELF", &host).unwrap_err();
    assert!(
        e.to_string()
            .contains("variable reference cycle for 'SELF'"),
        "{e}"
    );
    let e = parse_with("x = $NOPE", &host).unwrap_err();
    assert_eq!(
        e.to_string(),
        "test.conf:1:5: variable reference for 'NOPE' on line 1 can not be found"
    );
}

#[test]
fn environment_variable_that_does_not_parse() {
    let host = MemHost::new().with_env("BAD", "a b");
    let e = parse_with("x = $BAD", &host).unwrap_err();
    assert!(
        e.to_string()
            .contains("variable reference for 'BAD' on line 1 could not be parsed"),
        "{e}"
    );
}

#[test]
fn std_host_reads_the_process_environment() {
    // Read a variable that is normally set rather than calling set_var, which races
    // with other test threads reading the environment.
    let Ok(path) = std::env::var("PATH") else {
        return;
    };
    if path.is_empty()
        || !path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/:._-".contains(c))
    {
        return;
    }
    let m = parse_str("p: $PATH", "", &StdHost).unwrap();
    assert_eq!(m.get("p").and_then(Value::as_str), Some(path.as_str()));
    assert!(StdHost.env_var("A=B").is_none());
    assert!(StdHost.env_var("").is_none());
}

#[test]
fn substitution_is_bounded() {
    // Each level doubles the copied size; 25 levels would be 2^25 nodes.
    let mut text = String::from("a0 = [1, 1]\n");
    for i in 1..25 {
        text.push_str(&format!("a{i} = [$a{p}, $a{p}]\n", p = i - 1));
    }
    let e = parse(&text).unwrap_err();
    assert!(
        e.to_string().contains("substitutions copy more than"),
        "{e}"
    );
}

#[test]
fn nesting_is_bounded() {
    let deep = format!(
        "a = {}{}",
        "[".repeat(MAX_DEPTH + 1),
        "]".repeat(MAX_DEPTH + 1)
    );
    let (msg, ..) = syntax_err(&deep);
    assert!(msg.contains("nested deeper than"), "{msg}");
    let ok = format!("a = {}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(parse(&ok).is_ok());
    // Substituting a deep value deeper still is caught too.
    let text = format!(
        "a = {}{}\nb = [[$a]]",
        "[".repeat(MAX_DEPTH - 1),
        "]".repeat(MAX_DEPTH - 1)
    );
    assert!(parse(&text).is_err());
}

// ---- includes --------------------------------------------------------------------------

fn include_host() -> MemHost {
    MemHost::new()
        .with_file("/etc/nats/users.conf", "users = [{user: alice, password: foo}]\nUSER_PASS = bar\n")
        .with_file(
            "/etc/nats/includes/passwords.conf",
            "ALICE_PASS: $2a$10$UHR6GhotWhpLsKtVP0/i6.Nh9.fuY73cWjLoJjb2sKT8KISBcUW5q\nBOB_PASS: $2a$11$dZM98SpGeI7dCFFGSpt.JObQcix8YHml4TBUZoge9R1uxnMIln5ly\n",
        )
        .with_file("/etc/nats/sub/a.conf", "include 'b.conf'\nfrom_a = 1")
        .with_file("/etc/nats/sub/b.conf", "from_b = 2")
        .with_file("/etc/nats/self.conf", "x = 1\ninclude self.conf")
        .with_file("/etc/nats/c1.conf", "include ./c2.conf")
        .with_file("/etc/nats/c2.conf", "include \"sub/../c1.conf\"")
        .with_file("/etc/nats/bad.conf", "\n  ok = 1\n  oops = [1,,2]\n")
        .with_file("/etc/nats/novalue.conf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .with_file("/etc/nats/usesvar.conf", "y = $OUTER")
        .with_file("/etc/nats/json.json", "{ \"users\": [ {\"user\": \"foo\"} ] }")
        .with_file("/etc/nats/empty.conf", "")
}

fn parse_inc(text: &str) -> Result<Map, Error> {
    parse_str(text, "/etc/nats/main.conf", &include_host())
}

#[test]
fn includes_at_top_level_and_in_maps() {
    for text in [
        "include users.conf",
        "include 'users.conf'",
        "include \"users.conf\"",
        "INCLUDE users.conf",
        "{ include users.conf }",
    ] {
        let m = parse_inc(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            m.to_json(),
            json!({"users": [{"user": "alice", "password": "foo"}], "USER_PASS": "bar"}),
            "{text}"
        );
    }
    for text in [
        "foo { include users.conf }",
        "foo {include users.conf}",
        "foo { include 'users.conf' }",
        "foo { include \"users.conf\"}",
        "foo {\n  include users.conf\n}",
    ] {
        let m = parse_inc(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(m.to_json()["foo"]["USER_PASS"], json!("bar"), "{text}");
    }
    // Keys from the included file carry that file's positions.
    let m = parse_inc("a = 0\ninclude users.conf").unwrap();
    let e = m.entry("USER_PASS").unwrap();
    assert_eq!(e.key_pos.to_string(), "/etc/nats/users.conf:2:1");
    // Later keys override included ones and vice versa.
    let m = parse_inc("USER_PASS = before\ninclude users.conf\nusers = after").unwrap();
    assert_eq!(m.to_json(), json!({"USER_PASS": "bar", "users": "after"}));
    // `include` with a separator is an ordinary key.
    assert_eq!(
        parse_inc("include: x").unwrap().to_json(),
        json!({"include": "x"})
    );
    // Empty and JSON files.
    assert_eq!(
        parse_inc("include empty.conf").unwrap().to_json(),
        json!({})
    );
    assert_eq!(
        parse_inc("accounts { foo { include 'json.json' } }")
            .unwrap()
            .to_json(),
        json!({"accounts": {"foo": {"users": [{"user": "foo"}]}}})
    );
}

#[test]
fn included_variables_are_usable_afterwards() {
    let text = "\nauthorization {\n\n  include \"./includes/passwords.conf\"\n\n  CAROL_PASS: foo\n\n  users = [\n   {user: alice, password: $ALICE_PASS}\n   {user: bob,   password: $BOB_PASS}\n   {user: carol, password: $CAROL_PASS}\n  ]\n}\n";
    let m = parse_inc(text).unwrap();
    let auth = m.get("authorization").unwrap().as_map().unwrap();
    let alice = auth.entry("ALICE_PASS").unwrap();
    assert!(alice.used_as_variable);
    assert_eq!((alice.key_pos.line, alice.key_pos.col), (1, 1));
    assert_eq!(&*alice.key_pos.file, "/etc/nats/includes/passwords.conf");
    let carol = auth.entry("CAROL_PASS").unwrap();
    assert_eq!((carol.key_pos.line, carol.key_pos.col), (6, 3));
    assert_eq!(
        m.to_json()["authorization"]["users"][1]["password"],
        json!("$2a$11$dZM98SpGeI7dCFFGSpt.JObQcix8YHml4TBUZoge9R1uxnMIln5ly")
    );
    assert_eq!(
        m.to_json()["authorization"]["users"][2]["password"],
        json!("foo")
    );
}

#[test]
fn included_files_do_not_see_the_includers_variables() {
    // nats-server parses an included file on its own, so `$OUTER` is unknown there.
    let e = parse_inc("OUTER = 1\ninclude usesvar.conf").unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("/etc/nats/main.conf:2:9: error parsing include file 'usesvar.conf', /etc/nats/usesvar.conf:1:5: variable reference for 'OUTER'"), "{s}");
}

#[test]
fn include_paths_are_relative_to_the_including_file() {
    let m = parse_inc("include sub/a.conf").unwrap();
    assert_eq!(m.to_json(), json!({"from_b": 2, "from_a": 1}));
    // Like Go's filepath.Join, an absolute include is still joined to the directory.
    let host = MemHost::new().with_file("/etc/nats/abs/x.conf", "x = 1");
    let m = parse_str("include /abs/x.conf", "/etc/nats/main.conf", &host).unwrap();
    assert_eq!(m.to_json(), json!({"x": 1}));
    // Text without a file name includes relative to the current directory.
    let host = MemHost::new().with_file("x.conf", "x = 2");
    assert_eq!(
        parse_str("include ./x.conf", "", &host).unwrap().to_json(),
        json!({"x": 2})
    );
}

#[test]
fn include_errors() {
    let e = parse_inc("include missing.conf").unwrap_err();
    match &e {
        Error::Include {
            pos,
            include,
            source,
        } => {
            assert_eq!(pos.to_string(), "/etc/nats/main.conf:1:9");
            assert_eq!(include, "missing.conf");
            assert!(
                matches!(**source, Error::Read { ref path, .. } if path.to_str() == Some("/etc/nats/missing.conf"))
            );
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(
        e.to_string()
            .contains("error opening config file '/etc/nats/missing.conf'"),
        "{e}"
    );

    let e = parse_inc("\n\nx { include bad.conf }").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/nats/main.conf:3:13: error parsing include file 'bad.conf', Parse error on line 3: 'Unexpected array value terminator ','.' (/etc/nats/bad.conf:3:13)"
    );
    let e = parse_inc("accounts {\n  bar { include 'novalue.conf'}\n}").unwrap_err();
    let s = e.to_string();
    assert!(s.contains("error parsing include file 'novalue.conf', /etc/nats/novalue.conf:1:35: config is invalid"), "{s}");

    for (text, msg) in [
        (
            "include [a]",
            "Expected include value but found start of an array",
        ),
        (
            "include {a}",
            "Expected include value but found start of a map",
        ),
        (
            "include (a)",
            "Expected include value but found start of a block",
        ),
        (
            "include 1.conf",
            "Expected include value but found start of a number",
        ),
        (
            "include \\x",
            "Expected include value but found escape sequence",
        ),
        ("include \nx", "Expected include value but found new line"),
        ("include 'x", "Unexpected EOF in quoted include"),
        ("include \"x", "Unexpected EOF in double quoted include"),
    ] {
        let (m, ..) = syntax_err(text);
        assert_eq!(m, msg, "{text:?}");
    }
}

#[test]
fn include_cycles_are_detected() {
    let e = parse_inc("include self.conf").unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains(
            "include cycle: /etc/nats/main.conf -> /etc/nats/self.conf -> /etc/nats/self.conf"
        ),
        "{s}"
    );
    let e = parse_inc("include c1.conf").unwrap_err();
    let s = e.to_string();
    assert!(s.contains("include cycle: /etc/nats/main.conf -> /etc/nats/c1.conf -> /etc/nats/c2.conf -> /etc/nats/c1.conf"), "{s}");
    // The root file including itself.
    let host = MemHost::new().with_file("/r/main.conf", "include main.conf");
    let e = parse_file_with(std::path::Path::new("/r/main.conf"), &host).unwrap_err();
    assert!(e.to_string().contains("include cycle"), "{e}");
}

#[test]
fn go_path_helpers() {
    assert_eq!(go_clean("a//b/./c/.."), "a/b");
    assert_eq!(go_clean("/../a"), "/a");
    assert_eq!(go_clean("../../a"), "../../a");
    assert_eq!(go_clean(""), ".");
    assert_eq!(go_clean("/"), "/");
    assert_eq!(go_dir("a.conf"), ".");
    assert_eq!(go_dir("/etc/nats/a.conf"), "/etc/nats");
    assert_eq!(go_dir("/a.conf"), "/");
    assert_eq!(go_dir(""), ".");
    assert_eq!(go_join(".", "./auth.conf"), "auth.conf");
    assert_eq!(go_join("/etc/nats", "../x.conf"), "/etc/x.conf");
    assert_eq!(go_join("/etc/nats", "/abs.conf"), "/etc/nats/abs.conf");
}

#[test]
fn parse_file_reads_from_disk() {
    let dir = std::env::temp_dir().join(format!("strait-conf-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("inc")).unwrap();
    std::fs::write(dir.join("main.conf"), "port: 4222\ninclude inc/auth.conf\n").unwrap();
    std::fs::write(
        dir.join("inc/auth.conf"),
        "authorization { token: s3cr3t }\n",
    )
    .unwrap();
    let m = parse_file(dir.join("main.conf")).unwrap();
    assert_eq!(
        m.to_json(),
        json!({"port": 4222, "authorization": {"token": "s3cr3t"}})
    );
    let e = parse_file(dir.join("nope.conf")).unwrap_err();
    assert!(matches!(e, Error::Read { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- durations -------------------------------------------------------------------------

#[test]
fn go_durations() {
    let ns = |s| parse_go_duration_nanos(s);
    assert_eq!(ns("0"), Ok(0));
    assert_eq!(ns("-0"), Ok(0));
    assert_eq!(ns("2s"), Ok(2_000_000_000));
    assert_eq!(ns("+5s"), Ok(5_000_000_000));
    assert_eq!(ns("1h30m"), Ok(5_400_000_000_000));
    assert_eq!(ns("500ms"), Ok(500_000_000));
    assert_eq!(ns("1.5h"), Ok(5_400_000_000_000));
    assert_eq!(ns(".5s"), Ok(500_000_000));
    assert_eq!(ns("1.s"), Ok(1_000_000_000));
    assert_eq!(ns("1us"), Ok(1_000));
    assert_eq!(ns("1µs"), Ok(1_000));
    assert_eq!(ns("1μs"), Ok(1_000));
    assert_eq!(ns("3ns"), Ok(3));
    assert_eq!(ns("-1.5s"), Ok(-1_500_000_000));
    assert_eq!(ns("1h2m3s4ms5us6ns"), Ok(3_723_004_005_006));
    assert_eq!(ns("9223372036854775807ns"), Ok(i64::MAX));
    assert_eq!(ns("-9223372036854775808ns"), Ok(i64::MIN));
    assert_eq!(ns("0.3333333333333333333h"), Ok(1_200_000_000_000));
    assert_eq!(
        ns("9223372036854775808ns"),
        Err(DurationError::Invalid("9223372036854775808ns".into()))
    );
    assert_eq!(
        ns("3000000h"),
        Err(DurationError::Invalid("3000000h".into()))
    );
    assert_eq!(ns(""), Err(DurationError::Invalid("".into())));
    assert_eq!(ns("s"), Err(DurationError::Invalid("s".into())));
    assert_eq!(ns("."), Err(DurationError::Invalid(".".into())));
    assert_eq!(ns("1"), Err(DurationError::MissingUnit("1".into())));
    assert_eq!(
        ns("1x"),
        Err(DurationError::UnknownUnit {
            unit: "x".into(),
            input: "1x".into()
        })
    );
    assert_eq!(
        DurationError::UnknownUnit {
            unit: "x".into(),
            input: "1x".into()
        }
        .to_string(),
        "time: unknown unit \"x\" in duration \"1x\""
    );
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(
        parse_duration("-2s"),
        Err(DurationError::Negative("-2s".into()))
    );
}

#[test]
fn duration_values() {
    let m = parse("a = \"2s\"\nb = 2\nc = 300ms\nd = 1m\ne = 1.5\nf = \"1x\"\ng = -1").unwrap();
    let d = |k: &str| m.get(k).unwrap().as_duration();
    assert_eq!(d("a"), Ok(Duration::from_secs(2)));
    // Integers are seconds (nats-server's backward-compatible form).
    assert_eq!(d("b"), Ok(Duration::from_secs(2)));
    assert_eq!(d("c"), Ok(Duration::from_millis(300)));
    // Unquoted 1m is the integer one million (size suffix), so a million seconds.
    assert_eq!(d("d"), Ok(Duration::from_secs(1_000_000)));
    assert_eq!(d("e"), Err(DurationError::WrongType("float")));
    assert!(matches!(d("f"), Err(DurationError::UnknownUnit { .. })));
    assert!(matches!(d("g"), Err(DurationError::Negative(_))));
}

// ---- robustness ------------------------------------------------------------------------

#[test]
fn odd_inputs_do_not_panic() {
    for text in [
        "A@@Føøøø?˛ø:{øøøø˙˙",
        "include \"9/\u{fffd}",
        "\"",
        "'",
        "a = '",
        "a = [ '",
        "a = {",
        "a = (",
        "a = [",
        "}",
        "}}}}",
        "{{{{",
        "]]]",
        "a = 1 }",
        "{ a = 1",
        "{ a = 1\n",
        "a = \\",
        "a = \"\\",
        "a = -",
        "a = 1.",
        "a = 2016-",
        "m { / a: 1 }",
        "a = [1 / 2]",
        "\u{a0}a\u{a0}=\u{a0}1",
        "a\r\nb\r\n",
        "\0",
        "a = 1\0 b",
        "İNCLUDE x",
        "a = $",
        "a { include }",
    ] {
        let _ = parse(text);
    }
    // NUL ends the input as it does for nats-server.
    assert_eq!(json_of("a = 1\0garbage ="), json!({"a": 1}));
    // Unterminated nested values are reported.
    let (msg, ..) = syntax_err("a = [ '");
    assert!(
        msg.starts_with("unexpected end of input: unclosed array"),
        "{msg}"
    );
}

// ---- reference configuration files ------------------------------------------------------

/// The configuration files shipped in async-nats 0.51's tests/configs (Apache-2.0).
const ASYNC_NATS_CONFIGS: &[(&str, &str)] = &[
    (
        "ip-tls.conf",
        include_str!("testdata/async-nats/ip-tls.conf"),
    ),
    (
        "jetstream.conf",
        include_str!("testdata/async-nats/jetstream.conf"),
    ),
    (
        "jetstream_hub.conf",
        include_str!("testdata/async-nats/jetstream_hub.conf"),
    ),
    (
        "jetstream_leaf.conf",
        include_str!("testdata/async-nats/jetstream_leaf.conf"),
    ),
    (
        "jetstream_max_payload.conf",
        include_str!("testdata/async-nats/jetstream_max_payload.conf"),
    ),
    (
        "jetstream_max_request_batch.conf",
        include_str!("testdata/async-nats/jetstream_max_request_batch.conf"),
    ),
    ("jwt.conf", include_str!("testdata/async-nats/jwt.conf")),
    (
        "max_payload.conf",
        include_str!("testdata/async-nats/max_payload.conf"),
    ),
    ("nkey.conf", include_str!("testdata/async-nats/nkey.conf")),
    (
        "single-port.conf",
        include_str!("testdata/async-nats/single-port.conf"),
    ),
    ("tls.conf", include_str!("testdata/async-nats/tls.conf")),
    (
        "tls_first.conf",
        include_str!("testdata/async-nats/tls_first.conf"),
    ),
    (
        "tls_first_auto.conf",
        include_str!("testdata/async-nats/tls_first_auto.conf"),
    ),
    ("token.conf", include_str!("testdata/async-nats/token.conf")),
    (
        "user_pass.conf",
        include_str!("testdata/async-nats/user_pass.conf"),
    ),
    ("ws.conf", include_str!("testdata/async-nats/ws.conf")),
    (
        "ws_tls.conf",
        include_str!("testdata/async-nats/ws_tls.conf"),
    ),
];

/// Server configurations used to capture the reference server's behaviour.
const REFERENCE_CONFIGS: &[(&str, &str)] = &[
    (
        "auth/b2_server.conf",
        include_str!("testdata/reference/auth_b2_server.conf"),
    ),
    (
        "limits/c_server.conf",
        include_str!("testdata/reference/limits_c_server.conf"),
    ),
    (
        "limits/d_server.conf",
        include_str!("testdata/reference/limits_d_server.conf"),
    ),
    (
        "limits/e_server.conf",
        include_str!("testdata/reference/limits_e_server.conf"),
    ),
    (
        "v2ack_domain/f_server.conf",
        include_str!("testdata/reference/v2ack_domain_f_server.conf"),
    ),
    (
        "jsapi_misc/g_server.conf",
        include_str!("testdata/reference/jsapi_misc_g_server.conf"),
    ),
];

fn parse_named(name: &str, text: &str) -> serde_json::Value {
    match parse_str(text, name, &MemHost::new()) {
        Ok(m) => m.to_json(),
        Err(e) => panic!("{name}: {e}"),
    }
}

#[test]
fn async_nats_test_configs_parse() {
    for (name, text) in ASYNC_NATS_CONFIGS {
        let j = parse_named(name, text);
        assert!(j.as_object().is_some_and(|o| !o.is_empty()), "{name}: {j}");
    }
    let get = |name: &str| {
        let text = ASYNC_NATS_CONFIGS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1;
        parse_named(name, text)
    };
    assert_eq!(get("max_payload.conf"), json!({"max_payload": 128 * 1024}));
    assert_eq!(
        get("jetstream.conf"),
        json!({"jetstream": {"strict": true, "max_mem_store": 64i64 << 20, "max_file_store": 10i64 << 30}})
    );
    assert_eq!(
        get("jetstream_max_request_batch.conf")["jetstream"]["limits"]["max_request_batch"],
        json!(100)
    );
    assert_eq!(
        get("jetstream_hub.conf")["leafnodes"]["listen"],
        json!("127.0.0.1:7422")
    );
    assert_eq!(
        get("jetstream_leaf.conf")["jetstream"]["domain"],
        json!("LEAF")
    );
    assert_eq!(
        get("jetstream_leaf.conf")["leafnodes"]["remotes"][0]["url"],
        json!("leaf://127.0.0.1:7422")
    );
    let tls = get("tls.conf");
    assert_eq!(tls["listen"], json!("localhost:4222"));
    assert_eq!(tls["tls"]["verify"], json!(true));
    assert_eq!(
        tls["tls"]["ca_file"],
        json!("./tests/configs/certs/rootCA.pem")
    );
    assert_eq!(
        tls["authorization"],
        json!({"user": "derek", "password": "porkchop", "timeout": 1})
    );
    assert_eq!(
        get("tls_first_auto.conf")["tls"]["handshake_first"],
        json!("300ms")
    );
    assert_eq!(get("tls_first.conf")["tls"]["handshake_first"], json!(true));
    assert_eq!(
        get("token.conf"),
        json!({"authorization": {"token": "s3cr3t", "timeout": "2s"}})
    );
    assert_eq!(get("ip-tls.conf")["net"], json!("localhost"));
    assert_eq!(
        get("nkey.conf")["authorization"]["users"][0]["nkey"],
        json!("UAFHG6FUD2UU4SDFVAFUL5LDFO2XM4WYM76UNXTPJYJK7EEMYRBHT2VE")
    );
    assert_eq!(
        get("ws.conf"),
        json!({"jetstream": {}, "websocket": {"port": 8444, "no_tls": true}})
    );
    assert_eq!(
        get("ws_tls.conf")["websocket"]["tls"]["key_file"],
        json!("./tests/configs/certs/server-key.pem")
    );
    let jwt = get("jwt.conf");
    assert_eq!(jwt["resolver"], json!("MEMORY"));
    assert!(jwt["operator"]
        .as_str()
        .unwrap()
        .starts_with("eyJ0eXAiOiJKV1Qi"));
    let preload = jwt["resolver_preload"].as_object().unwrap();
    assert_eq!(preload.len(), 2);
    assert!(preload.contains_key("ADTQS7ZCFVJNW5726GOYXW5TSCZFNIQSHK2ZGYUBCD5D77OTNLOOKZOZ"));
}

#[test]
fn reference_capture_configs_parse() {
    for (name, text) in REFERENCE_CONFIGS {
        let j = parse_named(name, text);
        assert!(j.as_object().is_some_and(|o| !o.is_empty()), "{name}: {j}");
    }
    let get = |name: &str| {
        let text = REFERENCE_CONFIGS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1;
        parse_named(name, text)
    };
    let b2 = get("auth/b2_server.conf");
    assert_eq!(b2["listen"], json!("127.0.0.1:24223"));
    assert_eq!(b2["system_account"], json!("SYS"));
    assert_eq!(b2["jetstream"]["store_dir"], json!("/tmp/nscap/storeB"));
    assert_eq!(b2["accounts"]["APP"]["jetstream"], json!("enabled"));
    assert_eq!(
        b2["accounts"]["APP"]["users"][1]["permissions"]["publish"]["deny"],
        json!(["secret.>"])
    );
    assert_eq!(
        b2["accounts"]["SYS"]["users"][0],
        json!({"user": "sys", "password": "sys"})
    );
    let c = get("limits/c_server.conf");
    assert_eq!(
        (c["max_pending"].clone(), c["max_payload"].clone()),
        (json!(262144), json!(65536))
    );
    let d = get("limits/d_server.conf");
    assert_eq!(d["ping_interval"], json!("1s"));
    assert_eq!(d["max_connections"], json!(2));
    let e = get("limits/e_server.conf");
    assert_eq!(e["write_deadline"], json!("1s"));
    assert_eq!(e["max_pending"], json!(268435456));
    let f = get("v2ack_domain/f_server.conf");
    assert_eq!(f["jetstream"]["domain"], json!("hub"));
    assert_eq!(f["feature_flags"]["js_ack_fc_v2"], json!(true));
    let g = get("jsapi_misc/g_server.conf");
    assert_eq!(g["accounts"]["JSACC"]["jetstream"], json!("enabled"));
    assert_eq!(g["accounts"]["NOJS"]["users"][0]["user"], json!("nojs"));
    // Positions in the typed-options layer's terms.
    let m = parse_str(REFERENCE_CONFIGS[1].1, "c_server.conf", &MemHost::new()).unwrap();
    let mp = m.entry("max_payload").unwrap();
    assert_eq!(mp.key_pos.to_string(), "c_server.conf:5:1");
    assert_eq!(mp.value.as_duration(), Ok(Duration::from_secs(65536)));
}

#[test]
fn long_single_line_json_is_fast() {
    // Minified generated configs put everything on one line; positions must not cost
    // O(line length) each, or this takes minutes instead of milliseconds.
    let body: Vec<String> = (0..50_000)
        .map(|i| format!("\"k{i}\": [{i}, \"v\"]"))
        .collect();
    let text = format!("{{{}}}", body.join(","));
    let m = parse(&text).unwrap();
    assert_eq!(m.len(), 50_000);
    let last = m.entry("k49999").unwrap();
    assert_eq!(last.key_pos.line, 1);
    assert!(last.key_pos.col > 1_000_000);
}
