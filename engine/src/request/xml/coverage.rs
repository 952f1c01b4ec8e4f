//! Nothing the XML front end accepts is silently ignored: every attribute and child element
//! in its lists of accepted names changes the parsed model, except the few listed in
//! [`NO_EFFECT`] with the reason (each also said in `docs/xml-syntax.md`). A name added to
//! a list without a case here fails `every_accepted_name_has_a_case`.

use super::*;

#[derive(Clone, Copy)]
enum Doc {
    Namespace,
    Request,
}

/// One accepted name: `template` with `@` replaced by `without` and by `with` must parse
/// to different models.
struct Case {
    list: &'static str,
    name: &'static str,
    doc: Doc,
    template: &'static str,
    without: &'static str,
    with: &'static str,
}

/// Accepted, and changes nothing, for the reason given.
/// (Empty since XSL templates work: `allowNullTransform` was the last entry.)
const NO_EFFECT: &[(&str, &str, &str)] = &[];

fn lists() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("NAMESPACE_ATTRS", NAMESPACE_ATTRS),
        ("PROCEDURE_ATTRS", PROCEDURE_ATTRS),
        ("PROCEDURE_CHILDREN", PROCEDURE_CHILDREN),
        ("INPUT_ATTRS", INPUT_ATTRS),
        ("EXECUTE_ATTRS", EXECUTE_ATTRS),
        ("TRANSFORM_ATTRS", TRANSFORM_ATTRS),
        ("EXECUTE_CHILDREN", EXECUTE_CHILDREN),
        ("FOREACH_ATTRS", FOREACH_ATTRS),
        ("WHEN_ATTRS", WHEN_ATTRS),
        ("REPEAT_ATTRS", REPEAT_ATTRS),
        ("TRANSFORM_NODE_ATTRS", TRANSFORM_NODE_ATTRS),
        ("SCRIPT_ATTRS", SCRIPT_ATTRS),
        ("SCRIPT_CHILDREN", SCRIPT_CHILDREN),
        ("TRY_ATTRS", TRY_ATTRS),
        ("SELECT_ATTRS", SELECT_ATTRS),
        ("WHERE_ATTRS", WHERE_ATTRS),
        ("REQUEST_ATTRS", REQUEST_ATTRS),
        ("REQUEST_CHILDREN", REQUEST_CHILDREN),
        ("REQUEST_PROCEDURE_ATTRS", REQUEST_PROCEDURE_ATTRS),
    ]
}

const NS_P: &str = r#"<namespace name="N"><procedure name="P">@</procedure></namespace>"#;
const NS_EXEC: &str = r#"<namespace name="N"><procedure name="P"><select name="s" source="data" sourcePath="p"><where value="v" case="c"/></select><select name="t" source="data" sourcePath="p"><where value="v" case="c"/></select><execute id="first" namespace="X" procedure="Y"/><execute namespace="X" procedure="Y">@</execute></procedure></namespace>"#;

fn cases() -> Vec<Case> {
    use Doc::{Namespace as N, Request as R};
    let c = |list, name, doc, template, without, with| Case {
        list,
        name,
        doc,
        template,
        without,
        with,
    };
    let ns = r#"<namespace@><procedure name="P"><execute namespace="X" procedure="Y"/></procedure></namespace>"#;
    let proc_ = r#"<namespace name="N"><procedure@><execute id="a" namespace="X" procedure="Y"/><execute id="b" namespace="X" procedure="Y"/></procedure></namespace>"#;
    let input = r#"<namespace name="N"><procedure name="P"><input@/><execute namespace="X" procedure="Y"/></procedure></namespace>"#;
    let exec = r#"<namespace name="N"><procedure name="P"><execute id="first" namespace="X" procedure="Y"/><execute@/></procedure></namespace>"#;
    let transform = r#"<namespace name="N"><procedure name="P"><transform id="first"><before source="data" destination="procedureData"/></transform><transform@><before source="data" destination="procedureData"/></transform></procedure></namespace>"#;
    let for_each = r#"<namespace name="N"><procedure name="P"><execute namespace="X" procedure="Y"><forEach@/></execute></procedure></namespace>"#;
    let when = r#"<namespace name="N"><procedure name="P"><select name="s" source="data" sourcePath="p"><where value="v" case="c"/></select><select name="t" source="data" sourcePath="p"><where value="v" case="c"/></select><execute namespace="X" procedure="Y"><when@/></execute></procedure></namespace>"#;
    let repeat = r#"<namespace name="N"><procedure name="P"><execute namespace="X" procedure="Y"><repeat@/></execute></procedure></namespace>"#;
    let before = r#"<namespace name="N"><procedure name="P"><execute namespace="X" procedure="Y"><before@/></execute></procedure></namespace>"#;
    let before_xsl = r#"<namespace name="N" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"><procedure name="P"><execute namespace="X" procedure="Y"><before@><xsl:template match="/"><x/></xsl:template></before></execute></procedure></namespace>"#;
    let script = r#"<namespace name="N"><procedure name="P"><execute id="first" namespace="X" procedure="Y"/><script@>let x = 1;</script></procedure></namespace>"#;
    let try_ = r#"<namespace name="N"><procedure name="P"><execute id="first" namespace="X" procedure="Y"/><try@><execute namespace="X" procedure="Y"/></try><catch><execute namespace="X" procedure="Y"/></catch></procedure></namespace>"#;
    let select = r#"<namespace name="N"><procedure name="P"><execute id="first" namespace="X" procedure="Y"/><select@><where value="v" case="c"/></select></procedure></namespace>"#;
    let where_ = r#"<namespace name="N"><procedure name="P"><select name="s" source="data" sourcePath="p"><where@/></select></procedure></namespace>"#;
    let script_child = r#"<namespace name="N"><procedure name="P"><select name="s" source="data" sourcePath="p"><where value="v" case="c"/></select><script>let x = 1;@</script></procedure></namespace>"#;
    let request = r#"<request@><data/></request>"#;
    let request_children = r#"<request namespace="A" procedure="B">@</request>"#;
    let request_proc = r#"<request><procedure@><execute namespace="A" procedure="B"/><execute namespace="A" procedure="C"/></procedure></request>"#;
    let exec_ok = r#" namespace="X" procedure="Y""#;
    vec![
        c(
            "NAMESPACE_ATTRS",
            "name",
            N,
            ns,
            r#" name="N""#,
            r#" name="M""#,
        ),
        c(
            "NAMESPACE_ATTRS",
            "providerSource",
            N,
            ns,
            r#" name="N""#,
            r#" name="N" providerSource="Prov""#,
        ),
        c(
            "NAMESPACE_ATTRS",
            "description",
            N,
            ns,
            r#" name="N""#,
            r#" name="N" description="d""#,
        ),
        c(
            "NAMESPACE_ATTRS",
            "readOnly",
            N,
            ns,
            r#" name="N""#,
            r#" name="N" readOnly="1""#,
        ),
        c(
            "PROCEDURE_ATTRS",
            "name",
            N,
            proc_,
            r#" name="P""#,
            r#" name="Q""#,
        ),
        c(
            "PROCEDURE_ATTRS",
            "access",
            N,
            proc_,
            r#" name="P""#,
            r#" name="P" access="public""#,
        ),
        c(
            "PROCEDURE_ATTRS",
            "type",
            N,
            proc_,
            r#" name="P""#,
            r#" name="P" type="read""#,
        ),
        c(
            "PROCEDURE_ATTRS",
            "description",
            N,
            proc_,
            r#" name="P""#,
            r#" name="P" description="d""#,
        ),
        c(
            "PROCEDURE_ATTRS",
            "parallel",
            N,
            proc_,
            r#" name="P""#,
            r#" name="P" parallel="1""#,
        ),
        c(
            "PROCEDURE_ATTRS",
            "entry",
            N,
            proc_,
            r#" name="P""#,
            r#" name="P" entry="E""#,
        ),
        c(
            "PROCEDURE_ATTRS",
            "saveDataForRollback",
            N,
            proc_,
            r#" name="P""#,
            r#" name="P" saveDataForRollback="1""#,
        ),
        c(
            "PROCEDURE_ATTRS",
            "resumable",
            N,
            proc_,
            r#" name="P""#,
            r#" name="P" resumable="1""#,
        ),
        c(
            "PROCEDURE_ATTRS",
            "auditEnabled",
            N,
            proc_,
            r#" name="P""#,
            r#" name="P" auditEnabled="0""#,
        ),
        c(
            "PROCEDURE_ATTRS",
            "perfEnabled",
            N,
            proc_,
            r#" name="P""#,
            r#" name="P" perfEnabled="1""#,
        ),
        c(
            "PROCEDURE_CHILDREN",
            "input",
            N,
            NS_P,
            r#"<execute namespace="X" procedure="Y"/>"#,
            r#"<input name="a"/><execute namespace="X" procedure="Y"/>"#,
        ),
        c(
            "PROCEDURE_CHILDREN",
            "procedureData",
            N,
            NS_P,
            r#"<execute namespace="X" procedure="Y"/>"#,
            r#"<procedureData><a>1</a></procedureData><execute namespace="X" procedure="Y"/>"#,
        ),
        c(
            "PROCEDURE_CHILDREN",
            "execute",
            N,
            NS_P,
            "",
            r#"<execute namespace="X" procedure="Y"/>"#,
        ),
        c(
            "PROCEDURE_CHILDREN",
            "transform",
            N,
            NS_P,
            "",
            r#"<transform><before source="data" destination="procedureData"/></transform>"#,
        ),
        c(
            "PROCEDURE_CHILDREN",
            "try",
            N,
            NS_P,
            "",
            r#"<try><execute namespace="X" procedure="Y"/></try><catch><execute namespace="X" procedure="Z"/></catch>"#,
        ),
        c(
            "PROCEDURE_CHILDREN",
            "catch",
            N,
            NS_P,
            r#"<try><execute namespace="X" procedure="Y"/></try><catch><execute namespace="X" procedure="Z"/></catch>"#,
            r#"<try><execute namespace="X" procedure="Y"/></try><catch><execute namespace="X" procedure="W"/></catch>"#,
        ),
        c(
            "PROCEDURE_CHILDREN",
            "select",
            N,
            NS_P,
            "",
            r#"<select name="s" source="data" sourcePath="p"><where value="v" case="c"/></select>"#,
        ),
        c(
            "PROCEDURE_CHILDREN",
            "script",
            N,
            NS_P,
            "",
            "<script>let x = 1;</script>",
        ),
        c(
            "INPUT_ATTRS",
            "name",
            N,
            input,
            r#" name="a""#,
            r#" name="b""#,
        ),
        c(
            "INPUT_ATTRS",
            "type",
            N,
            input,
            r#" name="a""#,
            r#" name="a" type="int""#,
        ),
        c(
            "INPUT_ATTRS",
            "required",
            N,
            input,
            r#" name="a""#,
            r#" name="a" required="1""#,
        ),
        c(
            "INPUT_ATTRS",
            "secret",
            N,
            input,
            r#" name="a""#,
            r#" name="a" secret="1""#,
        ),
        c(
            "INPUT_ATTRS",
            "default",
            N,
            input,
            r#" name="a""#,
            r#" name="a" default="x""#,
        ),
        c(
            "INPUT_ATTRS",
            "description",
            N,
            input,
            r#" name="a""#,
            r#" name="a" description="d""#,
        ),
        c(
            "EXECUTE_ATTRS",
            "id",
            N,
            exec,
            exec_ok,
            r#" id="s" namespace="X" procedure="Y""#,
        ),
        c(
            "EXECUTE_ATTRS",
            "namespace",
            N,
            exec,
            exec_ok,
            r#" namespace="Z" procedure="Y""#,
        ),
        c(
            "EXECUTE_ATTRS",
            "procedure",
            N,
            exec,
            exec_ok,
            r#" namespace="X" procedure="Z""#,
        ),
        c(
            "EXECUTE_ATTRS",
            "needs",
            N,
            exec,
            exec_ok,
            r#" namespace="X" procedure="Y" needs="first""#,
        ),
        c(
            "EXECUTE_ATTRS",
            "impersonate",
            N,
            exec,
            exec_ok,
            r#" namespace="X" procedure="Y" impersonate="1""#,
        ),
        c(
            "EXECUTE_ATTRS",
            "sensitive",
            N,
            exec,
            exec_ok,
            r#" namespace="X" procedure="Y" sensitive="1""#,
        ),
        c(
            "EXECUTE_ATTRS",
            "trusted",
            N,
            exec,
            exec_ok,
            r#" namespace="X" procedure="Y" trusted="1""#,
        ),
        c("TRANSFORM_ATTRS", "id", N, transform, "", r#" id="t""#),
        c(
            "TRANSFORM_ATTRS",
            "needs",
            N,
            transform,
            "",
            r#" needs="first""#,
        ),
        c(
            "EXECUTE_CHILDREN",
            "executeData",
            N,
            NS_EXEC,
            "",
            "<executeData><a>1</a></executeData>",
        ),
        c(
            "EXECUTE_CHILDREN",
            "forEach",
            N,
            NS_EXEC,
            "",
            r#"<forEach name="u" path="a"/>"#,
        ),
        c(
            "EXECUTE_CHILDREN",
            "when",
            N,
            NS_EXEC,
            "",
            r#"<when source="data" sourcePath="a"/>"#,
        ),
        c(
            "EXECUTE_CHILDREN",
            "repeat",
            N,
            NS_EXEC,
            "",
            r#"<repeat source="data" sourcePath="n"/>"#,
        ),
        c(
            "EXECUTE_CHILDREN",
            "before",
            N,
            NS_EXEC,
            "",
            r#"<before source="data" destination="executeData"/>"#,
        ),
        c(
            "EXECUTE_CHILDREN",
            "after",
            N,
            NS_EXEC,
            "",
            r#"<after source="executeData" destination="data"/>"#,
        ),
        c(
            "FOREACH_ATTRS",
            "name",
            N,
            for_each,
            r#" name="u" path="a""#,
            r#" name="v" path="a""#,
        ),
        c(
            "FOREACH_ATTRS",
            "root",
            N,
            for_each,
            r#" name="u" path="a""#,
            r#" name="u" path="a" root="procedureData""#,
        ),
        c(
            "FOREACH_ATTRS",
            "path",
            N,
            for_each,
            r#" name="u" path="a""#,
            r#" name="u" path="b""#,
        ),
        c(
            "FOREACH_ATTRS",
            "ifNull",
            N,
            for_each,
            r#" name="u" path="a""#,
            r#" name="u" path="a" ifNull="skip""#,
        ),
        c(
            "FOREACH_ATTRS",
            "filter",
            N,
            for_each,
            r#" name="u" path="a" filter="item.x == 1""#,
            r#" name="u" path="a" filter="item.x == 2""#,
        ),
        c(
            "WHEN_ATTRS",
            "source",
            N,
            when,
            r#" source="data" sourcePath="a""#,
            r#" source="procedureData" sourcePath="a""#,
        ),
        c(
            "WHEN_ATTRS",
            "sourcePath",
            N,
            when,
            r#" source="data" sourcePath="a""#,
            r#" source="data" sourcePath="b""#,
        ),
        c(
            "WHEN_ATTRS",
            "not",
            N,
            when,
            r#" source="data" sourcePath="a""#,
            r#" source="data" sourcePath="a" not="1""#,
        ),
        c(
            "WHEN_ATTRS",
            "select",
            N,
            when,
            r#" select="s" case="c""#,
            r#" select="t" case="c""#,
        ),
        c(
            "WHEN_ATTRS",
            "case",
            N,
            when,
            r#" select="s" case="c""#,
            r#" select="s" case="d""#,
        ),
        c(
            "WHEN_ATTRS",
            "expr",
            N,
            when,
            r#" expr="data.a == 1""#,
            r#" expr="data.a == 2""#,
        ),
        c(
            "REPEAT_ATTRS",
            "source",
            N,
            repeat,
            r#" source="data" sourcePath="n""#,
            r#" source="procedureData" sourcePath="n""#,
        ),
        c(
            "REPEAT_ATTRS",
            "sourcePath",
            N,
            repeat,
            r#" source="data" sourcePath="n""#,
            r#" source="data" sourcePath="m""#,
        ),
        c(
            "REPEAT_ATTRS",
            "ifNull",
            N,
            repeat,
            r#" source="data" sourcePath="n""#,
            r#" source="data" sourcePath="n" ifNull="skip""#,
        ),
        c(
            "TRANSFORM_NODE_ATTRS",
            "source",
            N,
            before,
            r#" source="data" destination="executeData""#,
            r#" source="procedureData" destination="executeData""#,
        ),
        c(
            "TRANSFORM_NODE_ATTRS",
            "sourcePath",
            N,
            before,
            r#" source="data" destination="executeData""#,
            r#" source="data" sourcePath="a" destination="executeData""#,
        ),
        c(
            "TRANSFORM_NODE_ATTRS",
            "destination",
            N,
            before,
            r#" source="data" destination="executeData""#,
            r#" source="data" destination="procedureData""#,
        ),
        c(
            "TRANSFORM_NODE_ATTRS",
            "destinationPath",
            N,
            before,
            r#" source="data" destination="executeData""#,
            r#" source="data" destination="executeData" destinationPath="x""#,
        ),
        c(
            "TRANSFORM_NODE_ATTRS",
            "mode",
            N,
            before,
            r#" source="data" destination="executeData""#,
            r#" source="data" destination="executeData" mode="merge""#,
        ),
        c(
            "TRANSFORM_NODE_ATTRS",
            "ifNull",
            N,
            before,
            r#" source="data" destination="executeData""#,
            r#" source="data" destination="executeData" ifNull="ignore""#,
        ),
        c(
            "TRANSFORM_NODE_ATTRS",
            "allowNullTransform",
            N,
            before_xsl,
            r#" source="data" destination="executeData""#,
            r#" source="data" destination="executeData" allowNullTransform="1""#,
        ),
        c(
            "TRANSFORM_NODE_ATTRS",
            "template",
            N,
            before,
            r#" template="x" destination="executeData""#,
            r#" template="y" destination="executeData""#,
        ),
        c(
            "TRANSFORM_NODE_ATTRS",
            "expr",
            N,
            before,
            r#" expr="1" destination="executeData""#,
            r#" expr="2" destination="executeData""#,
        ),
        c("SCRIPT_ATTRS", "id", N, script, "", r#" id="s""#),
        c("SCRIPT_ATTRS", "needs", N, script, "", r#" needs="first""#),
        c("SCRIPT_ATTRS", "calls", N, script, "", r#" calls="X/Y""#),
        c("SCRIPT_ATTRS", "output", N, script, "", r#" output="o""#),
        c(
            "SCRIPT_CHILDREN",
            "when",
            N,
            script_child,
            "",
            r#"<when select="s" case="c"/>"#,
        ),
        c(
            "SCRIPT_CHILDREN",
            "undo",
            N,
            script_child,
            "",
            "<undo>let y = 2;</undo>",
        ),
        c("TRY_ATTRS", "id", N, try_, "", r#" id="t""#),
        c("TRY_ATTRS", "needs", N, try_, "", r#" needs="first""#),
        c(
            "SELECT_ATTRS",
            "name",
            N,
            select,
            r#" name="s" source="data" sourcePath="p""#,
            r#" name="t" source="data" sourcePath="p""#,
        ),
        c(
            "SELECT_ATTRS",
            "source",
            N,
            select,
            r#" name="s" source="data" sourcePath="p""#,
            r#" name="s" source="procedureData" sourcePath="p""#,
        ),
        c(
            "SELECT_ATTRS",
            "sourcePath",
            N,
            select,
            r#" name="s" source="data" sourcePath="p""#,
            r#" name="s" source="data" sourcePath="q""#,
        ),
        c(
            "SELECT_ATTRS",
            "defaultCase",
            N,
            select,
            r#" name="s" source="data" sourcePath="p""#,
            r#" name="s" source="data" sourcePath="p" defaultCase="d""#,
        ),
        c(
            "SELECT_ATTRS",
            "ifNullCase",
            N,
            select,
            r#" name="s" source="data" sourcePath="p""#,
            r#" name="s" source="data" sourcePath="p" ifNullCase="n""#,
        ),
        c(
            "SELECT_ATTRS",
            "needs",
            N,
            select,
            r#" name="s" source="data" sourcePath="p""#,
            r#" name="s" source="data" sourcePath="p" needs="first""#,
        ),
        c(
            "WHERE_ATTRS",
            "value",
            N,
            where_,
            r#" value="v" case="c""#,
            r#" value="w" case="c""#,
        ),
        c(
            "WHERE_ATTRS",
            "case",
            N,
            where_,
            r#" value="v" case="c""#,
            r#" value="v" case="d""#,
        ),
        c(
            "REQUEST_ATTRS",
            "namespace",
            R,
            request,
            r#" namespace="A" procedure="B""#,
            r#" namespace="C" procedure="B""#,
        ),
        c(
            "REQUEST_ATTRS",
            "procedure",
            R,
            request,
            r#" namespace="A" procedure="B""#,
            r#" namespace="A" procedure="C""#,
        ),
        c(
            "REQUEST_CHILDREN",
            "data",
            R,
            request_children,
            "",
            "<data><a>1</a></data>",
        ),
        c(
            "REQUEST_CHILDREN",
            "globalData",
            R,
            request_children,
            "<data><a>1</a></data>",
            "<data><a>1</a></data><globalData><g>1</g></globalData>",
        ),
        c(
            "REQUEST_CHILDREN",
            "context",
            R,
            request_children,
            "",
            "<context><clientContext localeID=\"1033\"/></context>",
        ),
        c(
            "REQUEST_CHILDREN",
            "procedure",
            R,
            r#"<request>@</request>"#,
            r#"<procedure><execute namespace="A" procedure="B"/><execute namespace="A" procedure="C"/></procedure>"#,
            r#"<procedure><execute namespace="A" procedure="B"/><execute namespace="A" procedure="D"/></procedure>"#,
        ),
        c(
            "REQUEST_PROCEDURE_ATTRS",
            "type",
            R,
            request_proc,
            "",
            r#" type="read""#,
        ),
        c(
            "REQUEST_PROCEDURE_ATTRS",
            "parallel",
            R,
            request_proc,
            "",
            r#" parallel="1""#,
        ),
        c(
            "REQUEST_PROCEDURE_ATTRS",
            "description",
            R,
            request_proc,
            "",
            r#" description="d""#,
        ),
    ]
}

/// The parsed model (its `Debug` form without positions: an attribute shifts the columns
/// of what follows it), or the parse error.
fn parsed(doc: Doc, src: &str) -> Result<String, String> {
    let model = match doc {
        Doc::Namespace => parse_namespaces(src, "t.xml")
            .map(|n| format!("{n:?}"))
            .map_err(|e| format!("{e:?}")),
        Doc::Request => parse_request(src, "r.xml")
            .map(|r| format!("{r:?}"))
            .map_err(|e| e.to_string()),
    }?;
    Ok(without_positions(&model))
}

fn without_positions(debug: &str) -> String {
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some(at) = rest.find("SourceRef {") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let end = after.find('}').map_or(after.len(), |e| e + 1);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn every_accepted_name_has_a_case() {
    let cases = cases();
    let mut missing = Vec::new();
    for (list, names) in lists() {
        for name in names {
            let covered = cases.iter().any(|c| c.list == list && c.name == *name)
                || (list, *name) == ("SCRIPT_ATTRS", "file");
            if !covered {
                missing.push(format!("{list}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "accepted but never shown to change the model (add a case, or an entry in NO_EFFECT with the reason and the same in docs/xml-syntax.md): {missing:?}"
    );
}

#[test]
fn every_accepted_name_changes_the_model_or_says_why_not() {
    let mut silent = Vec::new();
    for case in cases() {
        let without = case.template.replacen('@', case.without, 1);
        let with = case.template.replacen('@', case.with, 1);
        let a = parsed(case.doc, &without).unwrap_or_else(|e| {
            panic!(
                "{}/{}: base does not parse: {e}\n{without}",
                case.list, case.name
            )
        });
        let b = parsed(case.doc, &with)
            .unwrap_or_else(|e| panic!("{}/{}: does not parse: {e}\n{with}", case.list, case.name));
        let exempt = NO_EFFECT
            .iter()
            .any(|(l, n, _)| *l == case.list && *n == case.name);
        match (a == b, exempt) {
            (true, false) => silent.push(format!("{}: {}", case.list, case.name)),
            (false, true) => panic!(
                "{}/{} is listed as having no effect, but it changes the model: update NO_EFFECT and the docs",
                case.list, case.name
            ),
            _ => {}
        }
    }
    assert!(
        silent.is_empty(),
        "accepted and silently dropped: {silent:?}"
    );
}

/// `file` on `<script>` reads the script from a file beside the definition.
#[test]
fn a_script_file_attribute_is_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.rhai"), "let x = 1;").expect("write");
    std::fs::write(dir.path().join("b.rhai"), "let x = 2;").expect("write");
    let ns = |file: &str| {
        let path = dir.path().join(format!("ns-{file}.xml"));
        std::fs::write(
            &path,
            format!(r#"<namespace name="N"><procedure name="P"><script file="{file}"/></procedure></namespace>"#),
        )
        .expect("write");
        let mut n = crate::request::load_namespace_file(&path).expect("parses");
        n[0].source_ref = SourceRef::default();
        n[0].procedures[0].source_ref = SourceRef::default();
        match &n[0].procedures[0].steps[0] {
            Step::Script(s) => s.script.source.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_ne!(ns("a.rhai"), ns("b.rhai"));
}

#[test]
fn no_effect_entries_are_documented() {
    let doc = include_str!("../../../../docs/xml-syntax.md");
    for (_, name, _) in NO_EFFECT {
        assert!(
            doc.contains(&format!("`{name}`")),
            "docs/xml-syntax.md says nothing of {name}"
        );
    }
}
