//! The definitions as written: one struct or enum per YAML/JSON construct, read by the
//! generic visitor and field walker of `de.rs`, before any meaning is checked.

use super::de::{
    def_struct, deserialize_node, from_map, from_seq, Detail, List, Lit, Name, Node, Ordered,
    Scalar, ScalarDef, Strings, Text,
};
use crate::data::{IfNull, Mode};
use crate::model::{Access, ProcKind};
use serde::de::{MapAccess, SeqAccess};

/// One namespace or a list of them.
pub(super) struct NamespaceFile(pub Vec<NamespaceDef>);

impl<'de> Node<'de> for NamespaceFile {
    const EXPECTING: &'static str =
        "a namespace (a mapping starting with `namespace:`) or a list of them";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        matches!(v, Scalar::Null).then(|| Ok(NamespaceFile(Vec::new())))
    }
    fn map<A: MapAccess<'de>>(map: A) -> Option<Result<Self, A::Error>> {
        Some(from_map(map).map(|ns| NamespaceFile(vec![ns])))
    }
    fn seq<A: SeqAccess<'de>>(seq: A) -> Option<Result<Self, A::Error>> {
        Some(from_seq(seq).map(|List(v)| NamespaceFile(v)))
    }
}

def_struct! {
    NamespaceDef, "a namespace mapping" {
        "namespace" => namespace: Text,
        "description" => description: Text,
        "provider" => provider: Text,
        "providerContext" => provider_context: Lit,
        "readOnly" => read_only: bool,
        "procedures" => procedures: Ordered<ProcedureDef>,
    }
    required: "namespace"
}

def_struct! {
    ProcedureDef, "a procedure mapping" {
        "access" => access: Name<Access>,
        "type" => kind: Name<ProcKind>,
        "description" => description: Text,
        "parallel" => parallel: bool,
        "entry" => entry: Text,
        "saveDataForRollback" => save_data_for_rollback: bool,
        "resumable" => resumable: bool,
        "inputs" => inputs: Ordered<InputDef>,
        "procedureData" => procedure_data: Lit,
        "steps" => steps: Ordered<StepDef>,
    }
}

/// `name: type` or `name: { type, required, default, secret, description }`.
#[derive(Debug)]
pub(super) enum InputDef {
    Short(String),
    Full(InputFull),
}

def_struct! {
    InputFull, "a mapping { type, required, default, secret, description }" {
        "type" => ty: Text,
        "required" => required: bool,
        "default" => default: ScalarDef,
        "secret" => secret: bool,
        "description" => description: Text,
    }
}

impl<'de> Node<'de> for InputDef {
    const EXPECTING: &'static str =
        "a type name (`string`) or a mapping { type, required, default, secret, description }";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        Some(Ok(match v {
            Scalar::Str(s) => InputDef::Short(s.to_string()),
            Scalar::Null => InputDef::Full(InputFull::default()),
            _ => return None,
        }))
    }
    fn map<A: MapAccess<'de>>(map: A) -> Option<Result<Self, A::Error>> {
        Some(from_map(map).map(InputDef::Full))
    }
}

def_struct! {
    StepDef, "a step mapping" {
        "call" => call: Text,
        /// MPS `queue`: `suspended` (run once the transaction commits) or `active`.
        "queue" => queue: Text,
        "with" => with: Ordered<Lit>,
        "output" => output: OutputDef,
        "needs" => needs: Strings,
        "forEach" => for_each: ForEachDefs,
        /// rhai conditions (all must hold).
        "if" => if_: Strings,
        "script" => script: ScriptDef,
        "undo" => undo: ScriptDef,
        "calls" => calls: Strings,
        "when" => when: WhenDefs,
        "unless" => unless: Strings,
        "repeat" => repeat: RepeatDef,
        "executeData" => execute_data: Lit,
        "before" => before: List<TransformDef>,
        "after" => after: List<TransformDef>,
        "try" => try_: Ordered<StepDef>,
        "catch" => catch: Ordered<StepDef>,
        "select" => select: SelectDef,
    }
}

/// A step's `output:`: a mapping (call steps) or a path under `data` (script steps).
#[derive(Debug)]
pub(super) enum OutputDef {
    Map(Ordered<Lit>),
    Path(String),
}

impl<'de> Node<'de> for OutputDef {
    const EXPECTING: &'static str = "a mapping `{ dataKey: \"{{ executeData.x }}\" }` (or, on a script step, a path under data)";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        Some(Ok(match v {
            Scalar::Str(s) => OutputDef::Path(s.to_string()),
            Scalar::Null => OutputDef::Map(Ordered::default()),
            _ => return None,
        }))
    }
    fn map<A: MapAccess<'de>>(map: A) -> Option<Result<Self, A::Error>> {
        Some(from_map(map).map(OutputDef::Map))
    }
}

/// A script: its text, or `{ file: name.rhai }`.
#[derive(Debug)]
pub(super) enum ScriptDef {
    Text(String),
    File(String),
}

impl<'de> Node<'de> for ScriptDef {
    const EXPECTING: &'static str = "a rhai script (usually a `|` block) or `{ file: name.rhai }`";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        match v {
            Scalar::Str(s) => Some(Ok(ScriptDef::Text(s.to_string()))),
            _ => None,
        }
    }
    fn map<A: MapAccess<'de>>(mut map: A) -> Option<Result<Self, A::Error>> {
        let mut read = || {
            let mut file = None;
            while let Some(k) = map.next_key::<Text>()? {
                if k.0 != "file" || file.is_some() {
                    return Err(Detail::new(
                        format!("unexpected key `{}` in a script", k.0),
                        "a script is its text, or `{ file: name.rhai }`",
                    )
                    .raise());
                }
                file = Some(map.next_value::<Text>()?.0);
            }
            file.map(ScriptDef::File).ok_or_else(|| {
                Detail::new(
                    "an empty script mapping",
                    "write `{ file: name.rhai }`, or the script's text",
                )
                .raise()
            })
        };
        Some(read())
    }
}

def_struct! {
    ForEachItem, "a mapping { name, root, path, ifNull, filter }" {
        "name" => name: Text,
        "root" => root: Text,
        "path" => path: Text,
        "ifNull" => if_null: Name<IfNull>,
        /// rhai condition on `item`.
        "filter" => filter: Text,
    }
    required: "name"
}

/// A list of forEach items, or the shorthand map `{ var: "scope/path" }`.
#[derive(Debug)]
pub(super) enum ForEachDefs {
    Items(Vec<ForEachItem>),
    Short(Vec<(String, String)>),
}

impl<'de> Node<'de> for ForEachDefs {
    const EXPECTING: &'static str =
        "a list of { name, root, path, ifNull } or a mapping { name: \"scope/path\" }";
    fn seq<A: SeqAccess<'de>>(seq: A) -> Option<Result<Self, A::Error>> {
        Some(from_seq(seq).map(|List(v)| ForEachDefs::Items(v)))
    }
    fn map<A: MapAccess<'de>>(map: A) -> Option<Result<Self, A::Error>> {
        let read = || {
            let Ordered::<Text>(v) = from_map(map)?;
            let full = ["name", "root", "path", "ifNull"];
            if v.iter().any(|(k, _)| k == "name")
                && v.iter().all(|(k, _)| full.contains(&k.as_str()))
            {
                return Err(Detail::new(
                    "`forEach` with `name:` must be a list",
                    "write `forEach: [ { name: …, path: … } ]`, or the shorthand `forEach: { user: \"data/users/user\" }`",
                )
                .raise());
            }
            Ok(ForEachDefs::Short(
                v.into_iter().map(|(k, t)| (k, t.0)).collect(),
            ))
        };
        Some(read())
    }
}

def_struct! {
    CaseDef, "a mapping { select, case }" {
        "select" => select: Text,
        "case" => case: Text,
    }
    required: "select", "case"
}

#[derive(Debug)]
pub(super) enum WhenItem {
    Ref(String),
    Case(CaseDef),
}

impl<'de> Node<'de> for WhenItem {
    const EXPECTING: &'static str = "a path such as `data/users/user` or { select, case }";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        match v {
            Scalar::Str(s) => Some(Ok(WhenItem::Ref(s.to_string()))),
            _ => None,
        }
    }
    fn map<A: MapAccess<'de>>(map: A) -> Option<Result<Self, A::Error>> {
        Some(from_map(map).map(WhenItem::Case))
    }
}

#[derive(Debug, Default)]
pub(super) struct WhenDefs(pub Vec<WhenItem>);

impl<'de> Node<'de> for WhenDefs {
    const EXPECTING: &'static str = "a path, { select, case }, or a list of them";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        WhenItem::scalar(v).map(|r| r.map(|w| WhenDefs(vec![w])))
    }
    fn map<A: MapAccess<'de>>(map: A) -> Option<Result<Self, A::Error>> {
        Some(from_map(map).map(|c| WhenDefs(vec![WhenItem::Case(c)])))
    }
    fn seq<A: SeqAccess<'de>>(seq: A) -> Option<Result<Self, A::Error>> {
        Some(from_seq(seq).map(|List(v)| WhenDefs(v)))
    }
}

def_struct! {
    RepeatFull, "a mapping { source, path, ifNull }" {
        "source" => source: Text,
        "path" => path: Text,
        "ifNull" => if_null: Name<IfNull>,
    }
}

#[derive(Debug)]
pub(super) enum RepeatDef {
    Short(String),
    Full(RepeatFull),
}

impl<'de> Node<'de> for RepeatDef {
    const EXPECTING: &'static str = "a path such as `data/count` or { source, path, ifNull }";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        match v {
            Scalar::Str(s) => Some(Ok(RepeatDef::Short(s.to_string()))),
            _ => None,
        }
    }
    fn map<A: MapAccess<'de>>(map: A) -> Option<Result<Self, A::Error>> {
        Some(from_map(map).map(RepeatDef::Full))
    }
}

def_struct! {
    TransformDef, "a transform mapping" {
        "expr" => expr: Text,
        "source" => source: Text,
        "sourcePath" => source_path: Text,
        "template" => template: Text,
        "destination" => destination: Text,
        "destinationPath" => destination_path: Text,
        "mode" => mode: Name<Mode>,
        "ifNull" => if_null: Name<IfNull>,
    }
}

def_struct! {
    SelectDef, "a mapping { source, path, cases, default, ifNull }" {
        "source" => source: Text,
        "path" => path: Text,
        "cases" => cases: Ordered<Text>,
        "default" => default: Text,
        "ifNull" => if_null: Text,
    }
}

def_struct! {
    RequestDef, "a request mapping { call, procedure, data, batch, globalData, context }" {
        "call" => call: Text,
        "procedure" => procedure: ProcedureDef,
        "data" => data: Lit,
        "batch" => batch: Lit,
        "globalData" => global_data: Lit,
        "context" => context: Lit,
    }
}

deserialize_node!(
    NamespaceFile,
    InputDef,
    OutputDef,
    ScriptDef,
    ForEachDefs,
    WhenItem,
    WhenDefs,
    RepeatDef
);
