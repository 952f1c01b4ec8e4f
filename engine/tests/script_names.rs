//! Scripts reading data fields named like rhai keywords (`data.go`, `data.match`), and
//! script errors inside YAML block scalars pointing at the right line and column.

use provisio_engine::model::Format;
use provisio_engine::TxnState;
use provisio_engine::{ScriptEngine, ScriptOrigin, Vars};
use serde_json::json;

mod support;
use support as h;

/// Every word rhai reserves or uses as a keyword, read as a field after `.` and `?.`.
#[test]
fn any_keyword_is_a_field_name_after_a_dot() {
    let engine = ScriptEngine::default();
    let words = [
        "go",
        "match",
        "case",
        "default",
        "new",
        "fn",
        "if",
        "else",
        "let",
        "const",
        "for",
        "in",
        "while",
        "loop",
        "do",
        "until",
        "switch",
        "return",
        "throw",
        "try",
        "catch",
        "import",
        "export",
        "as",
        "global",
        "private",
        "true",
        "false",
        "this",
        "break",
        "continue",
        "var",
        "static",
        "async",
        "await",
        "yield",
        "spawn",
        "thread",
        "package",
        "super",
        "module",
        "shared",
        "with",
        "is",
        "use",
        "public",
        "protected",
        "void",
        "null",
        "nil",
        "sync",
        "goto",
        "exit",
        "call",
        "curry",
        "type_of",
        "print",
        "debug",
        "eval",
        "Fn",
    ];
    for word in words {
        let data = json!({ word: format!("value of {word}") });
        let vars = Vars::new().with("data", &data);
        for source in [format!("data.{word}"), format!("data?.{word}")] {
            let compiled = engine
                .compile(&source, &ScriptOrigin::new("t.yaml", 1, 1))
                .unwrap_or_else(|e| panic!("`{source}` does not compile: {e}"));
            let value = engine
                .eval_value(&compiled, &vars)
                .unwrap_or_else(|e| panic!("`{source}`: {e}"));
            assert_eq!(value, json!(format!("value of {word}")), "{source}");
        }
    }
}

/// The words keep their meaning everywhere else: keywords at the start of a statement, in
/// strings, in comments, and after a script that ended with a dot.
#[test]
fn keywords_elsewhere_are_untouched() {
    let engine = ScriptEngine::default();
    let data = json!({ "go": true, "n": 2, "match": { "default": "d" } });
    let vars = Vars::new().with("data", &data);
    let cases = [
        (
            "if data.go { \"yes.go\" } else { \"no\" } // data.go in a comment",
            json!("yes.go"),
        ),
        (
            "let x = \".match .go\"; x + data.match.default",
            json!(".match .god"),
        ),
        (
            "switch data.n { 2 => data.match.default, _ => () }",
            json!("d"),
        ),
        ("`${data.go}/${data.match.default}`", json!("true/d")),
        ("data.n.to_string() + \".fn\"", json!("2.fn")),
        ("let m = #{ \"go\": 1 }; m.go + 1", json!(2)),
    ];
    for (source, expected) in cases {
        let compiled = engine
            .compile(source, &ScriptOrigin::new("t.yaml", 1, 1))
            .unwrap_or_else(|e| panic!("`{source}` does not compile: {e}"));
        let value = engine
            .eval_value(&compiled, &vars)
            .unwrap_or_else(|e| panic!("`{source}`: {e}"));
        assert_eq!(value, expected, "{source}");
    }
    // A script ending in `.` fails; the next one's leading `if` is still a keyword.
    assert!(engine
        .compile("data.", &ScriptOrigin::new("t.yaml", 1, 1))
        .is_err());
    let next = engine
        .compile(
            "if data.go { 1 } else { 2 }",
            &ScriptOrigin::new("t.yaml", 1, 1),
        )
        .expect("compiles");
    assert_eq!(engine.eval_value(&next, &vars).expect("runs"), json!(1));
    // `eval` stays disabled as a function.
    let e = engine
        .compile("eval(\"1\")", &ScriptOrigin::new("t.yaml", 1, 1))
        .expect_err("eval is disabled");
    assert!(e.to_string().contains("eval"), "{e}");
}

const GO_YAML: &str = r#"
namespace: T
procedures:
  Go:
    access: public
    steps:
      maybe:
        call: Rec Provider/Create
        if: data.go == true
        with:
          name: { $expr: 'data.match + "-" + data.default.new' }
"#;

const GO_XML: &str = r#"<namespace name="T">
  <procedure name="Go" access="public">
    <execute id="maybe" namespace="Rec Provider" procedure="Create">
      <when expr="data.go == true"/>
      <before expr='data.match + "-" + data.default.new' destination="executeData" destinationPath="name" mode="merge"/>
    </execute>
  </procedure>
</namespace>"#;

#[tokio::test]
async fn yaml_and_xml_procedures_read_data_go_and_data_match() {
    for namespaces in [
        h::parse(GO_YAML, "go.yaml", Format::Yaml),
        h::parse(GO_XML, "go.xml", Format::Xml),
    ] {
        let env = h::env_ns(namespaces.clone(), h::options());
        let r = env
            .run("call: T/Go\ndata: { go: true, match: m, default: { new: n } }")
            .await;
        assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
        assert_eq!(env.log(), h::strings(&["Create(m-n)"]));
        let env = h::env_ns(namespaces, h::options());
        let r = env
            .run("call: T/Go\ndata: { go: false, match: m, default: { new: n } }")
            .await;
        assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
        assert!(env.log().is_empty(), "{:?}", env.log());
    }
}

/// The 1-based (line, column) of the first occurrence of `needle` in `src`.
fn position_of(src: &str, needle: &str) -> (u32, u32) {
    for (n, line) in src.lines().enumerate() {
        if let Some(byte) = line.find(needle) {
            let column = line[..byte].chars().count() + 1;
            return (n as u32 + 1, column as u32);
        }
    }
    panic!("`{needle}` not in the source")
}

/// A syntax error on the third line of a block scalar indented ten columns under its step.
const BLOCK_SYNTAX_NS: &str = r#"
namespace: T
procedures:
  Broken:
    access: public
    steps:
      s:
        script: |
          let a = 1;
          let b = a + 2;
          let c = b +;
          c
"#;

/// A run-time error (a throw) on a later line of an indented block scalar, in an `$expr`.
const BLOCK_RUNTIME_NS: &str = r#"
namespace: T
procedures:
  Throws:
    access: public
    steps:
      make:
        call: Rec Provider/Create
        with:
          name:
            $expr: |
              let n = data.n;
              if n > 1 { throw "too many"; }
              "x"
"#;

#[tokio::test]
async fn errors_inside_indented_block_scalars_name_the_file_line_and_column() {
    let env = h::env(BLOCK_SYNTAX_NS);
    let errs = env.compile_errors("call: T/Broken").await;
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 1, "{text:#?}");
    // rhai reports the missing operand at the `;` after `+`.
    let (line, column) = position_of(BLOCK_SYNTAX_NS, "+;");
    let at = format!("test.yaml:{line}:{}", column + 1);
    assert!(text[0].contains(&at), "expected {at}: {text:#?}");
    assert_eq!(text[0].matches("test.yaml:").count(), 1, "{text:#?}");

    let env = h::env(BLOCK_RUNTIME_NS);
    let r = env.run("call: T/Throws\ndata: { n: 2 }").await;
    assert_eq!(r.state, TxnState::RolledBack, "{:?}", r.failure);
    let message = &h::failure(&r).message;
    let (line, column) = position_of(BLOCK_RUNTIME_NS, "throw");
    let at = format!("test.yaml:{line}:{column}");
    assert!(message.contains(&at), "expected {at}: {message}");
    assert!(message.contains("too many"), "{message}");
}

/// The first line of a block scalar and a value on the key's line keep their columns.
#[tokio::test]
async fn first_lines_and_inline_values_keep_their_columns() {
    let ns = "namespace: T\nprocedures:\n  P:\n    access: public\n    parallel: false\n    steps:\n      a:\n        call: Rec Provider/Create\n        if: data.x +* 1\n        with: { name: a }\n      b:\n        script: |\n            let z = ;\n";
    let env = h::env(ns);
    let text: Vec<String> = env
        .compile_errors("call: T/P")
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(text.len(), 2, "{text:#?}");
    let (line, column) = position_of(ns, "* 1");
    assert!(
        text.iter()
            .any(|t| t.contains(&format!("test.yaml:{line}:{column}"))),
        "{text:#?}"
    );
    let (line, column) = position_of(ns, ";");
    assert!(
        text.iter()
            .any(|t| t.contains(&format!("test.yaml:{line}:{column}"))),
        "{text:#?}"
    );
}
