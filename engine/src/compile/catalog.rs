//! The catalog: every namespace the engine knows, from namespace files and from the
//! registered providers, with name resolution that suggests the closest name.

use super::error::{closest, CompileError};
use crate::data::Element;
use crate::model::{Access, CallTarget, Namespace, Procedure, SourceRef};
use crate::provider::ProviderRegistry;
use crate::script::ScriptEngine;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// All namespaces by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    namespaces: BTreeMap<String, Namespace>,
    /// Per namespace: SHA-256 (hex) of its serialized definition, and the bytes, so a
    /// transaction can pin exactly the definitions it was compiled from.
    pinned: BTreeMap<String, (String, Arc<Vec<u8>>)>,
    /// The sandboxed rhai engine that compiles and runs the definitions' scripts.
    script: Arc<ScriptEngine>,
}

impl Catalog {
    /// Builds a catalog from loaded namespace files plus one namespace per registered
    /// provider that no file declares (its procedures are private leaves, as in MPS).
    /// Checks that every provider namespace names a registered provider and existing entries.
    pub fn new(
        namespaces: Vec<Namespace>,
        registry: &ProviderRegistry,
    ) -> Result<Catalog, Vec<CompileError>> {
        let mut errors = Vec::new();
        let mut map: BTreeMap<String, Namespace> = BTreeMap::new();
        for ns in namespaces {
            if let Some(first) = map.get(&ns.name) {
                errors.push(CompileError::DuplicateNamespace {
                    name: ns.name.clone(),
                    first: first.source_ref.clone(),
                    at: ns.source_ref.clone(),
                });
                continue;
            }
            map.insert(ns.name.clone(), ns);
        }
        for provider in registry.iter() {
            let name = provider.namespace();
            if map.contains_key(&name) {
                continue;
            }
            let procedures = provider
                .procedures()
                .into_iter()
                .map(|spec| {
                    let mut p = Procedure::new(spec.name.clone());
                    p.kind = spec.kind;
                    p.access = Access::Private;
                    p.description = Some(spec.description);
                    p.inputs = spec.inputs;
                    p.source_ref = SourceRef::new(format!("<provider {}>", provider.name()), 0, 0);
                    p
                })
                .collect();
            map.insert(
                name.clone(),
                Namespace {
                    name,
                    description: Some(format!(
                        "Procedures served by the {} provider.",
                        provider.name()
                    )),
                    provider: Some(provider.name().to_string()),
                    provider_context: Element::new("providerContext"),
                    read_only: true,
                    procedures,
                    source_ref: SourceRef::new(format!("<provider {}>", provider.name()), 0, 0),
                },
            );
        }
        // A leaf written in a namespace file without `<input>`s takes the inputs (and the
        // description, when it has none) the provider declares for its entry point, so a
        // file that only re-exposes leaves (public, another name) checks them as the
        // provider's own namespace does.
        for ns in map.values_mut() {
            let Some(provider) = ns.provider.as_deref().and_then(|p| registry.get(p)) else {
                continue;
            };
            let specs = provider.procedures();
            for p in ns.procedures.iter_mut().filter(|p| p.steps.is_empty()) {
                let entry = p.entry.as_deref().unwrap_or(&p.name);
                if let Some(spec) = specs.iter().find(|s| s.name == entry) {
                    if p.inputs.is_empty() {
                        p.inputs = spec.inputs.clone();
                    }
                    if p.description.is_none() {
                        p.description = Some(spec.description.clone());
                    }
                }
            }
        }
        for ns in map.values() {
            let Some(pname) = &ns.provider else { continue };
            match registry.get(pname) {
                None => errors.push(CompileError::Provider {
                    message: format!(
                        "namespace `{}` names provider `{pname}`, which is not registered{}",
                        ns.name,
                        match closest(pname, registry.names().iter().map(String::as_str)) {
                            Some(s) => format!("; did you mean `{s}`?"),
                            None => format!(" (registered: {})", registry.names().join(", ")),
                        }
                    ),
                    at: ns.source_ref.clone(),
                }),
                Some(provider) => {
                    let specs = provider.procedures();
                    for p in ns.procedures.iter().filter(|p| p.steps.is_empty()) {
                        let entry = p.entry.as_deref().unwrap_or(&p.name);
                        if !specs.iter().any(|s| s.name == entry) {
                            errors.push(CompileError::Provider {
                                message: format!(
                                    "`{}/{}` maps to `{entry}`, which provider `{pname}` does not serve{}",
                                    ns.name,
                                    p.name,
                                    match closest(entry, specs.iter().map(|s| s.name.as_str())) {
                                        Some(s) => format!("; did you mean `{s}`?"),
                                        None => String::new(),
                                    }
                                ),
                                at: p.source_ref.clone(),
                            });
                        }
                    }
                }
            }
        }
        for ns in map.values() {
            if ns.provider.is_none() {
                for p in ns.procedures.iter().filter(|p| p.steps.is_empty()) {
                    errors.push(CompileError::Provider {
                        message: format!(
                            "`{}/{}` has no steps and its namespace names no provider\n  hint: add steps, or `provider:` (XML `providerSource`) to the namespace",
                            ns.name, p.name
                        ),
                        at: p.source_ref.clone(),
                    });
                }
            }
        }
        if errors.is_empty() {
            let pinned = map
                .iter()
                .map(|(name, ns)| {
                    let bytes = serde_json::to_vec(ns).unwrap_or_default();
                    (name.clone(), (hex_sha256(&bytes), Arc::new(bytes)))
                })
                .collect();
            Ok(Catalog {
                namespaces: map,
                pinned,
                script: Arc::new(ScriptEngine::default()),
            })
        } else {
            Err(errors)
        }
    }

    /// The same catalog, running its scripts (conditions, script steps, undo scripts) under
    /// `limits` instead of the defaults.
    pub fn with_script_limits(mut self, limits: crate::script::ScriptLimits) -> Catalog {
        self.script = Arc::new(ScriptEngine::new(limits));
        self
    }

    /// The script engine.
    pub(crate) fn script_engine(&self) -> &Arc<ScriptEngine> {
        &self.script
    }

    /// The pinned form of a namespace: (hash, serialized definition).
    pub(crate) fn pinned(&self, name: &str) -> Option<&(String, Arc<Vec<u8>>)> {
        self.pinned.get(name)
    }

    /// A namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// All namespaces, by name.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// Resolves a call target, suggesting the closest name when it does not exist.
    // CompileError is large because it carries what a person needs (locations, suggestions);
    // it is built at most a few times per request, so boxing it buys nothing.
    #[allow(clippy::result_large_err)]
    pub(crate) fn resolve(
        &self,
        target: &CallTarget,
        at: &SourceRef,
    ) -> Result<(&Namespace, &Procedure), CompileError> {
        let ns = self.namespaces.get(&target.namespace).ok_or_else(|| {
            CompileError::UnknownNamespace {
                name: target.namespace.clone(),
                suggestion: closest(
                    &target.namespace,
                    self.namespaces.keys().map(String::as_str),
                ),
                at: at.clone(),
            }
        })?;
        let p = ns
            .procedure(&target.procedure)
            .ok_or_else(|| CompileError::UnknownProcedure {
                namespace: ns.name.clone(),
                name: target.procedure.clone(),
                suggestion: closest(
                    &target.procedure,
                    ns.procedures.iter().map(|p| p.name.as_str()),
                ),
                at: at.clone(),
            })?;
        Ok((ns, p))
    }
}

/// Lowercase hex SHA-256.
pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
