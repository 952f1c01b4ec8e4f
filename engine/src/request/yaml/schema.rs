//! JSON Schemas of the YAML/JSON namespace and request formats, generated (schemars) from
//! the definitions the parser reads (`defs.rs`): every mapping's keys come from the same
//! key table as the field walker's (`def_struct!`), and the names of `access`, `type`,
//! `mode` and `ifNull` from the serde enums that read them. What the schema cannot say
//! (a `call` naming a known procedure, templates, scripts) is checked by the parser and the
//! compiler; a file the parser accepts validates (tested over every example file).

use super::de::{List, Lit, Name, Ordered, ScalarDef, Strings, Text};
use super::defs::{
    ForEachDefs, InputDef, NamespaceFile, OutputDef, RepeatDef, RequestDef, ScriptDef, WhenDefs,
    WhenItem,
};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use std::borrow::Cow;

/// Scalars the parser reads as text (YAML numbers and booleans in their text form).
fn text_types() -> serde_json::Value {
    serde_json::json!(["string", "number", "integer", "boolean"])
}

impl JsonSchema for Text {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": text_types() })
    }
}

impl JsonSchema for Lit {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Value".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "description": "any value" })
    }
}

impl JsonSchema for Strings {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Strings".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "a string or a list of strings",
            "anyOf": [
                { "type": ["string", "integer", "null"] },
                { "type": "array", "items": { "type": text_types() } }
            ]
        })
    }
}

impl JsonSchema for ScalarDef {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Scalar".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number", "integer", "boolean"] })
    }
}

impl<T: JsonSchema> JsonSchema for Name<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

impl<T: JsonSchema> JsonSchema for Ordered<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("Map_of_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let item = generator.subschema_for::<T>().to_value();
        json_schema!({
            "anyOf": [
                { "type": "object", "additionalProperties": item },
                { "type": "null" }
            ]
        })
    }
}

impl<T: JsonSchema> JsonSchema for List<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("List_of_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let item = generator.subschema_for::<T>().to_value();
        json_schema!({ "type": "array", "items": item })
    }
}

impl JsonSchema for NamespaceFile {
    fn schema_name() -> Cow<'static, str> {
        "NamespaceFile".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let ns = generator
            .subschema_for::<super::defs::NamespaceDef>()
            .to_value();
        json_schema!({
            "title": "Provisio namespace file",
            "description": "A namespace (a mapping starting with `namespace:`) or a list of them; see docs/yaml-syntax.md",
            "anyOf": [ns, { "type": "array", "items": ns }, { "type": "null" }]
        })
    }
}

impl JsonSchema for InputDef {
    fn schema_name() -> Cow<'static, str> {
        "Input".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let full = generator
            .subschema_for::<super::defs::InputFull>()
            .to_value();
        json_schema!({
            "description": "a type name (`string`) or a mapping { type, required, default, secret, description }",
            "anyOf": [{ "type": "string" }, { "type": "null" }, full]
        })
    }
}

impl JsonSchema for OutputDef {
    fn schema_name() -> Cow<'static, str> {
        "Output".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let map = generator.subschema_for::<Ordered<Lit>>().to_value();
        json_schema!({
            "description": "a mapping `{ dataKey: \"{{ executeData.x }}\" }` (or, on a script step, a path under data)",
            "anyOf": [{ "type": "string" }, map]
        })
    }
}

impl JsonSchema for ScriptDef {
    fn schema_name() -> Cow<'static, str> {
        "Script".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "a rhai script (usually a `|` block) or `{ file: name.rhai }`",
            "anyOf": [
                { "type": "string" },
                {
                    "type": "object",
                    "properties": { "file": { "type": "string" } },
                    "required": ["file"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

impl JsonSchema for ForEachDefs {
    fn schema_name() -> Cow<'static, str> {
        "ForEach".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let item = generator
            .subschema_for::<super::defs::ForEachItem>()
            .to_value();
        json_schema!({
            "description": "a list of { name, root, path, ifNull, filter } or a mapping { name: \"scope/path\" }",
            "anyOf": [
                { "type": "array", "items": item },
                { "type": "object", "additionalProperties": { "type": text_types() } }
            ]
        })
    }
}

impl JsonSchema for WhenItem {
    fn schema_name() -> Cow<'static, str> {
        "WhenItem".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let case = generator.subschema_for::<super::defs::CaseDef>().to_value();
        json_schema!({
            "description": "a path such as `data/users/user` or { select, case }",
            "anyOf": [{ "type": "string" }, case]
        })
    }
}

impl JsonSchema for WhenDefs {
    fn schema_name() -> Cow<'static, str> {
        "When".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let item = generator.subschema_for::<WhenItem>().to_value();
        json_schema!({
            "description": "a path, { select, case }, or a list of them",
            "anyOf": [item, { "type": "array", "items": item }]
        })
    }
}

impl JsonSchema for RepeatDef {
    fn schema_name() -> Cow<'static, str> {
        "Repeat".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let full = generator
            .subschema_for::<super::defs::RepeatFull>()
            .to_value();
        json_schema!({
            "description": "a path such as `data/count` or { source, path, ifNull }",
            "anyOf": [{ "type": "string" }, full]
        })
    }
}

/// Draft 7: what editors (yaml-language-server, VS Code) read best.
fn generator() -> SchemaGenerator {
    schemars::generate::SchemaSettings::draft07().into_generator()
}

/// The JSON Schema (draft 7) of a YAML/JSON namespace file.
pub(crate) fn namespace() -> serde_json::Value {
    generator()
        .into_root_schema_for::<NamespaceFile>()
        .to_value()
}

/// The JSON Schema (draft 7) of a YAML/JSON request (one request, or a batch).
pub(crate) fn request() -> serde_json::Value {
    let mut v = generator().into_root_schema_for::<RequestDef>().to_value();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "title".into(),
            serde_json::Value::String("Provisio request".into()),
        );
    }
    v
}
