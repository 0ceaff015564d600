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
        Error::Syntax { pos, message } => (message, pos.line, pos.col),
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
        ("Floats must start with a digit", 1, 8)
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
    assert_eq!((line, col), (1, 13));
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
    assert_eq!((line, col), (1, 9));
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
    assert_eq!(json_of("foo=bar#not a comment"), json!({"foo": "bar#not"}));
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
        ("Unexpected array value terminator ','.", 1, 7)
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
    assert_eq!((line, col), (1, 8));
    let (msg, ..) = syntax_err("a =\n1");
    assert_eq!(msg, "Expected value but found new line");
    // Error Display: file:line:col: message.
    let e = err_of("ok = 1\n  bad = 2 x");
    assert_eq!(
        e.to_string(),
        "test.conf:2:12: Expected a top-level value to end with a new line, comment or EOF, but got 'x' instead."
    );
    assert_eq!(e.pos().map(|p| (p.line, p.col)), Some((2, 12)));
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
    assert_eq!(dt.unix_timestamp(), 1_462_387_WHAT);
}
