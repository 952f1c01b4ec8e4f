//! The filesystem provider's durable records, as serde enums tagged by `op`: the undo
//! records it hands the engine (journaled, and handed back for undo, prepare and commit)
//! and the intent markers it writes before a change (see [`super::pending`]).
//!
//! Field names and value forms are the ones the provider has always written, so records
//! in journals and marker files from older versions still decode: undo records are data
//! trees whose values are text (`<previous>none</previous>`, `<mode>0644</mode>`), read
//! through their JSON view (a value repeated once is a scalar, more often a list).

use super::acl::PermState;
use provisio_engine::data::json::{from_json, to_json};
use provisio_engine::data::Element;
use provisio_engine::provider::ProviderError;
use serde::{Deserialize, Serialize};

/// A record that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// An undo record (from the journal) that does not decode.
    #[error("the {procedure} undo record cannot be read ({source}); it was not written by this provider or was changed")]
    Undo {
        /// The procedure whose record it is.
        procedure: String,
        /// What serde found.
        #[source]
        source: serde_json::Error,
    },
    /// An intent marker file that does not decode.
    #[error("intent marker {file} cannot be read ({source}); whether its call was applied is unknown: check by hand, then delete the marker")]
    Marker {
        /// The marker file under the root.
        file: String,
        /// What serde found.
        #[source]
        source: serde_json::Error,
    },
    /// A marker the engine journaled for a call ([`Marker::from_element`]) that does not
    /// decode.
    #[error("the intent marker journaled for {key} cannot be read ({reason}); whether its call was applied is unknown: check by hand")]
    JournaledMarker {
        /// The call's idempotency key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A record that cannot be encoded (never expected: every field is text or a number).
    #[error("cannot encode a filesystem provider record: {0}")]
    Encode(String),
}

impl From<RecordError> for ProviderError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Undo { .. } => ProviderError::invalid(e.to_string()),
            RecordError::Marker { .. }
            | RecordError::JournaledMarker { .. }
            | RecordError::Encode(_) => ProviderError::permanent(e.to_string()),
        }
    }
}

/// What a Stage* call staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StagedKind {
    /// StageFolder.
    Folder,
    /// StageFile.
    File,
}

impl StagedKind {
    /// `folder` / `file`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            StagedKind::Folder => "folder",
            StagedKind::File => "file",
        }
    }
}

/// How to reverse one call. Paths are relative to the root and are checked again like
/// inputs before use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub(crate) enum UndoRecord {
    /// CreateFolder: remove the folder if empty, then the parents this call created.
    #[serde(rename = "removeFolder")]
    RemoveFolder {
        #[serde(with = "text")]
        path: String,
        /// Deepest first.
        #[serde(
            rename = "createdParent",
            default,
            with = "text_list",
            skip_serializing_if = "Vec::is_empty"
        )]
        created_parents: Vec<String>,
    },
    /// DeleteFolder: move the folder back from `.provisio-trash/<trash>`.
    #[serde(rename = "restoreFolder")]
    RestoreFolder {
        #[serde(with = "text")]
        path: String,
        #[serde(with = "text")]
        trash: String,
    },
    /// WriteFile of a new file: remove it.
    #[serde(rename = "removeFile")]
    RemoveFile {
        #[serde(with = "text")]
        path: String,
    },
    /// SetQuota: put back the previous quota (`none`: remove it).
    #[serde(rename = "restoreQuota")]
    RestoreQuota {
        #[serde(with = "text")]
        path: String,
        #[serde(with = "quota_text")]
        previous: Option<u64>,
    },
    /// MoveFolder: move `to` back to `from`.
    #[serde(rename = "moveBack")]
    MoveBack {
        #[serde(with = "text")]
        from: String,
        #[serde(with = "text")]
        to: String,
    },
    /// SetPermissions: put back the previous mode and ACLs.
    #[serde(rename = "restorePermissions")]
    RestorePermissions {
        #[serde(with = "text")]
        path: String,
        #[serde(flatten)]
        previous: PermTexts,
    },
    /// DeleteFile: move the file back from `.provisio-trash/<trash>` (where nothing is).
    #[serde(rename = "restoreFile")]
    RestoreFile {
        #[serde(with = "text")]
        path: String,
        #[serde(with = "text")]
        trash: String,
    },
    /// WriteFile with `overwrite` of an existing file: put the old file, kept as
    /// `.provisio-trash/<trash>`, back in place of the new one.
    #[serde(rename = "restoreOverwritten")]
    RestoreOverwritten {
        #[serde(with = "text")]
        path: String,
        #[serde(with = "text")]
        trash: String,
    },
    /// SetOwner: put back the previous owner and group (numeric ids).
    #[serde(rename = "restoreOwner")]
    RestoreOwner {
        #[serde(with = "text")]
        path: String,
        #[serde(with = "decimal")]
        uid: u32,
        #[serde(with = "decimal")]
        gid: u32,
        /// The mode before the change, octal (`chown` clears setuid/setgid on files).
        #[serde(with = "text")]
        mode: String,
    },
    /// StageFolder / StageFile: remove the staged content, or the target after a commit.
    #[serde(rename = "unstage")]
    Unstage {
        kind: StagedKind,
        #[serde(with = "text")]
        path: String,
        /// The folder under `.provisio-staging`.
        #[serde(with = "text")]
        staging: String,
        /// Files: the content's length.
        #[serde(default, with = "opt_decimal", skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
        /// Files: the content's FNV-1a hash, hexadecimal.
        #[serde(default, with = "opt_hex", skip_serializing_if = "Option::is_none")]
        hash: Option<u64>,
    },
    /// CopyDirectory: move the copy at `path` to `.provisio-trash/<trash>`.
    #[serde(rename = "removeCopy")]
    RemoveCopy {
        #[serde(with = "text")]
        path: String,
        #[serde(with = "text")]
        trash: String,
    },
}

impl UndoRecord {
    /// The record as the data tree the engine journals (root `undo`).
    pub(crate) fn to_element(&self) -> Result<Element, RecordError> {
        let value = serde_json::to_value(self).map_err(|e| RecordError::Encode(e.to_string()))?;
        from_json("undo", &value).map_err(|e| RecordError::Encode(e.to_string()))
    }

    /// Reads a journaled record of a `procedure` call.
    pub(crate) fn from_element(procedure: &str, undo: &Element) -> Result<Self, RecordError> {
        serde_json::from_value(to_json(undo)).map_err(|source| RecordError::Undo {
            procedure: procedure.to_string(),
            source,
        })
    }
}

/// Mode and ACLs in their text forms (`0644`, `none` or `user::rw-,…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PermTexts {
    #[serde(with = "text")]
    pub(crate) mode: String,
    #[serde(with = "text", default = "none_text")]
    pub(crate) acl: String,
    #[serde(rename = "defaultAcl", with = "text", default = "none_text")]
    pub(crate) default_acl: String,
}

fn none_text() -> String {
    "none".to_string()
}

impl PermTexts {
    /// The text forms of `state`.
    pub(crate) fn of(state: &PermState) -> Self {
        PermTexts {
            mode: format!("{:04o}", state.mode),
            acl: state.access_text(),
            default_acl: state.default_text(),
        }
    }

    /// Parses the text forms back.
    pub(crate) fn state(&self) -> Result<PermState, ProviderError> {
        let mode = u32::from_str_radix(self.mode.trim(), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                ProviderError::invalid(format!("recorded mode {:?} is not octal", self.mode))
            })?;
        PermState::from_texts(mode, &self.acl, &self.default_acl)
            .map_err(|e| ProviderError::invalid(format!("recorded permissions: {e}")))
    }
}

/// Phase of a Stage* call, in its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StagePhase {
    /// Staged, not committed.
    Staged,
    /// About to rename into place (or done).
    Committing,
}

/// An intent marker: what a call is about to change, written before the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub(crate) enum Marker {
    /// CreateFolder of `path`; `missing_parents` did not exist before, and are the call's
    /// own to remove on undo. When another call made one of them between the look and the
    /// create, a second marker (the last line of the key holds) lists only the parents this
    /// call made, written before `path` is made.
    CreateFolder {
        path: String,
        #[serde(rename = "missingParents", default)]
        missing_parents: Vec<String>,
    },
    /// WriteFile of a new file at `path`.
    WriteFile {
        path: String,
        #[serde(default)]
        bytes: u64,
    },
    /// SetQuota of `path` to `megabytes` (from `previous`).
    SetQuota {
        path: String,
        megabytes: u64,
        #[serde(default)]
        previous: Option<u64>,
    },
    /// MoveFolder from `from` to `to`.
    MoveFolder { from: String, to: String },
    /// SetPermissions of `path` from `previous` to `new`.
    SetPermissions {
        path: String,
        previous: PermTexts,
        new: PermTexts,
    },
    /// WriteFile with `overwrite` of the existing file at `path`: the old file is kept as
    /// `.provisio-trash/<trash>`, the new content has `bytes` bytes and FNV-1a `hash`.
    OverwriteFile {
        path: String,
        trash: String,
        bytes: u64,
        hash: u64,
    },
    /// SetOwner of `path` from `previous` to `new` (uid, gid).
    SetOwner {
        path: String,
        previous: (u32, u32),
        new: (u32, u32),
        /// The mode before the change (`chown` clears setuid/setgid on files).
        #[serde(default)]
        mode: u32,
    },
    /// CopyDirectory to `path`, built in `.provisio-staging/<staging>/item` first.
    CopyFolder { path: String, staging: String },
    /// StageFolder / StageFile.
    Stage {
        phase: StagePhase,
        kind: StagedKind,
        path: String,
        staging: String,
    },
}

/// The name of a marker's element in the engine's journal ([`Marker::to_element`]).
const MARKER_ELEMENT: &str = "marker";

/// The form of the marker's text, in the element's `v` attribute: `1` is the JSON of the
/// pending files' lines (the same serde form, so both read alike). A later form gets a new
/// number; an unknown one is refused rather than guessed at.
const MARKER_FORM: &str = "1";

impl Marker {
    /// The marker as the engine journals it (`Call::intent_durable_with`):
    /// `<marker v="1">{"op":"CreateFolder",…}</marker>`. One text node of compact JSON,
    /// not a tree of fields: the journal keeps it as ~100–200 bytes, and numbers (a u64
    /// hash) and lists of one path come back exactly as written, which a data tree's JSON
    /// view would not promise.
    pub(crate) fn to_element(&self) -> Result<Element, RecordError> {
        let json = serde_json::to_string(self).map_err(|e| RecordError::Encode(e.to_string()))?;
        let mut element = Element::with_text(MARKER_ELEMENT, json);
        element.set_attr("v", MARKER_FORM);
        Ok(element)
    }

    /// Reads back a marker the engine journaled for the call of idempotency key `key`.
    pub(crate) fn from_element(key: &str, element: &Element) -> Result<Marker, RecordError> {
        let refused = |reason: String| RecordError::JournaledMarker {
            key: key.to_string(),
            reason,
        };
        if element.local_name() != MARKER_ELEMENT {
            return Err(refused(format!(
                "a <{}> element, not a <{MARKER_ELEMENT}>",
                element.name
            )));
        }
        match element.attr("v") {
            Some(MARKER_FORM) => {}
            Some(other) => {
                return Err(refused(format!(
                    "form {other:?}, which this version does not know (written by a newer one?)"
                )))
            }
            None => return Err(refused("no form (`v` attribute)".to_string())),
        }
        serde_json::from_str(&element.text()).map_err(|e| refused(e.to_string()))
    }
}

/// A value written as text but read leniently: text, a number or a boolean (a data tree
/// read back from some request formats types its scalars); an empty element is `""`.
mod text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            serde_json::Value::Bool(b) => Ok(b.to_string()),
            serde_json::Value::Null => Ok(String::new()),
            other => Err(D::Error::custom(format!("expected text, got {other}"))),
        }
    }
}

/// A repeated text element: one occurrence reads as a scalar, several as a list.
mod text_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        use serde::de::Error;
        let one = |v: serde_json::Value| match v {
            serde_json::Value::String(s) => Ok(s),
            other => Err(D::Error::custom(format!("expected a path, got {other}"))),
        };
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Array(items) => items.into_iter().map(one).collect(),
            serde_json::Value::Null => Ok(Vec::new()),
            v => Ok(vec![one(v)?]),
        }
    }
}

/// A quota in MiB as text, `none` for no quota.
mod quota_text {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&n.to_string()),
            None => s.serialize_str("none"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        use serde::de::Error;
        let t = super::text::deserialize(d)?;
        match t.trim() {
            "none" => Ok(None),
            n => n
                .parse()
                .map(Some)
                .map_err(|_| D::Error::custom(format!("bad previous quota {t:?}"))),
        }
    }
}

/// A number as decimal text.
mod decimal {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        use serde::de::Error;
        let t = super::text::deserialize(d)?;
        t.trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("bad numeric id {t:?}")))
    }
}

/// An optional number as decimal text.
mod opt_decimal {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&n.to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        use serde::de::Error;
        let t = super::text::deserialize(d)?;
        t.trim()
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("bad byte count {t:?}")))
    }
}

/// An optional number as 16 hexadecimal digits.
mod opt_hex {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&format!("{n:016x}")),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        use serde::de::Error;
        let t = super::text::deserialize(d)?;
        u64::from_str_radix(t.trim(), 16)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("bad content hash {t:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use provisio_engine::data::Element;

    /// An undo record built the way versions before the typed records built them.
    fn old_record(fields: &[(&str, &str)]) -> Element {
        let mut e = Element::new("undo");
        for (k, v) in fields {
            e.push(Element::with_text(*k, *v));
        }
        e
    }

    #[test]
    fn old_undo_records_decode() {
        let cases: Vec<(Element, UndoRecord)> = vec![
            (
                old_record(&[("op", "removeFolder"), ("path", "a/b/c")]),
                UndoRecord::RemoveFolder {
                    path: "a/b/c".into(),
                    created_parents: vec![],
                },
            ),
            (
                old_record(&[
                    ("op", "removeFolder"),
                    ("path", "a/b/c"),
                    ("createdParent", "a/b"),
                ]),
                UndoRecord::RemoveFolder {
                    path: "a/b/c".into(),
                    created_parents: vec!["a/b".into()],
                },
            ),
            (
                old_record(&[
                    ("op", "removeFolder"),
                    ("path", "a/b/c"),
                    ("createdParent", "a/b"),
                    ("createdParent", "a"),
                ]),
                UndoRecord::RemoveFolder {
                    path: "a/b/c".into(),
                    created_parents: vec!["a/b".into(), "a".into()],
                },
            ),
            (
                old_record(&[("op", "restoreFolder"), ("path", "d"), ("trash", "t-1")]),
                UndoRecord::RestoreFolder {
                    path: "d".into(),
                    trash: "t-1".into(),
                },
            ),
            (
                old_record(&[("op", "removeFile"), ("path", "f.txt")]),
                UndoRecord::RemoveFile {
                    path: "f.txt".into(),
                },
            ),
            (
                old_record(&[("op", "restoreQuota"), ("path", "q"), ("previous", "none")]),
                UndoRecord::RestoreQuota {
                    path: "q".into(),
                    previous: None,
                },
            ),
            (
                old_record(&[("op", "restoreQuota"), ("path", "q"), ("previous", "100")]),
                UndoRecord::RestoreQuota {
                    path: "q".into(),
                    previous: Some(100),
                },
            ),
            (
                old_record(&[("op", "moveBack"), ("from", "x"), ("to", "y")]),
                UndoRecord::MoveBack {
                    from: "x".into(),
                    to: "y".into(),
                },
            ),
            (
                old_record(&[
                    ("op", "restorePermissions"),
                    ("path", "p"),
                    ("mode", "0644"),
                    ("acl", "none"),
                    ("defaultAcl", "none"),
                ]),
                UndoRecord::RestorePermissions {
                    path: "p".into(),
                    previous: PermTexts {
                        mode: "0644".into(),
                        acl: "none".into(),
                        default_acl: "none".into(),
                    },
                },
            ),
            (
                old_record(&[
                    ("op", "unstage"),
                    ("kind", "folder"),
                    ("path", "s"),
                    ("staging", "k"),
                ]),
                UndoRecord::Unstage {
                    kind: StagedKind::Folder,
                    path: "s".into(),
                    staging: "k".into(),
                    bytes: None,
                    hash: None,
                },
            ),
            (
                old_record(&[
                    ("op", "unstage"),
                    ("kind", "file"),
                    ("path", "s.txt"),
                    ("staging", "k"),
                    ("bytes", "5"),
                    ("hash", "a430d84680aabd0b"),
                ]),
                UndoRecord::Unstage {
                    kind: StagedKind::File,
                    path: "s.txt".into(),
                    staging: "k".into(),
                    bytes: Some(5),
                    hash: Some(0xa430_d846_80aa_bd0b),
                },
            ),
        ];
        for (element, want) in cases {
            let got = UndoRecord::from_element("X", &element).expect("decodes");
            assert_eq!(got, want, "{element:?}");
            // Written again, it reads back the same and keeps the old field texts.
            let again = got.to_element().expect("encodes");
            assert_eq!(
                UndoRecord::from_element("X", &again).expect("round trip"),
                want
            );
            for child in element.elements() {
                let name = child.name.as_str();
                let old: Vec<String> = element
                    .elements()
                    .filter(|c| c.name.as_str() == name)
                    .map(Element::string_value)
                    .collect();
                let new: Vec<String> = again
                    .elements()
                    .filter(|c| c.name.as_str() == name)
                    .map(Element::string_value)
                    .collect();
                assert_eq!(old, new, "field {name}");
            }
        }
    }

    #[test]
    fn bad_undo_records_are_refused_with_the_procedure_named() {
        for bad in [
            old_record(&[("op", "shred"), ("path", "x")]),
            old_record(&[("path", "x")]),
            old_record(&[("op", "removeFolder")]),
            old_record(&[("op", "restoreQuota"), ("path", "q"), ("previous", "lots")]),
        ] {
            let e = UndoRecord::from_element("CreateFolder", &bad).expect_err("refused");
            assert!(e.to_string().contains("CreateFolder undo record"), "{e}");
        }
    }

    fn every_marker() -> Vec<Marker> {
        let perms = |mode: &str| PermTexts {
            mode: mode.into(),
            acl: "user::rw-,user:1001:r--,group::r--,mask::r--,other::---".into(),
            default_acl: "none".into(),
        };
        vec![
            Marker::CreateFolder {
                path: "a/b/c".into(),
                missing_parents: vec!["a".into()],
            },
            Marker::CreateFolder {
                path: "x".into(),
                missing_parents: Vec::new(),
            },
            Marker::WriteFile {
                path: "f \"quoted\" é".into(),
                bytes: u64::MAX,
            },
            Marker::SetQuota {
                path: "q".into(),
                megabytes: 5,
                previous: None,
            },
            Marker::MoveFolder {
                from: "x".into(),
                to: "y/z".into(),
            },
            Marker::SetPermissions {
                path: "p".into(),
                previous: perms("0644"),
                new: perms("0600"),
            },
            Marker::OverwriteFile {
                path: "o".into(),
                trash: "k".into(),
                bytes: 7,
                hash: u64::MAX - 1,
            },
            Marker::SetOwner {
                path: "s".into(),
                previous: (0, 0),
                new: (1001, 2000),
                mode: 0o4755,
            },
            Marker::CopyFolder {
                path: "c".into(),
                staging: "k".into(),
            },
            Marker::Stage {
                phase: StagePhase::Staged,
                kind: StagedKind::Folder,
                path: "s".into(),
                staging: "k".into(),
            },
        ]
    }

    /// Every marker comes back from its journaled element as it was, through the engine's
    /// serde form of an element too (what a journal record holds).
    #[test]
    fn markers_round_trip_through_their_journal_element() {
        for marker in every_marker() {
            let element = marker.to_element().expect("encode");
            assert_eq!(element.local_name(), "marker");
            assert_eq!(element.attr("v"), Some("1"));
            let stored: Element =
                serde_json::from_str(&serde_json::to_string(&element).expect("store"))
                    .expect("load");
            assert_eq!(
                Marker::from_element("t/s", &stored).expect("decode"),
                marker
            );
        }
    }

    #[test]
    fn a_journaled_marker_of_another_form_or_element_is_refused() {
        let mut newer = every_marker()[0].to_element().expect("encode");
        newer.set_attr("v", "2");
        let mut unversioned =
            Element::with_text("marker", r#"{"op":"MoveFolder","from":"a","to":"b"}"#);
        let mut garbled = every_marker()[0].to_element().expect("encode");
        garbled.children.clear();
        garbled.push(Element::with_text("path", "a"));
        let mut other = Element::with_text("undo", "{}");
        other.set_attr("v", "1");
        unversioned.attrs.clear();
        for (bad, says) in [
            (newer, "form \"2\""),
            (unversioned, "no form"),
            (garbled, "intent marker journaled for t/s"),
            (other, "<undo>"),
        ] {
            let e = Marker::from_element("t/s", &bad).expect_err("refused");
            assert!(e.to_string().contains(says), "{e}");
            assert!(e.to_string().contains("t/s"), "{e}");
        }
    }

    #[test]
    fn old_markers_decode() {
        let cases = [
            (
                r#"{"op":"CreateFolder","path":"a/b","missingParents":["a"]}"#,
                Marker::CreateFolder {
                    path: "a/b".into(),
                    missing_parents: vec!["a".into()],
                },
            ),
            (
                r#"{"op":"WriteFile","path":"f","bytes":3}"#,
                Marker::WriteFile {
                    path: "f".into(),
                    bytes: 3,
                },
            ),
            (
                r#"{"op":"SetQuota","path":"q","megabytes":5,"previous":null}"#,
                Marker::SetQuota {
                    path: "q".into(),
                    megabytes: 5,
                    previous: None,
                },
            ),
            (
                r#"{"op":"SetQuota","path":"q","megabytes":5,"previous":2}"#,
                Marker::SetQuota {
                    path: "q".into(),
                    megabytes: 5,
                    previous: Some(2),
                },
            ),
            (
                r#"{"op":"MoveFolder","from":"x","to":"y"}"#,
                Marker::MoveFolder {
                    from: "x".into(),
                    to: "y".into(),
                },
            ),
            (
                r#"{"op":"SetPermissions","path":"p","previous":{"mode":"0644","acl":"none","defaultAcl":"none"},"new":{"mode":"0600","acl":"none","defaultAcl":"none"}}"#,
                Marker::SetPermissions {
                    path: "p".into(),
                    previous: PermTexts {
                        mode: "0644".into(),
                        acl: "none".into(),
                        default_acl: "none".into(),
                    },
                    new: PermTexts {
                        mode: "0600".into(),
                        acl: "none".into(),
                        default_acl: "none".into(),
                    },
                },
            ),
            (
                r#"{"op":"Stage","phase":"committing","kind":"file","path":"s","staging":"k"}"#,
                Marker::Stage {
                    phase: StagePhase::Committing,
                    kind: StagedKind::File,
                    path: "s".into(),
                    staging: "k".into(),
                },
            ),
        ];
        for (json, want) in cases {
            let got: Marker = serde_json::from_str(json).expect(json);
            assert_eq!(got, want);
            let again: Marker =
                serde_json::from_str(&serde_json::to_string(&got).expect("encode")).expect("read");
            assert_eq!(again, want);
        }
    }
}
