//! The File System Provider's MPS procedures — CreateDirectory, DeleteDirectory,
//! CopyDirectory, MoveDirectory, RenameDirectory, ListDirectory, GetDirectoryAttributes,
//! SetDirectoryAttributes — with MPS's input elements (`dirName`, `sourcePath/@path`,
//! `destPath/@path`, `newName`, `oldName`, `controlInfo`, `properties`).
//!
//! Paths in `@path` are relative to the provider's root and go through the same sandbox
//! checks as every other input. The procedures that have a Provisio twin are translated
//! into it and run it unchanged (CreateFolder, DeleteFolder with `recurse`, MoveFolder,
//! SetPermissions), so undo, recovery and preview are theirs; CopyDirectory, ListDirectory
//! and GetDirectoryAttributes are implemented here. Every element is either honoured or
//! refused with an error naming it.

use super::records::{Marker, UndoRecord};
use super::sandbox::{io_error, RelPath, E_ALREADY_EXISTS, E_PATH_NOT_FOUND};
use super::staging::{rename_noreplace, STAGING_DIR};
use super::{pending, purge, set_mode, trash_path, Fs, TRASH_DIR};
use crate::common::{parse_bool, sanitize_key, text};
use provisio_engine::data::{Element, Node, Scalar};
use provisio_engine::provider::{Call, Outcome, Preview, ProviderError};
use std::io;
use std::path::{Path, PathBuf};

/// The MPS procedures of the File System Provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MpsProcedure {
    /// → CreateFolder.
    CreateDirectory,
    /// → DeleteFolder with `recurse`.
    DeleteDirectory,
    /// A copy through the staging area.
    CopyDirectory,
    /// → MoveFolder.
    MoveDirectory,
    /// → MoveFolder within one folder.
    RenameDirectory,
    /// Read: the folder's entries.
    ListDirectory,
    /// Read: readOnly, hidden, mode.
    GetDirectoryAttributes,
    /// → SetPermissions (readOnly).
    SetDirectoryAttributes,
}

impl MpsProcedure {
    /// All of them, in the order the docs list them.
    pub(crate) const ALL: [MpsProcedure; 8] = [
        MpsProcedure::CreateDirectory,
        MpsProcedure::DeleteDirectory,
        MpsProcedure::CopyDirectory,
        MpsProcedure::MoveDirectory,
        MpsProcedure::RenameDirectory,
        MpsProcedure::ListDirectory,
        MpsProcedure::GetDirectoryAttributes,
        MpsProcedure::SetDirectoryAttributes,
    ];

    /// The procedure called, if `name` is one.
    pub(crate) fn of(name: &str) -> Option<MpsProcedure> {
        MpsProcedure::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The MPS name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            MpsProcedure::CreateDirectory => "CreateDirectory",
            MpsProcedure::DeleteDirectory => "DeleteDirectory",
            MpsProcedure::CopyDirectory => "CopyDirectory",
            MpsProcedure::MoveDirectory => "MoveDirectory",
            MpsProcedure::RenameDirectory => "RenameDirectory",
            MpsProcedure::ListDirectory => "ListDirectory",
            MpsProcedure::GetDirectoryAttributes => "GetDirectoryAttributes",
            MpsProcedure::SetDirectoryAttributes => "SetDirectoryAttributes",
        }
    }

    /// Read procedures change nothing.
    pub(crate) fn is_read(self) -> bool {
        matches!(
            self,
            MpsProcedure::ListDirectory | MpsProcedure::GetDirectoryAttributes
        )
    }

    /// The input elements (besides `preferredDomainController`, accepted everywhere).
    pub(crate) fn elements(self) -> &'static [&'static str] {
        match self {
            MpsProcedure::CreateDirectory
            | MpsProcedure::DeleteDirectory
            | MpsProcedure::GetDirectoryAttributes => &["dirName", "sourcePath"],
            MpsProcedure::CopyDirectory => &[
                "dirName",
                "newName",
                "sourcePath",
                "destPath",
                "controlInfo",
            ],
            MpsProcedure::MoveDirectory => &["dirName", "sourcePath", "destPath"],
            MpsProcedure::RenameDirectory => &["oldName", "newName", "sourcePath"],
            MpsProcedure::ListDirectory => &["sourcePath", "dirName"],
            MpsProcedure::SetDirectoryAttributes => {
                &["dirName", "sourcePath", "properties", "security"]
            }
        }
    }

    /// What it does, for `provisio namespaces`.
    pub(crate) fn description(self) -> &'static str {
        match self {
            MpsProcedure::CreateDirectory => "MPS: creates `sourcePath/@path`/`dirName` (the parent must exist). Undo removes it if empty.",
            MpsProcedure::DeleteDirectory => "MPS: deletes `sourcePath/@path`/`dirName` with its content (kept in the trash for undo). Undo puts it back.",
            MpsProcedure::CopyDirectory => "MPS: copies `sourcePath/@path`/`dirName` to `destPath/@path`/(`newName` or `dirName`), subfolders unless controlInfo/@recursive=\"false\"; the target must not exist. Undo moves the copy to the trash.",
            MpsProcedure::MoveDirectory => "MPS: moves `sourcePath/@path`/`dirName` into `destPath/@path`. Undo moves it back.",
            MpsProcedure::RenameDirectory => "MPS: renames `sourcePath/@path`/`oldName` to `newName`. Undo renames it back.",
            MpsProcedure::ListDirectory => "MPS: lists `sourcePath/@path` (or its `dirName`). Outputs `directories/directory/name`, `files/file/{name, bytes}`.",
            MpsProcedure::GetDirectoryAttributes => "MPS: outputs `properties/{readOnly, hidden}` and `mode` of `sourcePath/@path`/`dirName`.",
            MpsProcedure::SetDirectoryAttributes => "MPS: `properties/readOnly` clears (true) or gives back the owner (false) write permission; `hidden` only as the name already says; indexing and encompress are refused. `security/acl/ace{permission+, mode, trustee, trusteeForm?, trusteeType?, inheritance*}` become POSIX ACL entries (GRANT adds to the trustee's entry, SET replaces it, REVOKE removes it; DENY and SIDs refused; containerInherit/objectInherit also set the default ACL). Undo restores the exact mode and ACLs.",
        }
    }
}

fn invalid(p: MpsProcedure, message: impl std::fmt::Display) -> ProviderError {
    ProviderError::invalid(format!("File System Provider/{}: {message}", p.name()))
}

/// Prefixes a message of the Provisio procedure with the MPS procedure, naming the MPS
/// elements instead of the Provisio inputs they became.
fn rename_error(p: MpsProcedure, e: ProviderError, names: &[(&str, &str)]) -> ProviderError {
    let rename = |m: String| {
        let mut m = m;
        for (provisio, mps) in names {
            m = m.replace(&format!("input `{provisio}`"), &format!("`{mps}`"));
        }
        format!("File System Provider/{}: {m}", p.name())
    };
    match e {
        ProviderError::Permanent { code, message } => ProviderError::Permanent {
            code,
            message: rename(message),
        },
        ProviderError::Transient { code, message } => ProviderError::Transient {
            code,
            message: rename(message),
        },
        ProviderError::InDoubt { code, message } => ProviderError::InDoubt {
            code,
            message: rename(message),
        },
        ProviderError::Unsupported(m) => ProviderError::Unsupported(rename(m)),
    }
}

/// Whether `machine` names this machine.
fn is_local_machine(machine: &str) -> bool {
    let m = machine.trim().trim_end_matches('.').to_ascii_lowercase();
    if matches!(m.as_str(), "" | "." | "localhost" | "127.0.0.1" | "::1") {
        return true;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| {
            let h = h.trim().to_ascii_lowercase();
            !h.is_empty() && (m == h || m.split('.').next() == Some(h.as_str()))
        })
        .unwrap_or(false)
}

/// A single folder name (`dirName`, `newName`, `oldName`).
fn component(p: MpsProcedure, field: &str, raw: &str) -> Result<String, ProviderError> {
    let bad = |why: &str| invalid(p, format!("`{field}` {raw:?} {why}"));
    if raw.trim().is_empty() {
        return Err(invalid(p, format!("`{field}` is empty")));
    }
    if raw.contains('/') || raw.contains('\\') {
        return Err(bad("holds a path separator; give one folder name and the folder it is in as sourcePath/@path"));
    }
    if raw == "." || raw == ".." {
        return Err(bad("is not a folder name"));
    }
    if raw.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    if raw.len() > 255 {
        return Err(bad("is longer than 255 bytes"));
    }
    Ok(raw.to_string())
}

/// A folder inside `base`.
fn join(base: &RelPath, name: &str) -> String {
    if base.parts().is_empty() {
        name.to_string()
    } else {
        format!("{}/{name}", base.display())
    }
}

/// The inputs of one MPS call, checked.
struct Inputs {
    /// The folder the call is about (source).
    source: RelPath,
    /// Copy/move/rename target.
    target: Option<RelPath>,
}

impl Fs {
    /// Refuses elements the procedure does not read.
    fn check_mps_elements(&self, p: MpsProcedure, data: &Element) -> Result<(), ProviderError> {
        let allowed = p.elements();
        for e in data.elements() {
            if allowed.contains(&e.name.as_str()) || e.name == "preferredDomainController" {
                continue;
            }
            return Err(invalid(
                p,
                format!(
                    "element `{}` is not an input of this procedure (inputs: {})",
                    e.name,
                    allowed.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// `sourcePath` / `destPath`: the `path` attribute (or the element's text), relative to
    /// the root (`.` is the root); `@machine` must be this machine.
    fn mps_folder(
        &self,
        p: MpsProcedure,
        data: &Element,
        field: &str,
    ) -> Result<RelPath, ProviderError> {
        let e = data.child(field).ok_or_else(|| {
            invalid(
                p,
                format!("`{field}` is required (<{field} path=\"tenants/contoso\"/>)"),
            )
        })?;
        for (name, value) in &e.attrs {
            match name.as_str() {
                "path" => {}
                "machine" if is_local_machine(value) => {}
                "machine" => {
                    return Err(invalid(
                        p,
                        format!("`{field}/@machine` {value:?} is not this machine; the provider changes only folders under its own root"),
                    ))
                }
                other => {
                    return Err(invalid(
                        p,
                        format!("`{field}/@{other}` is not known ({field} takes path and machine)"),
                    ))
                }
            }
        }
        let raw = match e.attr("path") {
            Some(path) => path.to_string(),
            None => e.string_value(),
        };
        let label = format!("{field}/@path");
        if raw.trim().is_empty() {
            return Err(invalid(
                p,
                format!("`{label}` is empty; `.` is the provider's root"),
            ));
        }
        self.checked(&label, raw.trim(), true)
            .map_err(|e| rename_error(p, e, &[]))
    }

    /// `name` inside `folder`, checked like every path input.
    fn mps_child(
        &self,
        p: MpsProcedure,
        folder: &RelPath,
        field: &str,
        name: &str,
    ) -> Result<RelPath, ProviderError> {
        let name = component(p, field, name)?;
        self.checked(field, &join(folder, &name), false)
            .map_err(|e| rename_error(p, e, &[]))
    }

    fn mps_text(
        &self,
        p: MpsProcedure,
        data: &Element,
        field: &str,
    ) -> Result<Option<String>, ProviderError> {
        match data.child(field) {
            None => Ok(None),
            Some(e) if !e.attrs.is_empty() => Err(invalid(
                p,
                format!("`{field}` must be text (a folder name), without attributes"),
            )),
            Some(e) => Ok(Some(e.string_value())),
        }
    }

    /// Reads the inputs of `p` (everything but `controlInfo` and `properties`).
    fn mps_inputs(&self, p: MpsProcedure, data: &Element) -> Result<Inputs, ProviderError> {
        self.check_mps_elements(p, data)?;
        let base = self.mps_folder(p, data, "sourcePath")?;
        let required = |field: &str| -> Result<String, ProviderError> {
            self.mps_text(p, data, field)?
                .ok_or_else(|| invalid(p, format!("`{field}` is required")))
        };
        Ok(match p {
            MpsProcedure::CreateDirectory
            | MpsProcedure::DeleteDirectory
            | MpsProcedure::GetDirectoryAttributes
            | MpsProcedure::SetDirectoryAttributes => Inputs {
                source: self.mps_child(p, &base, "dirName", &required("dirName")?)?,
                target: None,
            },
            MpsProcedure::ListDirectory => Inputs {
                source: match self.mps_text(p, data, "dirName")? {
                    Some(d) => self.mps_child(p, &base, "dirName", &d)?,
                    None => base,
                },
                target: None,
            },
            MpsProcedure::MoveDirectory | MpsProcedure::CopyDirectory => {
                let name = required("dirName")?;
                let source = self.mps_child(p, &base, "dirName", &name)?;
                let dest = self.mps_folder(p, data, "destPath")?;
                let new_name = match self.mps_text(p, data, "newName")? {
                    Some(n) => n,
                    None => name,
                };
                let field = if p == MpsProcedure::CopyDirectory {
                    "newName"
                } else {
                    "dirName"
                };
                Inputs {
                    source,
                    target: Some(self.mps_child(p, &dest, field, &new_name)?),
                }
            }
            MpsProcedure::RenameDirectory => {
                let source = self.mps_child(p, &base, "oldName", &required("oldName")?)?;
                let target = self.mps_child(p, &base, "newName", &required("newName")?)?;
                Inputs {
                    source,
                    target: Some(target),
                }
            }
        })
    }

    /// The Provisio call an MPS call means, for the procedures that have one.
    fn mps_translate(&self, p: MpsProcedure, call: &Call) -> Result<Option<Call>, ProviderError> {
        let data = &call.execute_data;
        let mut flat = Element::new("executeData");
        let procedure = match p {
            MpsProcedure::CreateDirectory => {
                let i = self.mps_inputs(p, data)?;
                if let Some(parent) = i.source.parent() {
                    if !self.stat(&parent)?.is_some_and(|m| m.is_dir()) {
                        return Err(ProviderError::Permanent {
                            code: E_PATH_NOT_FOUND,
                            message: format!(
                                "File System Provider/CreateDirectory: `sourcePath/@path` `{}` is not an existing folder",
                                parent.display()
                            ),
                        });
                    }
                }
                flat.push(text("path", i.source.display()));
                "CreateFolder"
            }
            MpsProcedure::DeleteDirectory => {
                let i = self.mps_inputs(p, data)?;
                flat.push(text("path", i.source.display()));
                flat.push(text("recurse", "true"));
                "DeleteFolder"
            }
            MpsProcedure::MoveDirectory | MpsProcedure::RenameDirectory => {
                let i = self.mps_inputs(p, data)?;
                flat.push(text("from", i.source.display()));
                flat.push(text(
                    "to",
                    i.target.map(|t| t.display()).unwrap_or_default(),
                ));
                "MoveFolder"
            }
            MpsProcedure::SetDirectoryAttributes => {
                let i = self.mps_inputs(p, data)?;
                let meta = self
                    .lstat(&i.source)?
                    .ok_or_else(|| ProviderError::Permanent {
                        code: E_PATH_NOT_FOUND,
                        message: format!(
                        "File System Provider/SetDirectoryAttributes: folder `{}` does not exist",
                        i.source.display()
                    ),
                    })?;
                if !meta.is_dir() {
                    return Err(invalid(
                        p,
                        format!("`{}` is not a folder", i.source.display()),
                    ));
                }
                let mut mode = {
                    use cap_std::fs::PermissionsExt;
                    meta.permissions().mode() & 0o7777
                };
                let hidden_now = i.source.parts().last().is_some_and(|n| n.starts_with('.'));
                let security = data.child("security");
                let props = data.child("properties");
                if props.is_none() && security.is_none() {
                    return Err(invalid(p, "`properties` or `security` is required (<properties><readOnly>true</readOnly></properties>, <security><acl><ace>…</ace></acl></security>)"));
                }
                let empty = Element::new("properties");
                for e in props.unwrap_or(&empty).elements() {
                    let value =
                        parse_bool(&format!("properties/{}", e.name), Some(e.string_value()))
                            .map_err(|err| rename_error(p, err, &[]))?;
                    match e.name.as_str() {
                        "readOnly" => {
                            mode = if value { mode & !0o222 } else { mode | 0o200 };
                        }
                        "hidden" if value == hidden_now => {}
                        "hidden" => {
                            return Err(invalid(
                                p,
                                format!(
                                    "`properties/hidden` {}: on this file system a folder is hidden when its name starts with a dot; rename it with RenameDirectory instead",
                                    e.string_value().trim()
                                ),
                            ))
                        }
                        "indexing" | "encompress" => {
                            return Err(invalid(
                                p,
                                format!(
                                    "`properties/{}` (a Windows/NTFS attribute) has no equivalent here and is not supported",
                                    e.name
                                ),
                            ))
                        }
                        other => {
                            return Err(invalid(
                                p,
                                format!(
                                    "`properties/{other}` is not known (properties: readOnly, hidden, indexing, encompress)"
                                ),
                            ))
                        }
                    }
                }
                flat.push(text("path", i.source.display()));
                if props.is_some() {
                    flat.push(text("mode", format!("{mode:04o}")));
                }
                if let Some(sec) = security {
                    // Windows ACEs as POSIX ACL entries, merged with the folder's current
                    // ones (GRANT adds, SET replaces, REVOKE removes; DENY refused).
                    let t = self.perm_target("sourcePath", i.source.clone())?;
                    let state = self.perm_state(&t)?;
                    let acl = super::ace::security_to_acl(
                        sec,
                        &state,
                        t.is_dir,
                        &super::perms::resolve_name,
                    )
                    .map_err(|m| invalid(p, m))?;
                    flat.push(text("acl", acl));
                }
                "SetPermissions"
            }
            _ => return Ok(None),
        };
        let mut c = call.clone();
        c.context.procedure = procedure.to_string();
        c.execute_data = flat;
        Ok(Some(c))
    }

    /// Runs an MPS call.
    pub(super) fn execute_mps(
        &self,
        p: MpsProcedure,
        call: &Call,
    ) -> Result<Outcome, ProviderError> {
        let names: &[(&str, &str)] = &[
            ("path", "sourcePath/@path + dirName"),
            ("from", "sourcePath/@path + dirName"),
            ("to", "destPath/@path"),
            ("mode", "properties/readOnly"),
        ];
        if let Some(t) = self.mps_translate(p, call)? {
            let done = self
                .execute_sync(&t)
                .map_err(|e| rename_error(p, e, names))?;
            let mut out = call.execute_data.clone();
            for node in done
                .execute_data
                .children
                .iter()
                .skip(t.execute_data.children.len())
            {
                if let Node::Element(e) = node {
                    out.push(e.clone());
                }
            }
            return Ok(Outcome {
                execute_data: out,
                undo: done.undo,
            });
        }
        match p {
            MpsProcedure::ListDirectory => self.list_directory(p, call),
            MpsProcedure::GetDirectoryAttributes => self.directory_attributes(p, call),
            MpsProcedure::CopyDirectory => self.copy_directory(p, call),
            _ => Err(invalid(p, "not implemented")),
        }
    }

    /// Settles an MPS call in doubt.
    pub(super) fn recover_mps(
        &self,
        p: MpsProcedure,
        call: &Call,
    ) -> Result<Option<Element>, ProviderError> {
        if p.is_read() {
            return Ok(None);
        }
        if p == MpsProcedure::CopyDirectory {
            return self.recover_copy(call);
        }
        match self.mps_translate(p, call) {
            Ok(Some(t)) => self.recover_sync(&t),
            // Inputs that do not validate failed before any change.
            Ok(None) | Err(_) => Ok(None),
        }
    }

    /// Previews an MPS call.
    pub(super) fn preview_mps(
        &self,
        p: MpsProcedure,
        call: &Call,
    ) -> Result<Preview, ProviderError> {
        match self.mps_translate(p, call) {
            Ok(Some(t)) => return self.preview_sync(&t),
            Ok(None) => {}
            // Bad input is an error in preview too; what the call would find on disk
            // (a missing parent folder) makes it fail.
            Err(e) if e.code() == ProviderError::E_INVALIDARG => return Err(e),
            Err(e) => return Ok(Preview::Fail(e.message())),
        }
        match p {
            MpsProcedure::CopyDirectory => {
                let c = self.copy_plan(p, &call.execute_data)?;
                Ok(match self.copy_check(p, &c) {
                    Ok(bytes) => Preview::Change(format!(
                        "copy folder {} to {} ({bytes} bytes)",
                        c.source.display(),
                        c.target.display()
                    )),
                    Err(e) => Preview::Fail(e.message()),
                })
            }
            _ => {
                self.mps_inputs(p, &call.execute_data)?;
                Ok(Preview::NoChange("read only".into()))
            }
        }
    }

    fn list_directory(&self, p: MpsProcedure, call: &Call) -> Result<Outcome, ProviderError> {
        let i = self.mps_inputs(p, &call.execute_data)?;
        match self.stat(&i.source)? {
            Some(m) if m.is_dir() => {}
            Some(_) => {
                return Err(invalid(
                    p,
                    format!("`{}` is not a folder", i.source.display()),
                ))
            }
            None => {
                return Err(ProviderError::Permanent {
                    code: E_PATH_NOT_FOUND,
                    message: format!(
                        "File System Provider/ListDirectory: folder `{}` does not exist",
                        i.source.display()
                    ),
                })
            }
        }
        let what = format!("`{}`", i.source.display());
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        for entry in self
            .dir
            .read_dir(i.source.path())
            .map_err(|e| io_error(&what, e))?
        {
            let entry = entry.map_err(|e| io_error(&what, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if i.source.parts().is_empty() && super::sandbox::is_reserved(&name) {
                continue;
            }
            let meta = entry.metadata().map_err(|e| io_error(&what, e))?;
            if meta.is_dir() {
                dirs.push(name);
            } else if meta.is_file() {
                files.push((name, meta.len()));
            }
        }
        dirs.sort();
        files.sort();
        let mut out = call.execute_data.clone();
        let mut d = Element::new("directories");
        for name in dirs {
            let mut e = Element::new("directory");
            e.list_item = true;
            e.push(text("name", name));
            d.push(e);
        }
        let mut f = Element::new("files");
        for (name, bytes) in files {
            let mut e = Element::new("file");
            e.list_item = true;
            e.push(text("name", name));
            e.push(Element::with_scalar(
                "bytes",
                Scalar::Int(i64::try_from(bytes).unwrap_or(i64::MAX)),
            ));
            f.push(e);
        }
        out.push(d);
        out.push(f);
        Ok(Outcome {
            execute_data: out,
            undo: None,
        })
    }

    fn directory_attributes(&self, p: MpsProcedure, call: &Call) -> Result<Outcome, ProviderError> {
        let i = self.mps_inputs(p, &call.execute_data)?;
        let meta = match self.lstat(&i.source)? {
            Some(m) if m.is_dir() => m,
            Some(_) => {
                return Err(invalid(
                    p,
                    format!("`{}` is not a folder", i.source.display()),
                ))
            }
            None => {
                return Err(ProviderError::Permanent {
                    code: E_PATH_NOT_FOUND,
                    message: format!(
                        "File System Provider/GetDirectoryAttributes: folder `{}` does not exist",
                        i.source.display()
                    ),
                })
            }
        };
        let mode = {
            use cap_std::fs::PermissionsExt;
            meta.permissions().mode() & 0o7777
        };
        let hidden = i.source.parts().last().is_some_and(|n| n.starts_with('.'));
        let mut out = call.execute_data.clone();
        let mut props = Element::new("properties");
        props.push(Element::with_scalar(
            "readOnly",
            Scalar::Bool(mode & 0o200 == 0),
        ));
        props.push(Element::with_scalar("hidden", Scalar::Bool(hidden)));
        out.push(props);
        out.push(text("mode", format!("{mode:04o}")));
        Ok(Outcome {
            execute_data: out,
            undo: None,
        })
    }
}

/// A planned copy.
struct CopyPlan {
    source: RelPath,
    target: RelPath,
    recursive: bool,
}

impl Fs {
    fn copy_plan(&self, p: MpsProcedure, data: &Element) -> Result<CopyPlan, ProviderError> {
        let i = self.mps_inputs(p, data)?;
        let mut recursive = true;
        let mut replace = false;
        if let Some(ci) = data.child("controlInfo") {
            for (name, value) in &ci.attrs {
                let v = parse_bool(&format!("controlInfo/@{name}"), Some(value.to_string()))
                    .map_err(|e| rename_error(p, e, &[]))?;
                match name.as_str() {
                    "recursive" => recursive = v,
                    "replace" => replace = v,
                    other => {
                        return Err(invalid(
                            p,
                            format!("`controlInfo/@{other}` is not known (controlInfo takes recursive and replace)"),
                        ))
                    }
                }
            }
        }
        let target = i.target.unwrap_or_else(|| i.source.clone());
        if replace && self.lstat(&target)?.is_some() {
            return Err(ProviderError::Permanent {
                code: E_ALREADY_EXISTS,
                message: format!(
                    "File System Provider/CopyDirectory: `{}` exists and controlInfo/@replace=\"true\" (copying over existing files) is not supported: its undo could not give the replaced files back; copy to a new folder",
                    target.display()
                ),
            });
        }
        Ok(CopyPlan {
            source: i.source,
            target,
            recursive,
        })
    }

    /// Checks a planned copy and returns the bytes it would write.
    fn copy_check(&self, p: MpsProcedure, c: &CopyPlan) -> Result<u64, ProviderError> {
        match self.lstat(&c.source)? {
            Some(m) if m.is_dir() => {}
            Some(_) => {
                return Err(invalid(
                    p,
                    format!("`{}` is not a folder", c.source.display()),
                ))
            }
            None => {
                return Err(ProviderError::Permanent {
                    code: E_PATH_NOT_FOUND,
                    message: format!(
                        "File System Provider/CopyDirectory: folder `{}` does not exist",
                        c.source.display()
                    ),
                })
            }
        }
        if c.target.starts_with(&c.source) {
            return Err(invalid(
                p,
                format!(
                    "`{}` is inside `{}`; a folder cannot be copied into itself",
                    c.target.display(),
                    c.source.display()
                ),
            ));
        }
        if self.lstat(&c.target)?.is_some() {
            return Err(ProviderError::Permanent {
                code: E_ALREADY_EXISTS,
                message: format!(
                    "File System Provider/CopyDirectory: `{}` already exists",
                    c.target.display()
                ),
            });
        }
        self.require_parent_dir("destPath/@path", &c.target)
            .map_err(|e| rename_error(p, e, &[]))?;
        let bytes = self.tree_bytes(p, &c.source.path(), c.recursive)?;
        self.check_quota(&c.target, bytes)?;
        Ok(bytes)
    }

    /// Bytes of the regular files a copy takes; symlinks and special files are refused.
    fn tree_bytes(
        &self,
        p: MpsProcedure,
        dir: &Path,
        recursive: bool,
    ) -> Result<u64, ProviderError> {
        let what = format!("`{}`", dir.display());
        let mut total = 0u64;
        for entry in self.dir.read_dir(dir).map_err(|e| io_error(&what, e))? {
            let entry = entry.map_err(|e| io_error(&what, e))?;
            let path = dir.join(entry.file_name());
            let meta = self
                .dir
                .symlink_metadata(&path)
                .map_err(|e| io_error(&what, e))?;
            if meta.is_dir() {
                if recursive {
                    total = total.saturating_add(self.tree_bytes(p, &path, recursive)?);
                }
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            } else {
                return Err(invalid(
                    p,
                    format!("`{}` is a symlink or special file; CopyDirectory copies folders and regular files only", path.display()),
                ));
            }
        }
        Ok(total)
    }

    /// Copies `from` (a folder) to the new folder `to`, with modes.
    fn copy_tree(&self, from: &Path, to: &Path, recursive: bool) -> Result<(), ProviderError> {
        let what = |p: &Path| format!("copying `{}`", p.display());
        let meta = self
            .dir
            .symlink_metadata(from)
            .map_err(|e| io_error(&what(from), e))?;
        self.dir
            .create_dir(to)
            .map_err(|e| io_error(&what(to), e))?;
        for entry in self
            .dir
            .read_dir(from)
            .map_err(|e| io_error(&what(from), e))?
        {
            let entry = entry.map_err(|e| io_error(&what(from), e))?;
            let src = from.join(entry.file_name());
            let dst = to.join(entry.file_name());
            let m = self
                .dir
                .symlink_metadata(&src)
                .map_err(|e| io_error(&what(&src), e))?;
            if m.is_dir() {
                if recursive {
                    self.copy_tree(&src, &dst, recursive)?;
                }
            } else if m.is_file() {
                self.dir
                    .copy(&src, &self.dir, &dst)
                    .map_err(|e| io_error(&what(&src), e))?;
                let _ = self.dir.open(&dst).and_then(|f| f.sync_all());
            } else {
                return Err(ProviderError::invalid(format!(
                    "`{}` is a symlink or special file; CopyDirectory copies folders and regular files only",
                    src.display()
                )));
            }
        }
        let mode = {
            use cap_std::fs::PermissionsExt;
            meta.permissions().mode() & 0o777
        };
        set_mode(&self.dir, to, mode).map_err(|e| io_error(&what(to), e))
    }

    fn copy_directory(&self, p: MpsProcedure, call: &Call) -> Result<Outcome, ProviderError> {
        let c = self.copy_plan(p, &call.execute_data)?;
        let key = call.context.idempotency_key();
        let name = sanitize_key(&key);
        let staging = Path::new(STAGING_DIR).join(&name);
        let undo = || {
            UndoRecord::RemoveCopy {
                path: c.target.display(),
                trash: name.clone(),
            }
            .to_element()
        };
        let mut out = call.execute_data.clone();
        out.push(text("copied", c.target.display()));
        // A retried call whose first try already put the copy in place: same result.
        if let Some(Marker::CopyFolder { path, .. }) =
            pending::read(&self.dir, &self.intent_logs, &key)?
        {
            if path == c.target.display()
                && self.dir.symlink_metadata(staging.join("item")).is_err()
                && self.lstat(&c.target)?.is_some_and(|m| m.is_dir())
            {
                return Ok(Outcome {
                    execute_data: out,
                    undo: Some(undo()?),
                });
            }
        }
        let bytes = self.copy_check(p, &c)?;
        self.remove_copy_staging(&staging)?;
        pending::write(
            &self.dir,
            &self.intent_logs,
            &key,
            &Marker::CopyFolder {
                path: c.target.display(),
                staging: name.clone(),
            },
        )?;
        let fail = |e: ProviderError| {
            let _ = self.remove_copy_staging(&staging);
            pending::remove(&self.dir, &self.intent_logs, &key);
            e
        };
        self.dir
            .create_dir_all(&staging)
            .map_err(|e| fail(io_error(&format!("{}", staging.display()), e)))?;
        self.copy_tree(&c.source.path(), &staging.join("item"), c.recursive)
            .map_err(fail)?;
        let what = format!("copy to `{}`", c.target.display());
        let from_dir = self
            .dir
            .open_dir(&staging)
            .map_err(|e| fail(io_error(&what, e)))?;
        let to_dir = match c.target.parent() {
            Some(parent) => self.dir.open_dir(parent.path()),
            None => self.dir.try_clone(),
        }
        .map_err(|e| fail(io_error(&what, e)))?;
        let last = c.target.parts().last().cloned().unwrap_or_default();
        rename_noreplace(&from_dir, "item", &to_dir, &last).map_err(|e| {
            fail(if e.kind() == io::ErrorKind::AlreadyExists {
                ProviderError::Permanent {
                    code: E_ALREADY_EXISTS,
                    message: format!(
                        "File System Provider/CopyDirectory: `{}` appeared while copying",
                        c.target.display()
                    ),
                }
            } else {
                io_error(&what, e)
            })
        })?;
        let _ = to_dir.open(".").and_then(|f| f.sync_all());
        let _ = self.remove_copy_staging(&staging);
        out.push(Element::with_scalar(
            "bytes",
            Scalar::Int(i64::try_from(bytes).unwrap_or(i64::MAX)),
        ));
        Ok(Outcome {
            execute_data: out,
            undo: Some(undo()?),
        })
    }

    fn remove_copy_staging(&self, staging: &Path) -> Result<(), ProviderError> {
        match self.dir.remove_dir_all(staging) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&format!("{}", staging.display()), e)),
        }
        let _ = self.dir.remove_dir(STAGING_DIR);
        Ok(())
    }

    /// CopyDirectory in doubt: its marker names the target and the staging folder. The copy
    /// is in place when the staged item is gone and the target is a folder.
    pub(super) fn recover_copy(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        let key = call.context.idempotency_key();
        let Some(Marker::CopyFolder { path, staging }) =
            pending::read(&self.dir, &self.intent_logs, &key)?
        else {
            return Ok(None);
        };
        let target = self.checked("path", &path, false)?;
        let staging_dir = checked_name("staging", &staging)?;
        let staged = Path::new(STAGING_DIR).join(&staging_dir);
        if self.dir.symlink_metadata(staged.join("item")).is_err()
            && self.lstat(&target)?.is_some_and(|m| m.is_dir())
        {
            return Ok(Some(
                UndoRecord::RemoveCopy {
                    path: target.display(),
                    trash: staging_dir,
                }
                .to_element()?,
            ));
        }
        self.remove_copy_staging(&staged)?;
        pending::remove(&self.dir, &self.intent_logs, &key);
        Ok(None)
    }

    /// Undo of CopyDirectory: the copy goes to `.provisio-trash/<trash>`.
    pub(super) fn remove_copy(&self, path: &str, trash: &str) -> Result<(), ProviderError> {
        let path = self.checked("path", path, false)?;
        let trash_name = checked_name("trash", trash)?;
        let trash: PathBuf = trash_path(&trash_name);
        let in_trash = self.dir.symlink_metadata(&trash).is_ok();
        let at_path = self.lstat(&path)?.is_some_and(|m| m.is_dir());
        match (at_path, in_trash) {
            (true, false) => {
                self.dir
                    .create_dir_all(TRASH_DIR)
                    .map_err(|e| io_error(TRASH_DIR, e))?;
                self.dir
                    .rename(path.path(), &self.dir, &trash)
                    .map_err(|e| io_error(&format!("removing the copy `{}`", path.display()), e))?;
                purge::note_origin(&self.dir, &trash_name, &path.display());
                Ok(())
            }
            // Already undone, or the copy is gone.
            (false, _) => Ok(()),
            (true, true) => Err(ProviderError::permanent(format!(
                "cannot undo CopyDirectory: `{}` is there again and its earlier copy is in {}",
                path.display(),
                trash.display()
            ))),
        }
    }
}

/// A staging or trash entry name from a record: one plain component.
fn checked_name(field: &str, name: &str) -> Result<String, ProviderError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains('\0') {
        return Err(ProviderError::invalid(format!(
            "record has a bad {field} name {name:?}"
        )));
    }
    Ok(name.to_string())
}
